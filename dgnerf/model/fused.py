"""The one switch between the fused field op (dgnerf.ops.field_mlp, when it exists) and the plain-PyTorch
folded field (dgnerf.model.field.folded_rows). Both compute the same function (DESIGN §3):

    field_hidden(field, x_enc [B,R,S,P], d_enc [B,R,Dd], bias0 [B,W], bias_skip [B,W] | None,
                 dir_bias [B,R,dir_width], dtype)
    -> sigma_raw [B,R,S], hdir [B,R,S,dir_width]

The op is used whenever it exists (every precision, dense and sparse paths). Measured on this
project's 2-core Zen 4 CPU (65,536 points, same process): single-threaded and unloaded the plain
version is on par (fp32 op 0.80-0.86 s vs plain 0.91 s; bf16 op 0.53 s vs plain 0.45 s: the plain
version also folds gamma(d) into one bias per ray), but with 2 threads on the shared, loaded machine
the plain version's many small parallel regions (one per layer and chunk) lose badly (frame bf16
1.2x vs the op's fp32 1.8x over the reference), while the op runs the whole MLP in one parallel region.

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


def _op_ok(x: torch.Tensor, dtype: torch.dtype) -> bool:
    # The op takes float32/float64 inputs and a compute precision; float64 inputs only in fp32.
    return fused_available() and (x.dtype == dtype or x.dtype == torch.float32) and not (
        x.device.type == "cpu" and dtype == torch.float16)


def rows(field, x_rows, d_rows, bias0, bias_skip, dir_rows, dtype, samples_per_ray=0, cache=None, chunk_rows=None):
    """The folded field on rows of ONE image -> sigma_raw [N], hdir [N, dir_width].

    x_rows [N, P]; bias0, bias_skip [W] (this image's folded conditioning); per ray when samples_per_ray > 0
    (rows are then whole rays, in order), else per row: d_rows [.., Dd] = gamma(d) (for the op) and
    dir_rows [.., dir_width] = the folded direction bias (for the plain version). `cache`: a dict reused
    across calls of one forward for the weights.
    """
    cache = {} if cache is None else cache
    if _op_ok(x_rows, dtype):
        from dgnerf.ops import field_mlp

        if "op" not in cache:
            cache["op"] = op_weights(field)
        d = d_rows
        if samples_per_ray > 0:
            d = d_rows[:, None, :].expand(-1, samples_per_ray, d_rows.shape[-1]).reshape(-1, d_rows.shape[-1])
        sigma, hdir = field_mlp(x_rows[None], d[None], bias0[None], None if bias_skip is None else bias_skip[None],
                                cache["op"], output="hidden", precision=_OP_PRECISION[dtype])
        return sigma[0], hdir[0]
    key = ("plain", dtype)
    if key not in cache:
        cache[key] = field.folded_weights(None if dtype == torch.float32 else dtype)
    return rows_chunked(field, x_rows, bias0, bias_skip, dir_rows, cache[key], dtype, samples_per_ray, chunk_rows)


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


def op_weights(field):
    """The field's parameters as dgnerf.ops.FieldWeights (views: gradients flow to the nn.Linear weights)."""
    from dgnerf.ops import FieldWeights

    t, cfg = field.trunk, field.cfg
    return FieldWeights.from_unfolded([m.weight for m in t], [m.bias for m in t], field.sigma.weight, field.sigma.bias,
                                      field.dir_layer.weight, field.dir_layer.bias, field.out.weight, field.out.bias,
                                      dx=cfg.pos_enc_dim, skip=cfg.skip_layer if 0 < cfg.skip_layer < cfg.mlp_depth else None)


_OP_PRECISION = {torch.float32: "fp32", torch.float64: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def field_hidden(field, x_enc, d_enc, bias0, bias_skip, dir_bias, dtype=torch.float32):
    B, R, S, P = x_enc.shape
    if _op_ok(x_enc, dtype):
        from dgnerf.ops import field_mlp

        Dd = d_enc.shape[-1]
        d_pts = d_enc[:, :, None, :].expand(B, R, S, Dd).reshape(B, R * S, Dd)
        sigma, hdir = field_mlp(x_enc.reshape(B, R * S, P), d_pts, bias0, bias_skip, op_weights(field), output="hidden",
                                precision=_OP_PRECISION[dtype])
        return sigma.view(B, R, S), hdir.view(B, R, S, -1)
    chunk = R * S if x_enc.device.type == "cuda" else None  # no cache to fit on a GPU: one chunk per image
    cache = {}
    sig, hd = [], []
    for b in range(B):
        s, h = rows(field, x_enc[b].reshape(R * S, P), d_enc[b], bias0[b], None if bias_skip is None else bias_skip[b],
                    dir_bias[b], dtype, samples_per_ray=S, cache=cache, chunk_rows=chunk)
        sig.append(s.view(R, S))
        hd.append(h.view(R, S, -1))
    return torch.stack(sig), torch.stack(hd)


__all__ = ["field_hidden", "rows", "rows_chunked", "fused_available", "use_fused", "op_weights", "CHUNK_ROWS"]
