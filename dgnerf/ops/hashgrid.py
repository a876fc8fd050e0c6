"""Multiresolution hash-grid encoding (Instant-NGP style).

    table = init_hash_table(16, 2**19, 2)                                  # [L, T, F], learnable
    enc = hash_encode(x, table, base_resolution=16, finest_resolution=2048)  # [..., L*F]

Level l has resolution N_l = floor(base * b^l), b = exp((ln finest - ln base) / (L - 1)) (b = 1 for
L = 1; `hash_grid_resolutions` lists them) and (N_l + 1)^3 grid vertices. A point x in the box
[lo, hi] (`bbox`) sits at p = (x - lo) * N_l / (hi - lo) in level l; the 8 vertices of its cell are
interpolated trilinearly. Vertex (vx, vy, vz) reads table row
    vx + vy (N_l + 1) + vz (N_l + 1)^2                       if (N_l + 1)^3 <= T   (dense level)
    (vx * 1 ^ vy * 2654435761 ^ vz * 805459861) mod T        otherwise             (hashed, uint32 arithmetic)
of table[l]; colliding vertices share the row and its gradient sums over them. The output is
level-major: out[..., l*F + f] is feature f of level l.

Outside the box each coordinate is clamped into it (p into [0, N_l]), so the border value extends
outward, and x receives no gradient along a clamped axis. NaN coordinates are rejected while the
checks are on (`dgnerf.ops.set_checks`); with the checks off the kernels treat them as the box minimum
and never read out of bounds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dgnerf.ops import _common
from dgnerf.ops.reference import hash_encode_reference
from dgnerf.ops.reference import hash_grid_resolutions as _resolutions

OP = "hash_encode"
_FLOATS = (torch.float32, torch.float64)
MAX_LEVELS = 64
MAX_RESOLUTION = 2**20
MAX_TABLE_SIZE = 2**31
DEFAULT_BBOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def hash_grid_resolutions(n_levels: int, base_resolution: int, finest_resolution: int) -> list[int]:
    """The per-level grid resolutions N_0..N_{L-1} that `hash_encode` uses.

    Args:
        n_levels: L >= 1.
        base_resolution: N_0 >= 1.
        finest_resolution: N_{L-1} (ignored for L = 1), >= base_resolution.

    Returns:
        [N_0, ..., N_{L-1}] with N_l = floor(base * b^l), b = exp((ln finest - ln base) / (L - 1)),
        computed in double like the kernels; N_{L-1} == finest_resolution.

    Example:
        >>> hash_grid_resolutions(4, 16, 128)
        [16, 32, 64, 128]
    """
    _check_levels(n_levels)
    _check_resolutions(base_resolution, finest_resolution)
    return _resolutions(n_levels, base_resolution, finest_resolution)


def init_hash_table(
    n_levels: int,
    table_size: int = 2**19,
    n_features: int = 2,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A fresh table [n_levels, table_size, n_features], uniform in [-1e-4, 1e-4] as in Instant-NGP
    (small enough that the untrained encoding is near zero, non-zero so that features differ).

    Example:
        >>> init_hash_table(16).shape
        torch.Size([16, 524288, 2])
    """
    _check_levels(n_levels)
    if not isinstance(table_size, int) or isinstance(table_size, bool) or not 1 <= table_size <= MAX_TABLE_SIZE:
        _common.fail(OP, f"argument 'table_size' expected an int in [1, 2^31], got {table_size!r}")
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        _common.fail(OP, f"argument 'n_features' expected a positive int, got {n_features!r}")
    if dtype not in _FLOATS:
        _common.fail(OP, f"argument 'dtype' expected float32 or float64, got {dtype}")
    t = torch.empty((n_levels, table_size, n_features), dtype=dtype, device=device)
    return t.uniform_(-1e-4, 1e-4, generator=generator)


def _check_levels(n_levels):
    if not isinstance(n_levels, int) or isinstance(n_levels, bool) or not 1 <= n_levels <= MAX_LEVELS:
        _common.fail(OP, f"argument 'n_levels' expected an int in [1, {MAX_LEVELS}], got {n_levels!r}")


def _check_resolutions(base, finest):
    if not isinstance(base, int) or isinstance(base, bool) or not 1 <= base <= MAX_RESOLUTION:
        _common.fail(OP, f"argument 'base_resolution' expected an int in [1, 2^20], got {base!r}")
    if not isinstance(finest, int) or isinstance(finest, bool) or not base <= finest <= MAX_RESOLUTION:
        _common.fail(OP, f"argument 'finest_resolution' expected an int in [base_resolution ({base}), 2^20], got {finest!r}")


def _check_bbox(bbox):
    ok = isinstance(bbox, Sequence) and len(bbox) == 2 and all(isinstance(c, Sequence) and len(c) == 3 for c in bbox)
    if ok:
        lo, hi = bbox
        ok = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (*lo, *hi)
        ) and all(h > lw for lw, h in zip(lo, hi))
    if not ok:
        _common.fail(OP, f"argument 'bbox' expected ((xmin, ymin, zmin), (xmax, ymax, zmax)) of finite numbers with max > min, got {bbox!r}")
    return [float(v) for v in bbox[0]], [float(v) for v in bbox[1]]


