"""The real-video check: train one person on the first frames of a preprocessed video, render the
frames that follow from their tracked pose and expression, and score them inside the head mask.

    dgnerf realvideo /tmp/carphone --out out/carphone_check            # frames 0-99 train, 100-119 held out

Stages (each resumable; OUT is the output directory):

1. prepare  OUT/data: a dgnerf dataset (docs/dataset.md) with the selected frames of one person of the
            source set, copied by frame index (= the person's frames in manifest order): the training frames
            as person `<id>` (split train), the held-out frames as person `<id>_heldout` (split test), so
            `dgnerf train` sees exactly the training frames and derives its ray bounds from their cameras
            only. Two conditioning choices, both recorded in OUT/data/manifest.json `meta.realvideo`:
            - identity: `mean` (default) gives every frame, held-out ones included, the mean identity code of
              the *training* frames (rescaled to their mean length): one person, one identity. FaceNet's
              per-frame feature drifts with expression and pose (on carphone the held-out frames' cosine to
              the training mean falls to 0.63), so per-frame codes would be an extra, noisy input the model
              memorises. `frame` keeps the per-frame codes.
            - expression components: the preprocessor's codes have unit spread per component, so its 46
              principal axes weigh the same although the last ~30 hold < 1% of the landmark motion (tracking
              jitter). `expression_components K` keeps the first K and zeroes the rest (0 = keep all 46);
              the code length stays E, so the checkpoint still takes the set's basis.
2. train    OUT/run: `dgnerf.train` (the same trainer as `dgnerf train`) on OUT/data's train split;
            checkpoints every `checkpoint_every` steps are all kept, so held-out error can be traced over
            training.
3. evaluate OUT/metrics.json, OUT/realvideo.md, OUT/heldout.png (rows: ground truth, render, |error| x4
            inside the mask), OUT/train_frames.png (the same for training frames), OUT/curve.png (train and
            held-out masked PSNR per checkpoint): masked L1 / PSNR / SSIM / LPIPS (dgnerf.metrics) of the
            held-out frames and of the training frames, at the model's image size.

Nothing of the held-out frames reaches training: not their pixels, not their codes (the identity is the
training frames' mean), not their cameras (ray bounds come from the training split).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dgnerf.data import DatasetWriter, HeadDataset
from dgnerf.data.format import MANIFEST, check_dataset, format_problems, load_arrays, read_manifest
from dgnerf.errors import DgnerfError
from dgnerf.fileio import atomic_write_bytes, atomic_write_text
from dgnerf.losses import load_vgg16
from dgnerf.media import grid, loss_curve_png, to_uint8
from dgnerf.metrics import masked_metrics
from dgnerf.model.checkpoint import load_checkpoint
from dgnerf.model.config import PRESETS
from dgnerf.train import TrainConfig
from dgnerf.train.trainer import FrameStore, Trainer

# 16x16x64 feature map -> 3 renderer blocks -> 128x128 image; a demo-sized field MLP (its speed per step:
# docs/realvideo.md).
REALVIDEO_MODEL = PRESETS["small128"]
PREPARE_FILE = "realvideo_prepare.json"


@dataclass
class RealVideoConfig:
    data: str  # a preprocessed dataset (dgnerf preprocess VIDEO --out DATA)
    out: str
    person: str | None = None  # default: the set's only person
    train_frames: str = "0-99"  # frame indices (the person's frames in manifest order): "0-99", "0-49,60-99"
    test_frames: str = "100-119"
    # Frames held out of training to choose the checkpoint by (the best masked PSNR on them is scored on the test
    # frames); empty: the last checkpoint is scored.
    val_frames: str = ""
    identity: str = "mean"  # mean | frame
    expression_components: int = 12  # keep the first K expression components (0 = all)
    model: dict = field(default_factory=lambda: dict(REALVIDEO_MODEL))
    # ~100 frames of one person: the held-out frames stop gaining after a few thousand steps while the training
    # frames keep improving; a 4000-step schedule ends higher on them than 8000 steps do (docs/realvideo.md).
    steps: int = 4000
    batch_size: int = 8
    lr: float = 2e-3
    lr_final: float = 1e-4
    # Checkpoints hold an exponential moving average of the weights (TrainConfig.ema_decay; 0 = the last weights).
    # With ~100 frames the weights' step-to-step noise costs the held-out frames more than it costs the training
    # frames: on carphone the average scores 0.1-0.3 dB higher on them (docs/realvideo.md).
    ema_decay: float = 0.998
    # A learned camera correction per training frame (TrainConfig.camera_lr; 0 = the tracked poses as they are).
    camera_lr: float = 0.0
    camera_reg: float = 0.0
    lambda_perceptual: float = 0.0  # the VGG16 term is ~10x the cost of a step on a CPU
    # L2 weight outside the head mask. None: 1 when the dataset records a known flat background (it is then part of
    # what the model must render), else 0 (a real, moving background: fit the head only; metrics are inside the mask).
    background_weight: float | None = None
    checkpoint_every: int = 1000
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    lpips: bool = True  # LPIPS when the VGG16 weights are in the cache
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- frames
MAX_FRAME_INDEX = 10_000_000


def parse_frames(spec: str, name: str = "frames") -> list[int]:
    """'0-99' -> [0..99]; '0-9,20,30-31' -> [0..9, 20, 30, 31] (inclusive ranges, order kept, no repeats)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DgnerfError(f"{name}: expected frame indices such as '0-99' or '0-9,20', got {spec!r}")
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
            else:
                a = b = int(part)
        except ValueError:
            raise DgnerfError(f"{name}: {part!r} in {spec!r} is not an index or a range 'A-B'") from None
        if a < 0 or b < a:
            raise DgnerfError(f"{name}: range {part!r} must be 'A-B' with 0 <= A <= B")
        if b >= MAX_FRAME_INDEX:  # the list is built: an absurd index must not ask for gigabytes first
            raise DgnerfError(f"{name}: frame index {b} in {spec!r} is beyond any video ({MAX_FRAME_INDEX} frames)")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise DgnerfError(f"{name}: {spec!r} names a frame twice")
    return out


