"""The one switch between the fused field op (dgnerf.ops.field_mlp, when it exists) and the plain-PyTorch
folded field (dgnerf.model.field.folded_rows). Both compute the same function (DESIGN §3):

    field_hidden(field, x_enc [B,R,S,P], bias0 [B,W], bias_skip [B,W] | None, dir_bias [B,R,dir_width], dtype)
    -> sigma_raw [B,R,S], hdir [B,R,S,dir_width]  (in the compute dtype)

The plain version runs per image over chunks of whole rays (CHUNK_ROWS samples): the activations of a
chunk stay small enough to be reused by the allocator and to stay in cache, which on CPU is worth
~15% over one big matmul per layer. Set DGNERF_FUSED_FIELD=0 (or `use_fused(False)`) to force the
plain version.
"""
from __future__ import annotations

import os

import torch

from dgnerf.model.field import folded_rows

CHUNK_ROWS = 8192
_use_fused = os.environ.get("DGNERF_FUSED_FIELD", "1") != "0"


def use_fused(enabled: bool) -> None:
    global _use_fused
    _use_fused = bool(enabled)


def fused_available() -> bool:
    import dgnerf.ops

    return _use_fused and hasattr(dgnerf.ops, "field_mlp")


def rows_chunked(field, x_rows, bias0, bias_skip, dir_rows, weights, dtype, samples_per_ray=0, chunk_rows=None):
    """folded_rows over chunks of rows of one image (chunks are whole rays when samples_per_ray > 0)."""
    chunk = chunk_rows or CHUNK_ROWS
    N = x_rows.shape[0]
    if samples_per_ray > 0:
        chunk = max(1, chunk // samples_per_ray) * samples_per_ray
    cast = (lambda t: t) if dtype == x_rows.dtype else (lambda t: None if t is None else t.to(dtype))
    b0, bs = cast(bias0), cast(bias_skip)
    sig, hd = [], []
    for c0 in range(0, N, chunk):
        c1 = min(N, c0 + chunk)
        if samples_per_ray > 0:
            d = dir_rows[c0 // samples_per_ray : c1 // samples_per_ray]
        else:
            d = dir_rows[c0:c1]
        s, h = folded_rows(cast(x_rows[c0:c1]), b0, bs, cast(d), weights, field.cfg.skip_layer, samples_per_ray)
        sig.append(s)
        hd.append(h)
    if len(sig) == 1:
        return sig[0], hd[0]
    return torch.cat(sig), torch.cat(hd)


def field_hidden(field, x_enc, bias0, bias_skip, dir_bias, dtype=torch.float32):
    B, R, S, P = x_enc.shape
    weights = field.folded_weights(None if dtype == torch.float32 else dtype)
    sig, hd = [], []
    for b in range(B):
        s, h = rows_chunked(field, x_enc[b].reshape(R * S, P), bias0[b], None if bias_skip is None else bias_skip[b],
                            dir_bias[b], weights, dtype, samples_per_ray=S)
        sig.append(s.view(R, S))
        hd.append(h.view(R, S, -1))
    return torch.stack(sig), torch.stack(hd)


__all__ = ["field_hidden", "rows_chunked", "fused_available", "use_fused", "CHUNK_ROWS"]
