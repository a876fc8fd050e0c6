"""The one switch between the fused field op (dgnerf.ops.field_mlp, when it exists) and the plain-PyTorch
folded field (dgnerf.model.field.folded_hidden). Both compute the same function:

    x_enc [B,R,S,P], bias0 / bias_skip [B,1,1,W] (folded conditioning), dir_bias [B,R,1,dir_width]
    -> sigma_raw [B,R,S], hdir [B,R,S,dir_width]

Set DGNERF_FUSED_FIELD=0 (or `use_fused(False)`) to force the plain version.
"""
from __future__ import annotations

import os

import torch

from dgnerf.model.field import folded_hidden

_use_fused = os.environ.get("DGNERF_FUSED_FIELD", "1") != "0"


def use_fused(enabled: bool) -> None:
    global _use_fused
    _use_fused = bool(enabled)


def fused_available() -> bool:
    import dgnerf.ops

    return _use_fused and hasattr(dgnerf.ops, "field_mlp")


def field_hidden(field, x_enc, bias0, bias_skip, dir_bias, dtype=torch.float32):
    weights = field.folded_weights(None if dtype == torch.float32 else dtype)
    cast = (lambda t: t) if dtype == torch.float32 else (lambda t: None if t is None else t.to(dtype))
    return folded_hidden(cast(x_enc), cast(bias0), cast(bias_skip), cast(dir_bias), weights, field.cfg.skip_layer)


__all__ = ["field_hidden", "fused_available", "use_fused"]