def select_split(frame_count: int, train_spec: str, test_spec: str) -> tuple[list[int], list[int]]:
    """The train and held-out frame indices, checked against the number of frames the person has."""
    train = parse_frames(train_spec, "train_frames")
    test = parse_frames(test_spec, "test_frames")
    for name, idx in (("train_frames", train), ("test_frames", test)):
        if max(idx) >= frame_count:
            raise DgnerfError(f"{name}: asks for frame {max(idx)} but the person has {frame_count} frames "
                              f"(indices 0-{frame_count - 1})")
    both = sorted(set(train) & set(test))
    if both:
        raise DgnerfError(f"train_frames and test_frames overlap in {len(both)} frame(s), e.g. {both[:5]}")
    return train, test


# ---------------------------------------------------------------------------------------------------- prepare
def _source_frames(data: str, person: str | None):
    """(manifest, arrays, person id, [manifest row of the person's frame k])."""
    if not os.path.isdir(data):
        raise DgnerfError(f"data: {data!r} is not a directory (expected a dataset made by `dgnerf preprocess`)")
    if not os.path.isfile(os.path.join(data, MANIFEST)):
        raise DgnerfError(f"data: {data!r} holds no {MANIFEST}; is it a dgnerf dataset? (`dgnerf preprocess VIDEO --out DIR`)")
    problems = check_dataset(data, level="header")
    if problems:
        raise DgnerfError(format_problems(data, problems))
    m = read_manifest(data)
    persons = [p["id"] for p in m["persons"]]
    if person is None:
        if len(persons) != 1:
            raise DgnerfError(f"person: the dataset has {len(persons)} persons {persons[:8]}; name one with --person")
        person = persons[0]
    elif person not in persons:
        raise DgnerfError(f"person: {person!r} is not in the dataset (it has {persons[:8]})")
    rows = [i for i, fr in enumerate(m["frames"]) if fr["person"] == person]
    return m, load_arrays(data, m), person, rows


