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
