"""The field's position encoding (docs/design.md, "The model"): the paper's frequency encoding gamma(x), or a
multiresolution hash grid (dgnerf.ops.hash_encode) whose learnable table this module holds.

Both feed the same conditioned MLP: the encoding of x takes the place of gamma(x) in u = [enc(x), identity,
expression], so folding the codes into one bias per image stays exact. The reference path uses the hash grid's
pure-PyTorch twin, the fast path the op.

With cfg.hash_identity_bases = K >= 2 the grid holds K tables per level (K * hash_features features per row) and
each image mixes them with its own weights w = b + A z from the identity code z:
    enc_l(x, z) = sum_k w_k(z) T_lk(x)        (T_lk: the trilinear read of table k of level l)
so enc keeps its width (hash_levels * hash_features) and the MLP and its folding are unchanged. The reference
path reads every table with the twin and mixes the reads (the definition); the fast path mixes the tables once per
image and reads the mixed one with the op (exact: the read is linear in the table).
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
            K = max(1, cfg.hash_identity_bases)
            self.table = nn.Parameter(ops.init_hash_table(cfg.hash_levels, cfg.hash_table_size, cfg.hash_features * K))
            if K > 1:
                # w = b + A z: b starts on the first table, A ~ N(0, 1/K) gives each person its own mix from the
                # start (a unit-norm z makes A z ~ N(0, 1/K) per table), so every table gets a gradient at once.
                self.mix = nn.Linear(cfg.identity_dim, K)
                with torch.no_grad():
                    self.mix.weight.normal_(0.0, K ** -0.5)
                    self.mix.bias.zero_()
                    self.mix.bias[0] = 1.0

    @property
    def bbox(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        r = self.cfg.hash_half_size
        return (-r, -r, -r), (r, r, r)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None, reference: bool = False) -> torch.Tensor:
        """x [B, ..., 3]; identity [B, identity_dim] (the codes after the model's gain), needed by an
        identity-mixed grid (cfg.hash_identity_bases >= 2) and ignored otherwise."""
        cfg = self.cfg
        if cfg.position_encoding == "frequency":
            return positional_encoding(x, cfg.pos_freqs)
        if cfg.hash_identity_bases >= 2:
            w = self.mix_weights(identity, x.shape[0])
            return self._mixed_reference(x, w) if reference else self._mixed_fast(x, w)
        return self._encode(x, self.table, reference)

    def _encode(self, x: torch.Tensor, table: torch.Tensor, reference: bool) -> torch.Tensor:
        cfg = self.cfg
        lo, hi = self.bbox
        if reference:
            lead = x.shape[:-1]
            enc = hash_encode_reference(x.reshape(-1, 3), table, cfg.hash_base_resolution,
                                        cfg.hash_finest_resolution, lo, hi)
            return enc.reshape(*lead, enc.shape[-1])
        # Points carry a gradient only when a camera is being fitted (dgnerf fit): only then ask for it.
        return ops.hash_encode(x, table, base_resolution=cfg.hash_base_resolution,
                               finest_resolution=cfg.hash_finest_resolution, bbox=(lo, hi), x_grad=x.requires_grad)

    def mix_weights(self, identity: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Each image's table weights w = b + A z [B, K] of an identity-mixed grid."""
        if identity is None or identity.dim() != 2 or identity.shape[0] != batch:
            got = None if identity is None else list(identity.shape)
            raise ValueError(f"PositionEncoding: argument 'identity' expected [{batch}, {self.cfg.identity_dim}] "
                             f"(an identity-mixed hash grid needs each image's identity code), got {got}")
        return self.mix(identity.to(self.mix.weight.dtype))

    def _mixed_reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The definition: read all K tables (the twin), then sum them with each image's weights."""
        L, F, K = self.cfg.hash_levels, self.cfg.hash_features, self.cfg.hash_identity_bases
        enc = self._encode(x, self.table, reference=True)  # [B, ..., L * K * F]
        e = enc.reshape(x.shape[0], -1, L, K, F)
        return torch.einsum("bnlkf,bk->bnlf", e, w.to(enc.dtype)).reshape(*x.shape[:-1], L * F)

    def _mixed_fast(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same by linearity: the trilinear read is linear in the table, so sum_k w_k T_k(x) = (sum_k w_k T_k)(x).
        One mixed table per image (a [B, K] x [K, L*T*F] product), then one F-wide read per point: K times less
        gathered than reading every table at every point."""
        L, T, F, K = self.cfg.hash_levels, self.cfg.hash_table_size, self.cfg.hash_features, self.cfg.hash_identity_bases
        bases = self.table.reshape(L, T, K, F).permute(2, 0, 1, 3).reshape(K, L * T * F)
        tables = (w.to(bases.dtype) @ bases).reshape(-1, L, T, F)
        return torch.stack([self._encode(x[b], tables[b], reference=False) for b in range(x.shape[0])])


__all__ = ["PositionEncoding", "positional_encoding"]