def prepare(cfg: RealVideoConfig, log=print) -> dict:
    """Writes OUT/data (see the module doc) unless it is already there with the same settings."""
    from PIL import Image

    if cfg.identity not in ("mean", "frame"):
        raise DgnerfError(f"identity: expected 'mean' or 'frame', got {cfg.identity!r}")
    m, arrays, person, rows = _source_frames(cfg.data, cfg.person)
    train, test = select_split(len(rows), cfg.train_frames, cfg.test_frames)
    val = parse_frames(cfg.val_frames, "val_frames") if cfg.val_frames.strip() else []
    if val and (max(val) >= len(rows) or set(val) & (set(train) | set(test))):
        raise DgnerfError(f"val_frames: {cfg.val_frames!r} must name frames 0-{len(rows) - 1} that are neither training "
                          "nor test frames")
    E = int(m["expression_dim"])
    K = int(cfg.expression_components)
    if not 0 <= K <= E:
        raise DgnerfError(f"expression_components: expected 0 (all) .. {E}, got {K}")
    settings = {"source": os.path.abspath(cfg.data), "source_num_frames": m["num_frames"], "person": person,
                "train_frames": train, "test_frames": test, "identity": cfg.identity, "expression_components": K or E}
    if val:
        settings["val_frames"] = val
    out = os.path.join(cfg.out, "data")
    done = os.path.join(out, PREPARE_FILE)
    if os.path.isfile(done) and os.path.isfile(os.path.join(out, "manifest.json")):
        with open(done) as f:
            old = json.load(f)
        if old == settings:
            log(f"prepare: {out} is up to date ({len(train)} train + {len(test)} held-out frames)")
            return settings
        if list_checkpoints(os.path.join(cfg.out, "run")):
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            raise DgnerfError(f"out: {out} was prepared with other settings ({', '.join(diff)}) and {cfg.out}/run was "
                              "trained on it; use the same options or another --out")
    ident = arrays["identity"].astype(np.float64)
    if cfg.identity == "mean":
        mean = ident[[rows[k] for k in train]].mean(0)
        n = np.linalg.norm(mean)
        if not n > 0:
            raise DgnerfError("identity: the training frames' identity codes average to zero; use --identity frame")
        mean = mean / n * np.linalg.norm(ident[[rows[k] for k in train]], axis=1).mean()
    if os.path.isfile(done):
        os.remove(done)  # rewritten last: an interrupted prepare is never taken for a finished one
    gaze_dim = m.get("gaze_dim")
    meta = {"generator": "dgnerf realvideo", "realvideo": settings, "source_meta": m.get("meta", {})}
    from tqdm import tqdm

    with DatasetWriter(out, resolution=(m["resolution"]["height"], m["resolution"]["width"]), expression_dim=E,
                       identity_dim=int(m["identity_dim"]), gaze_dim=gaze_dim, head_radius=float(m["head_radius"]),
                       near=m.get("near"), far=m.get("far"), background=m.get("background"), meta=meta,
                       overwrite=True) as w:
        jobs = ([(k, person, "train") for k in train] + [(k, f"{person}_heldout", "test") for k in test]
                + [(k, f"{person}_val", "val") for k in val])
        for k, pid, split in tqdm(jobs, desc="prepare", unit="frame", disable=not cfg.progress, leave=False):
            r = rows[k]
            fr = m["frames"][r]
            with Image.open(os.path.join(cfg.data, fr["image"])) as im:
                img = np.array(im.convert("RGB"))
            with Image.open(os.path.join(cfg.data, fr["mask"])) as im:
                msk = np.array(im.convert("L"))
            expr = arrays["expression"][r].astype(np.float32).copy()
            if K:
                expr[K:] = 0
            w.add_frame(img, msk, arrays["c2w"][r], arrays["intrinsics"][r], expr,
                        mean if cfg.identity == "mean" else arrays["identity"][r], person=pid, split=split,
                        gaze=arrays["gaze"][r] if gaze_dim else None,
                        source=f"{fr.get('source', fr['image'])}|frame_index={k}")
        if m.get("expression_basis"):
            from safetensors import safe_open

            path = os.path.join(cfg.data, m["expression_basis"])
            with safe_open(path, "np") as f:
                bmeta = dict(f.metadata() or {})
                if K and K < E:  # the model sees only these; projecting a new video keeps them (preprocess._load_basis)
                    bmeta["components"] = str(K)
                w.set_expression_basis({k: f.get_tensor(k) for k in f.keys()}, metadata=bmeta)
    atomic_write_text(done, json.dumps(settings, indent=1))
    log(f"prepare: wrote {out}: {len(train)} train frames ({cfg.train_frames}), {len(test)} held-out ({cfg.test_frames}) "
        f"of {person!r}; identity {cfg.identity}, expression components {K or E}/{E}")
    return settings


# ---------------------------------------------------------------------------------------------------- train
def background_weight(cfg: RealVideoConfig) -> float:
    """cfg.background_weight, or (None) 1 when the prepared data records a known background colour, else 0."""
    if cfg.background_weight is not None:
        return float(cfg.background_weight)
    return 1.0 if read_manifest(os.path.join(cfg.out, "data")).get("background") is not None else 0.0