def _check(x, table, base_resolution, finest_resolution, bbox, x_grad, out_dtype):
    _common.check_tensor(OP, "table", table, dtypes=_FLOATS)
    if table.dim() != 3:
        _common.fail(OP, f"argument 'table' expected shape [levels, table_size, features], got {list(table.shape)}")
    L, T, F = table.shape
    if not 1 <= L <= MAX_LEVELS:
        _common.fail(OP, f"argument 'table' expected 1..{MAX_LEVELS} levels (dim 0), got {L}")
    if not 1 <= T <= MAX_TABLE_SIZE:
        _common.fail(OP, f"argument 'table' expected a table size (dim 1) in [1, 2^31], got {T}")
    if F < 1:
        _common.fail(OP, f"argument 'table' expected at least one feature (dim 2), got {F}")
    _common.check_tensor(OP, "x", x, like=table, like_name="table")
    if x.dim() < 1 or x.shape[-1] != 3:
        _common.fail(OP, f"argument 'x' expected shape [..., 3] (points), got {list(x.shape)}")
    _check_resolutions(base_resolution, finest_resolution)
    lo, hi = _check_bbox(bbox)
    if not isinstance(x_grad, bool):
        _common.fail(OP, f"argument 'x_grad' expected a bool, got {x_grad!r}")
    low_precision = table.dtype == torch.float32 and out_dtype in (torch.float16, torch.bfloat16)
    if out_dtype is not None and out_dtype != table.dtype and not low_precision:
        _common.fail(
            OP, f"argument 'out_dtype' expected None, {table.dtype} (the table's dtype) or float16/bfloat16 "
            f"with a float32 table, got {out_dtype}"
        )
    return lo, hi


def hash_encode(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    base_resolution: int,
    finest_resolution: int,
    bbox: Sequence[Sequence[float]] = DEFAULT_BBOX,
    x_grad: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Multiresolution hash-grid encoding of points (the formula is in the module docstring).

    Args:
        x: points [..., 3], the table's dtype and device. Coordinates outside `bbox` are clamped into
            it (the border value extends outward; zero gradient along a clamped axis).
        table: the learnable features [L, T, F], float32 (float64 for gradcheck). Level l's grid is
            dense when (N_l + 1)^3 <= T, hashed into T rows otherwise.
        base_resolution: N_0, an int in [1, 2^20].
        finest_resolution: N_{L-1}, an int in [base_resolution, 2^20] (unused when L = 1).
        bbox: ((xmin, ymin, zmin), (xmax, ymax, zmax)), the box mapped onto every level's grid.
        x_grad: also return a gradient to x in the backward pass (default: x is a constant; the
            gradient costs a second gather of the table).
        out_dtype: None (the table's dtype), or torch.float16 / torch.bfloat16 with a float32 table:
            the sum is taken in float32 and rounded once; the table gradient stays float32.

    Returns:
        [..., L*F] in out_dtype, level-major: out[..., l*F + f] is feature f of level l. Empty x gives
        an empty result. Gradients flow to table (colliding vertices sum into their shared row) and,
        with x_grad=True, to x. The CPU backward is deterministic (no atomics); the CUDA one adds
        with atomics.

    Example:
        >>> import torch, dgnerf
        >>> table = dgnerf.ops.init_hash_table(16, 2**19, 2)
        >>> x = torch.rand(1024, 3) * 2 - 1
        >>> enc = dgnerf.ops.hash_encode(x, table, base_resolution=16, finest_resolution=2048)
        >>> enc.shape
        torch.Size([1024, 32])
    """
    lo, hi = _check(x, table, base_resolution, finest_resolution, bbox, x_grad, out_dtype)
    L, _, F = table.shape
    lead = tuple(x.shape[:-1])
    checks = _common.checks_enabled()
    if checks:
        _common.check_finite(OP, {"x": x})
    xin = (x if x_grad else x.detach()).reshape(-1, 3).contiguous()
    out_dt = None if out_dtype == table.dtype else out_dtype
    if _common.use_kernel(OP, x.device):
        out = torch.ops.dgnerf.hash_encode(xin, table.contiguous(), lo, hi, base_resolution, finest_resolution, out_dt)
    else:
        out = hash_encode_reference(xin, table, base_resolution, finest_resolution, lo, hi, out_dt)
    if checks and not _common.all_finite(out):
        _common.check_finite(OP, {"table": table})
        _common.fail(OP, f"the result is not finite although every input is (out_dtype {out.dtype} overflow?)")
    return out.reshape(lead + (L * F,))


if hasattr(torch.ops, "dgnerf") and hasattr(torch.ops.dgnerf, "hash_encode"):

    @torch.library.register_fake("dgnerf::hash_encode")
    def _fake(x, table, bbox_min, bbox_max, base_resolution, finest_resolution, out_dtype=None):
        L, _, F = table.shape
        torch._check(x.dim() == 2 and x.shape[1] == 3, lambda: "dgnerf.hash_encode: 'x' must be [points, 3]")
        return table.new_empty((x.shape[0], L * F), dtype=out_dtype if out_dtype is not None else table.dtype)

    @torch.library.register_fake("dgnerf::hash_encode_backward")
    def _fake_bwd(grad_out, x, table, bbox_min, bbox_max, base_resolution, finest_resolution, x_grad, table_grad):
        return table.new_empty(table.shape if table_grad else (0,)), x.new_empty((x.shape[0], 3) if x_grad else (0,))

    def _setup(ctx, inputs, output):
        x, table, bbox_min, bbox_max, base_resolution, finest_resolution = inputs[:6]
        ctx.save_for_backward(x, table)
        ctx.args = (bbox_min, bbox_max, base_resolution, finest_resolution)

    def _backward(ctx, grad_out):
        x, table = ctx.saved_tensors
        x_grad, table_grad = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        g_table, g_x = torch.ops.dgnerf.hash_encode_backward(
            grad_out.contiguous(), x, table, *ctx.args, x_grad, table_grad
        )
        return (g_x if x_grad else None), (g_table if table_grad else None), None, None, None, None, None

    torch.library.register_autograd("dgnerf::hash_encode", _backward, setup_context=_setup)
