"""The field's position encoding (docs/design.md, "The model"): the paper's frequency encoding gamma(x), or a
multiresolution hash grid (dgnerf.ops.hash_encode) whose learnable table this module holds.

Both feed the same conditioned MLP: the encoding of x takes the place of gamma(x) in u = [enc(x), identity,
expression], so folding the codes into one bias per image stays exact. The reference path uses the hash grid's
pure-PyTorch twin, the fast path the op.
"""
from __future__ import annotations

import torch
from torch import nn

from dgnerf import ops
from dgnerf.model.config import HeadConfig
from dgnerf.ops.reference import hash_encode_reference


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^{n-1} x), cos(2^{n-1} x)] -> [..., 3 + 6 n]."""
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    xf = x[..., None, :] * freqs[:, None]  # [..., n, 3]
    sc = torch.stack([torch.sin(xf), torch.cos(xf)], dim=-2)  # [..., n, 2, 3]
    return torch.cat([x, sc.flatten(-3)], dim=-1)


class PositionEncoding(nn.Module):
    """enc(x) [..., cfg.pos_enc_dim] of points x [..., 3] (world units)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.position_encoding == "hashgrid":
            self.table = nn.Parameter(ops.init_hash_table(cfg.hash_levels, cfg.hash_table_size, cfg.hash_features))

    @property
    def bbox(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        r = self.cfg.hash_half_size
        return (-r, -r, -r), (r, r, r)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        cfg = self.cfg
        if cfg.position_encoding == "frequency":
            return positional_encoding(x, cfg.pos_freqs)
        lo, hi = self.bbox
        if reference:
            lead = x.shape[:-1]
            enc = hash_encode_reference(x.reshape(-1, 3), self.table, cfg.hash_base_resolution,
                                        cfg.hash_finest_resolution, lo, hi)
            return enc.reshape(*lead, enc.shape[-1])
        # Points carry a gradient only when a camera is being fitted (dgnerf fit): only then ask for it.
        return ops.hash_encode(x, self.table, base_resolution=cfg.hash_base_resolution,
                               finest_resolution=cfg.hash_finest_resolution, bbox=(lo, hi),
                               x_grad=x.requires_grad)


__all__ = ["PositionEncoding", "positional_encoding"]