def train_config(cfg: RealVideoConfig):
    return TrainConfig(data=os.path.join(cfg.out, "data"), out=os.path.join(cfg.out, "run"), model=dict(cfg.model),
                       batch_size=cfg.batch_size, steps=cfg.steps, lr=cfg.lr, lr_final=cfg.lr_final,
                       ema_decay=cfg.ema_decay, camera_lr=cfg.camera_lr, camera_reg=cfg.camera_reg,
                       lambda_perceptual=cfg.lambda_perceptual, background_weight=background_weight(cfg),
                       checkpoint_every=cfg.checkpoint_every, sample_every=cfg.checkpoint_every,
                       log_every=max(1, min(50, cfg.steps // 20)),
                       keep_checkpoints=cfg.steps // max(1, cfg.checkpoint_every) + 2, seed=cfg.seed,
                       max_minutes=cfg.max_minutes, device=cfg.device, tensorboard=False, progress=cfg.progress)


def camera_correction_summary(checkpoint: str, tc: dict) -> dict | None:
    """The learned per-frame camera corrections of a checkpoint (TrainConfig.camera_lr > 0): their learning rate,
    regulariser and size (rotation in degrees, translation in the scene's units; mean and largest over the training
    frames); None for a run without them."""
    if not tc.get("camera_lr"):
        return None
    from safetensors import safe_open

    with safe_open(os.path.join(checkpoint, "train_state.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        if "camera.rotation" not in keys:
            return None
        ang = f.get_tensor("camera.rotation").norm(dim=-1) * (180.0 / math.pi)
        shift = f.get_tensor("camera.translation").norm(dim=-1)
    return {"lr": tc["camera_lr"], "reg": tc.get("camera_reg", 0.0),
            "rotation_deg": {"mean": round(float(ang.mean()), 4), "max": round(float(ang.max()), 4)},
            "translation": {"mean": round(float(shift.mean()), 5), "max": round(float(shift.max()), 5)}}


def train_stage(cfg: RealVideoConfig, resume: bool, log=print) -> dict:
    tc = train_config(cfg)
    ckpts = os.path.join(tc.out, "checkpoints")
    if os.path.isdir(ckpts) and os.listdir(ckpts) and not resume:
        raise DgnerfError(f"out: {tc.out} already holds a run; pass --resume to continue (or evaluate) it, "
                          "or choose another --out")
    if resume and os.path.isfile(os.path.join(tc.out, "train_config.json")):
        with open(os.path.join(tc.out, "train_config.json")) as f:
            old = json.load(f)
        diff = [k for k in ("model", "batch_size", "steps", "lr", "lr_final", "ema_decay", "camera_lr", "camera_reg",
                            "lambda_perceptual", "background_weight", "seed")
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(tc.to_dict()[k], sort_keys=True)]
        if diff:
            raise DgnerfError(f"--resume: the run in {tc.out} was trained with other settings ({', '.join(diff)}); "
                              "use the same options or another --out")
    res = Trainer(tc).fit(resume=resume)
    log(f"train: {res['step']} steps, checkpoint {res['checkpoint']}")
    return res


# ---------------------------------------------------------------------------------------------------- evaluate
METRIC_ROWS = (("l1", "L1 ↓", "{:.4f}"), ("psnr", "PSNR (dB) ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"),
               ("lpips", "LPIPS ↓", "{:.4f}"))
TARGET = {"psnr": 26.0, "ssim": 0.92}


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """[(step, directory)] of the finished checkpoints of a run, oldest first."""
    root = os.path.join(run, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for d in sorted(os.listdir(root)):
        p = os.path.join(root, d)
        if d.startswith("step_") and os.path.isfile(os.path.join(p, "model.safetensors")):
            try:
                out.append((int(d[5:]), p))
            except ValueError:
                continue
    return out


def training_seconds(run: str, batch_size: int) -> float | None:
    """Training wall time summed over the logged intervals of metrics.jsonl (images / img_s), so time spent
    between a stop and a --resume is not counted."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    total, prev = 0.0, 0
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
                s, v = int(r["step"]), float(r["img_s"])
            except (ValueError, KeyError):
                continue
            if v > 0 and s > prev:
                total += (s - prev) * batch_size / v
            prev = s
    return total


@torch.no_grad()
def render_split(model, store, device, chunk: int = 8) -> dict:
    """Renders every frame of a FrameStore from its own codes and camera -> {pred, image, mask} on the CPU."""
    model.eval()
    preds, imgs, masks = [], [], []
    for i in range(0, len(store), chunk):
        b = store.batch(list(range(i, min(len(store), i + chunk))), device)
        gaze = b["gaze"] if model.cfg.gaze_dim else None  # optional gaze conditioning
        out = model(b["identity"], b["expression"], b["c2w"], b["intrinsics"], gaze=gaze)
        preds.append(out.image.float().clamp(0, 1).cpu())
        imgs.append(b["image"].cpu())
        masks.append(b["mask"].cpu())
    return {"pred": torch.cat(preds), "image": torch.cat(imgs), "mask": torch.cat(masks)}


def _summary(per: dict) -> dict:
    return {k: float(v.double().mean()) for k, v in per.items()}


def half_resolution(r: dict) -> dict:
    """The same renders and ground truth 2x2 box-averaged (what the score would be at half the size)."""
    import torch.nn.functional as Fn

    return {k: Fn.avg_pool2d(v, 2) for k, v in r.items()}


def error_sheet(r: dict, labels: list[str], scores: list[float] | None = None, gain: float = 4.0, scale: int = 1):
    """Rows: ground truth, render, |render - truth| x gain inside the mask (grey outside) -> uint8 image."""
    from PIL import Image, ImageDraw

    n = r["pred"].shape[0]
    err = ((r["pred"] - r["image"]).abs().mean(1, keepdim=True) * gain).clamp(0, 1)
    heat = torch.cat([err, err * 0.35, 1 - err], 1) * r["mask"] + 0.25 * (1 - r["mask"])  # blue (0) -> red (>= 1/gain)
    tiles = ([to_uint8(x) for x in r["image"]] + [to_uint8(x) for x in r["pred"]] + [to_uint8(x) for x in heat])
    img = Image.fromarray(grid(tiles, cols=n, scale=scale))
    d = ImageDraw.Draw(img)
    h, w = r["pred"].shape[-2] * scale, r["pred"].shape[-1] * scale
    for j in range(n):
        x = 2 + j * (w + 2)
        d.text((x + 3, 3), labels[j], fill=(255, 255, 0))
        if scores is not None:
            d.text((x + 3, 2 + 2 * (h + 2) + 3), f"{scores[j]:.1f} dB", fill=(255, 255, 255))
    return np.asarray(img)


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _shift(x: torch.Tensor, px: float) -> torch.Tensor:
    """x [B,C,H,W] moved right by px pixels (bilinear, border pixels repeated)."""
    import torch.nn.functional as Fn

    theta = torch.tensor([[1.0, 0.0, -2.0 * px / x.shape[-1]], [0.0, 1.0, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = Fn.affine_grid(theta, list(x.shape), align_corners=False)
    return Fn.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rotation_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between rotations a [N,3,3] and b [M,3,3] -> [N, M] degrees."""
    tr = torch.einsum("nij,mij->nm", a.double(), b.double())
    return torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1, 1))).float()


def evaluate_stage(cfg: RealVideoConfig, log=print, curve: bool = True) -> dict:
    """Scores the latest checkpoint of OUT/run on the held-out and training frames; writes the report files."""
    data, run = os.path.join(cfg.out, "data"), os.path.join(cfg.out, "run")
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise DgnerfError(f"out: no checkpoint in {run}/checkpoints; train first (without --eval-only)")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    step, latest = ckpts[-1]
    model, selection = None, {"by": "last checkpoint"}
    if "val" in HeadDataset(data, check="none").person_splits.values():
        # Choose the checkpoint on frames neither trained on nor scored: the best masked PSNR on them (each
        # checkpoint loaded once; the best one is kept).
        val_store, scores, best = None, {}, None
        for s, path in ckpts:
            mdl = load_checkpoint(os.path.join(path, "model.safetensors"), device=device)
            if val_store is None:
                val_store = FrameStore(HeadDataset(data, split="val", check="none"), mdl.cfg.image_size,
                                       mdl.cfg.feature_size, 4.0, progress=False)
            r = render_split(mdl, val_store, device)
            scores[s] = float(masked_metrics(r["pred"], r["image"], r["mask"])["psnr"].mean())
            log(f"evaluate: step {s}: validation PSNR {scores[s]:.2f} dB")
            if best is None or (scores[s], s) > (scores[best], best):
                best, model, step, latest = s, mdl, s, path
        selection = {"by": "best validation masked PSNR", "val_frames": len(val_store),
                     "val_psnr_per_checkpoint": scores, "step": step}
    if model is None:
        model = load_checkpoint(os.path.join(latest, "model.safetensors"), device=device)
    mc = model.cfg
    sets = {"train": HeadDataset(data, split="train", check="none"), "heldout": HeadDataset(data, split="test", check="none")}
    stores = {k: FrameStore(ds, mc.image_size, mc.feature_size, 4.0, progress=False) for k, ds in sets.items()}
    frame_idx = {k: [int(f.source.rsplit("frame_index=", 1)[1]) for f in ds.frames] for k, ds in sets.items()}
    vgg = None
    if cfg.lpips:
        try:
            vgg = load_vgg16(device=device)
        except DgnerfError as e:
            log(f"realvideo: LPIPS skipped ({e})")
    renders, per_frame, summary = {}, {}, {}
    for k in ("heldout", "train"):
        log(f"evaluate: rendering {len(stores[k])} {k} frames at {mc.image_size}x{mc.image_size} (step {step})")
        r = render_split(model, stores[k], device)
        renders[k] = r
        m = masked_metrics(r["pred"], r["image"], r["mask"], vgg=vgg)
        per_frame[k] = {name: [float(x) for x in v] for name, v in m.items()}
        summary[k] = _summary(m)
        summary[k + "_half_resolution"] = _summary(masked_metrics(*(half_resolution(r)[x] for x in ("pred", "image", "mask"))))

    # Where the held-out frames sit relative to the training frames: nearest expression code (the conditioning
    # the model sees) and nearest head rotation. Large distances = extrapolation, not interpolation.
    e_tr, e_te = sets["train"].arrays["expression"], sets["heldout"].arrays["expression"]
    r_tr, r_te = sets["train"].arrays["c2w"][:, :3, :3], sets["heldout"].arrays["c2w"][:, :3, :3]
    d_tr = torch.cdist(e_tr, e_tr) + torch.eye(len(e_tr)) * 1e9
    span = {"heldout_nearest_train_expression": [float(x) for x in torch.cdist(e_te, e_tr).min(1).values],
            "train_nearest_other_train_expression_median": float(d_tr.min(1).values.median()),
            "heldout_nearest_train_rotation_deg": [float(x) for x in _rotation_deg(r_te, r_tr).min(1).values]}

    # Model-free reference points on the same held-out truth: (a) the training frame nearest in time, copied
    # (what "nothing moves" scores); (b) the truth shifted sideways by a fraction of a pixel: what a render that
    # is right in every way but misregistered by that much would score (tracked poses are not exact).
    te, tr_idx = renders["heldout"], frame_idx["train"]
    near = [min(range(len(tr_idx)), key=lambda j: (abs(tr_idx[j] - f), -tr_idx[j])) for f in frame_idx["heldout"]]
    copy = masked_metrics(renders["train"]["image"][near], te["image"], te["mask"])
    references = {"copy_nearest_train_frame": {**_summary(copy), "psnr_per_frame": [float(x) for x in copy["psnr"]],
                                               "ssim_per_frame": [float(x) for x in copy["ssim"]]}}
    # (c) for multi-view data: the training frame nearest in head pose (rotation angle), copied
    near_pose = _rotation_deg(r_te, r_tr).argmin(1).tolist()
    copy_pose = masked_metrics(renders["train"]["image"][near_pose], te["image"], te["mask"])
    references["copy_nearest_train_pose"] = {**_summary(copy_pose),
                                             "psnr_per_frame": [float(x) for x in copy_pose["psnr"]]}
    for px in (0.5, 1.0):
        shifted = _shift(te["image"], px)
        references[f"truth_shifted_{px:g}px"] = _summary(masked_metrics(shifted, te["image"], te["mask"]))

    # held-out and training error over training (every kept checkpoint)
    history = []
    if curve:
        sub = [int(i) for i in np.linspace(0, len(stores["train"]) - 1, min(20, len(stores["train"]))).round()]
        for s, path in ckpts:
            mdl = model if s == step else load_checkpoint(os.path.join(path, "model.safetensors"), device=device)
            rec = {"step": s}
            for k in ("heldout", "train"):
                if s == step:
                    r = {x: v[sub] for x, v in renders[k].items()} if k == "train" else renders[k]
                else:
                    r = render_split(mdl, stores[k] if k == "heldout" else _Subset(stores[k], sub), device)
                mm = masked_metrics(r["pred"], r["image"], r["mask"])
                rec[k] = {"psnr": float(mm["psnr"].mean()), "ssim": float(mm["ssim"].mean()), "l1": float(mm["l1"].mean())}
            history.append(rec)
            log(f"evaluate: step {s}: train PSNR {rec['train']['psnr']:.2f} / held-out {rec['heldout']['psnr']:.2f} dB")

    prep_path = os.path.join(data, PREPARE_FILE)
    with open(prep_path) as f:
        settings = json.load(f)
    with open(os.path.join(latest, "train_state.json")) as f:
        tstate = json.load(f)
    tc = tstate["train_config"]
    secs = training_seconds(run, tc["batch_size"])
    met = {k: summary["heldout"][k] >= v for k, v in TARGET.items()}
    report = {
        "source": settings["source"], "person": settings["person"],
        "train_frames": settings["train_frames"], "test_frames": settings["test_frames"],
        "identity": settings["identity"], "expression_components": settings["expression_components"],
        "resolution": {"image": mc.image_size, "feature_map": mc.feature_size, "source_crop": sets["train"].width},
        "checkpoint": os.path.abspath(latest), "steps": step, "checkpoint_selection": selection,
        "batch_size": tc["batch_size"],
        "lr": [tc["lr"], tc["lr_final"]], "ema_decay": tc.get("ema_decay", 0.0),
        "camera_correction": camera_correction_summary(latest, tc),
        "lambda_perceptual": tc["lambda_perceptual"],
        "background_weight": tc.get("background_weight"), "model": mc.to_dict(),
        "training_seconds": None if secs is None else round(secs, 1),
        "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__,
        "lpips": vgg is not None,
        "metrics": summary, "per_frame": per_frame, "frame_index": frame_idx,
        "target": {"heldout_psnr_db": TARGET["psnr"], "heldout_ssim": TARGET["ssim"], "met": met},
        "coverage": span, "references": references, "history": history,
    }
    os.makedirs(cfg.out, exist_ok=True)
    atomic_write_text(os.path.join(cfg.out, "metrics.json"), json.dumps(report, indent=1) + "\n")

    scale = max(1, 128 // mc.image_size)
    labels = [f"f{i}" for i in frame_idx["heldout"]]
    atomic_write_bytes(os.path.join(cfg.out, "heldout.png"),
                       _png_bytes(error_sheet(renders["heldout"], labels, per_frame["heldout"]["psnr"], scale=scale)))
    pick = [int(i) for i in np.linspace(0, len(stores["train"]) - 1, min(10, len(stores["train"]))).round()]
    tr = {x: v[pick] for x, v in renders["train"].items()}
    atomic_write_bytes(os.path.join(cfg.out, "train_frames.png"),
                       _png_bytes(error_sheet(tr, [f"f{frame_idx['train'][i]}" for i in pick],
                                              [per_frame["train"]["psnr"][i] for i in pick], scale=scale)))
    if history:
        import tempfile

        series = {"held-out masked MSE": [(h["step"], 10 ** (-h["heldout"]["psnr"] / 10)) for h in history],
                  "train masked MSE": [(h["step"], 10 ** (-h["train"]["psnr"] / 10)) for h in history]}
        loss_path = os.path.join(run, "metrics.jsonl")
        if os.path.isfile(loss_path):
            with open(loss_path) as f:
                recs = [json.loads(line) for line in f if line.strip()]
            series["training loss (masked L2, batch)"] = [(r["step"], r["l2"]) for r in recs if "l2" in r]
        with tempfile.NamedTemporaryFile(suffix=".png", dir=cfg.out, delete=False) as t:
            tmp = t.name
        loss_curve_png(tmp, series, title="masked MSE per checkpoint (PSNR = -10 log10 MSE)")
        os.replace(tmp, os.path.join(cfg.out, "curve.png"))
    atomic_write_text(os.path.join(cfg.out, "realvideo.md"), markdown_report(report))
    return report


class _Subset:
    """Some frames of a FrameStore (for the per-checkpoint curve)."""

    def __init__(self, store, idx):
        self.store, self.idx = store, list(idx)

    def __len__(self):
        return len(self.idx)

    def batch(self, idx, device):
        return self.store.batch([self.idx[i] for i in idx], device)


def _spec(idx: list[int]) -> str:
    """[0..99] -> '0-99' (compact inclusive ranges)."""
    parts, i = [], 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(f"{idx[i]}-{idx[j]}" if j > i else f"{idx[i]}")
        i = j + 1
    return ",".join(parts)


def markdown_report(rep: dict) -> str:
    res = rep["resolution"]
    names = [m for m in METRIC_ROWS if m[0] in rep["metrics"]["heldout"]]
    head = "| frames | " + " | ".join(m[1] for m in names) + " |\n|---|" + "---|" * len(names) + "\n"

    def row(label, d):
        return f"| {label} | " + " | ".join(m[2].format(d[m[0]]) if m[0] in d else "–" for m in names) + " |\n"

    tr, te = _spec(rep["train_frames"]), _spec(rep["test_frames"])
    mins = "?" if rep["training_seconds"] is None else f"{rep['training_seconds'] / 60:.1f}"
    met = rep["target"]["met"]
    s = (f"# Real-video check: {rep['person']}\n\n"
         f"Trained on frames {tr}, rendered frames {te} from their tracked pose and expression code "
         f"(identity: {rep['identity']}, expression components: {rep['expression_components']}). "
         f"Masked metrics inside the head mask at **{res['image']}x{res['image']} px** "
         f"(feature map {res['feature_map']}x{res['feature_map']}; the {res['source_crop']} px crops are resized to it, "
         f"antialiased). "
         f"{rep['steps']} steps of batch {rep['batch_size']}, {mins} min of training on {rep['device']} "
         f"({rep['threads']} thread(s))"
         + (f"; the weights averaged over the steps (decay {rep['ema_decay']:g})" if rep.get("ema_decay") else "")
         + ".\n\n")
    cam = rep.get("camera_correction")
    if cam:
        s += (f"Training frames' cameras corrected while training (learning rate {cam['lr']:g}, L2 weight {cam['reg']:g}): "
              f"rotation {cam['rotation_deg']['mean']:.2f} deg on average, at most {cam['rotation_deg']['max']:.2f}; "
              f"translation {cam['translation']['mean']:.4f} on average, at most {cam['translation']['max']:.4f} "
              "(scene units). Every render uses the tracked poses.\n\n")
    s += head + row(f"held-out {te}", rep["metrics"]["heldout"]) + row(f"train {tr}", rep["metrics"]["train"])
    s += row(f"held-out at {res['image'] // 2} px (2x2 box)", rep["metrics"]["heldout_half_resolution"])
    s += row(f"train at {res['image'] // 2} px (2x2 box)", rep["metrics"]["train_half_resolution"])
    ref = rep["references"]
    s += row("reference: nearest training frame (in time) copied", ref["copy_nearest_train_frame"])
    if "copy_nearest_train_pose" in ref:
        s += row("reference: nearest training frame (in head pose) copied", ref["copy_nearest_train_pose"])
    for k in sorted(x for x in ref if x.startswith("truth_shifted_")):
        s += row(f"reference: held-out truth shifted by {k[len('truth_shifted_'):]} (misregistration)", ref[k])
    s += (f"\nTarget (held-out): PSNR >= {rep['target']['heldout_psnr_db']:g} dB "
          f"{'met' if met['psnr'] else 'NOT met'}, SSIM >= {rep['target']['heldout_ssim']:g} "
          f"{'met' if met['ssim'] else 'NOT met'}.\n\n")
    cov = rep["coverage"]
    s += ("Held-out frames, one by one (copied: the training frame nearest in time taken as the render; "
          "nearest train expr.: Euclidean distance to the nearest training expression code, as the model sees it; "
          f"for comparison, the median distance of a training frame to its nearest other training frame is "
          f"{cov['train_nearest_other_train_expression_median']:.2f}):\n\n"
          "| frame | " + " | ".join(m[1] for m in names) +
          " | copied PSNR | copied SSIM | nearest train expr. | nearest train rotation (deg) |\n"
          "|---|" + "---|" * (len(names) + 4) + "\n")
    pf, cp = rep["per_frame"]["heldout"], ref["copy_nearest_train_frame"]
    for j, fi in enumerate(rep["frame_index"]["heldout"]):
        s += (f"| {fi} | " + " | ".join(m[2].format(pf[m[0]][j]) for m in names) +
              f" | {cp['psnr_per_frame'][j]:.2f} | {cp['ssim_per_frame'][j]:.4f}"
              f" | {cov['heldout_nearest_train_expression'][j]:.2f} | {cov['heldout_nearest_train_rotation_deg'][j]:.1f} |\n")
    if rep["history"]:
        s += ("\nOver training (held-out: all frames; train: 20 evenly spaced frames):\n\n"
              "| step | train PSNR | train SSIM | held-out PSNR | held-out SSIM |\n|---|---|---|---|---|\n")
        for h in rep["history"]:
            s += (f"| {h['step']} | {h['train']['psnr']:.2f} | {h['train']['ssim']:.4f} | {h['heldout']['psnr']:.2f} | "
                  f"{h['heldout']['ssim']:.4f} |\n")
    s += ("\nFiles: heldout.png, train_frames.png (rows: ground truth, render, |error| x4 inside the mask), curve.png, "
          "metrics.json.\n")
    return s


def run_check(cfg: RealVideoConfig, resume: bool = False, eval_only: bool = False, log=print) -> dict:
    """prepare -> train -> evaluate (see the module doc)."""
    t0 = time.time()
    prepare(cfg, log=log)
    if not eval_only:
        train_stage(cfg, resume=resume, log=log)
    rep = evaluate_stage(cfg, log=log)
    rep["total_seconds_this_call"] = round(time.time() - t0, 1)
    return rep
