"""Hash-grid encoding: CPU kernel vs its pure-PyTorch twin, gradients, collisions, borders, bad inputs."""
import pytest
import torch

import dgnerf
from dgnerf import _ext
from dgnerf.ops import _common
from dgnerf.ops import reference as ref
from tests.conftest import rel_err, requires_cuda

needs_ext = pytest.mark.skipif(not _ext.loaded, reason=f"extension not built: {_ext.load_error}")

# Unequal extents (each axis its own scale), powers of two so that a point on the far face lands
# exactly on p = N_l and the clamp tests can compare bit for bit.
BOX = ((-1.0, -0.5, 0.0), (1.0, 1.5, 4.0))
M32 = 0xFFFFFFFF


def points(n, dtype=torch.float32, box=BOX, margin=0.0):
    """Uniform points in the box, grown by `margin` of its extent on every side (margin > 0: some outside)."""
    lo, hi = torch.tensor(box[0], dtype=torch.float64), torch.tensor(box[1], dtype=torch.float64)
    u = torch.rand(n, 3, dtype=torch.float64) * (1 + 2 * margin) - margin
    return (lo + u * (hi - lo)).to(dtype)


def table_of(L, T, F, dtype=torch.float32):
    return torch.randn(L, T, F, dtype=torch.float64).to(dtype)


def enc(x, table, base, finest, **kw):
    return dgnerf.ops.hash_encode(x, table, base_resolution=base, finest_resolution=finest, bbox=BOX, **kw)


def twin(x, table, base, finest, out_dtype=None):
    return ref.hash_encode_reference(x, table, base, finest, BOX[0], BOX[1], out_dtype)


def level_kinds(L, T, base, finest):
    return ["dense" if (n + 1) ** 3 <= T else "hashed" for n in ref.hash_grid_resolutions(L, base, finest)]


# (L, T, F, base, finest): each mixes dense coarse levels with hashed fine ones, F from 1 to 5
# (2, 4, 8 take the unrolled kernels, the others the runtime-F one).
CONFIGS = [(6, 2**10, 2, 2, 64), (4, 4096, 4, 3, 200), (3, 512, 1, 4, 30), (5, 2**12, 8, 1, 300), (2, 64, 5, 3, 9)]


@needs_ext
@pytest.mark.parametrize("L,T,F,base,finest", CONFIGS)
def test_cpu_matches_reference_values_and_grads(L, T, F, base, finest):
    kinds = level_kinds(L, T, base, finest)
    assert "dense" in kinds and "hashed" in kinds, kinds
    x = points(3000, margin=0.05)
    table = table_of(L, T, F).requires_grad_(True)
    table_r = table.detach().clone().requires_grad_(True)
    out = enc(x, table, base, finest)
    out_r = twin(x, table_r, base, finest)
    assert out.shape == (3000, L * F) and out.dtype == torch.float32
    assert rel_err(out, out_r) <= 1e-5
    # The float64 twin on the same points: the float32 rounding of positions changes nothing visible.
    assert rel_err(out, twin(x.double(), table.detach().double(), base, finest)) <= 1e-5
    g = torch.randn_like(out)
    out.backward(g)
    out_r.backward(g)
    assert rel_err(table.grad, table_r.grad) <= 1e-5


@needs_ext
@pytest.mark.parametrize("L,T,F,base,finest", CONFIGS[:3])
def test_float64_matches_reference_exactly(L, T, F, base, finest):
    x = points(2000, torch.float64, margin=0.05).requires_grad_(True)
    table = table_of(L, T, F, torch.float64).requires_grad_(True)
    x_r, table_r = x.detach().clone().requires_grad_(True), table.detach().clone().requires_grad_(True)
    out = enc(x, table, base, finest, x_grad=True)
    out_r = twin(x_r, table_r, base, finest)
    assert rel_err(out, out_r) <= 1e-13
    g = torch.randn_like(out)
    out.backward(g)
    out_r.backward(g)
    assert rel_err(table.grad, table_r.grad) <= 1e-12
    assert rel_err(x.grad, x_r.grad) <= 1e-12


@needs_ext
@pytest.mark.parametrize("L,T,F,base,finest", CONFIGS[:2])
def test_x_gradients_match_reference(L, T, F, base, finest):
    x = points(3000, margin=0.1).requires_grad_(True)
    x_r = x.detach().clone().requires_grad_(True)
    table = table_of(L, T, F)
    out = enc(x, table, base, finest, x_grad=True)
    out_r = twin(x_r, table, base, finest)
    g = torch.randn_like(out)
    out.backward(g)
    out_r.backward(g)
    assert rel_err(x.grad, x_r.grad) <= 1e-5
    assert (x.grad != 0).any(dim=0).all()


@needs_ext
def test_x_gets_no_gradient_unless_asked():
    x = points(50).requires_grad_(True)
    table = table_of(2, 256, 2).requires_grad_(True)
    enc(x, table, 2, 16).sum().backward()
    assert x.grad is None and table.grad is not None


@needs_ext
def test_frozen_table_gives_x_gradient_only():
    # e.g. fitting camera poses through a trained field: no table gradient is computed or returned.
    x = points(300).requires_grad_(True)
    x_r = x.detach().clone().requires_grad_(True)
    table = table_of(4, 1024, 2)
    out = enc(x, table, 2, 60, x_grad=True)
    g = torch.randn_like(out)
    out.backward(g)
    twin(x_r, table, 2, 60).backward(g)
    assert table.grad is None and rel_err(x.grad, x_r.grad) <= 1e-5
    g_table, g_x = torch.ops.dgnerf.hash_encode_backward(g, x.detach(), table, list(BOX[0]), list(BOX[1]), 2, 60,
                                                         True, False)
    assert g_table.shape == (0,) and torch.equal(g_x, x.grad)


@needs_ext
@pytest.mark.parametrize("with_outside", [False, True])
def test_gradcheck_float64(with_outside):
    # L=3, T=64: level 0 (N=2) is dense, levels 1-2 (N=4, 8) are hashed.
    x = points(6, torch.float64, margin=0.3 if with_outside else 0.0).requires_grad_(True)
    table = table_of(3, 64, 2, torch.float64).requires_grad_(True)
    fn = lambda xx, tt: enc(xx, tt, 2, 8, x_grad=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-6, atol=1e-7)


@needs_ext
def test_hash_collisions_sum_their_gradients():
    # T=7: every level is hashed into 7 rows shared by thousands of vertices.
    L, T, F = 4, 7, 3
    assert level_kinds(L, T, 2, 40) == ["hashed"] * L
    x = points(4000)
    table = table_of(L, T, F).requires_grad_(True)
    table_r = table.detach().double().requires_grad_(True)
    out = enc(x, table, 2, 40)
    g = torch.randn(out.shape, dtype=torch.float64)
    out.backward(g.float())
    twin(x.double(), table_r, 2, 40).backward(g)
    assert rel_err(table.grad, table_r.grad) <= 1e-5
    # The 8 weights of a point sum to 1 in every level, so each level's rows receive all of grad_out.
    per_level = g.reshape(-1, L, F).sum(0)
    assert rel_err(table.grad.double().sum(1), per_level) <= 1e-5


def _vertex_row(v, res, T):
    """Table row of vertex v from the documented formula, in plain Python integers."""
    side = res + 1
    if side**3 <= T:
        return v[0] + side * v[1] + side * side * v[2]
    return ((v[0] * 1) ^ (v[1] * 2654435761 & M32) ^ (v[2] * 805459861 & M32)) % T


@needs_ext
@pytest.mark.parametrize("T", [125, 124, 2**16])
def test_vertices_read_their_documented_row(T):
    # One level, N=4 on the unit-step box [0, 4]^3: vertex k sits at x = k. T=125 = 5^3 is the largest
    # dense case, T=124 is hashed.
    box = ((0.0, 0.0, 0.0), (4.0, 4.0, 4.0))
    table = table_of(1, T, 3)
    verts = [(0, 0, 0), (4, 4, 4), (4, 0, 0), (0, 4, 0), (0, 0, 4), (1, 2, 3), (3, 1, 4), (2, 2, 2)]
    x = torch.tensor(verts, dtype=torch.float32)
    out = dgnerf.ops.hash_encode(x, table, base_resolution=4, finest_resolution=4, bbox=box)
    rows = [_vertex_row(v, 4, T) for v in verts]
    assert torch.equal(out, table[0, rows])


@needs_ext
def test_cell_borders_and_box_corners_match_reference():
    # Points on cell borders of every level, on edges and corners of the box: the cell choice at
    # p = k (cell k, weight 0 on the far side; p = N: the last cell, weight 1) must agree with the twin.
    L, T, F, base, finest = 3, 4096, 2, 4, 16
    box = ((0.0, 0.0, 0.0), (16.0, 16.0, 16.0))
    g = torch.arange(0, 17, 2, dtype=torch.float32)
    x = torch.cartesian_prod(g, g, g)
    table = table_of(L, T, F).requires_grad_(True)
    table_r = table.detach().clone().requires_grad_(True)
    xg, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    kw = dict(base_resolution=base, finest_resolution=finest, bbox=box)
    out = dgnerf.ops.hash_encode(xg, table, x_grad=True, **kw)
    out_r = ref.hash_encode_reference(xr, table_r, base, finest, box[0], box[1])
    assert torch.equal(out, out_r)
    gr = torch.randn_like(out)
    out.backward(gr)
    out_r.backward(gr)
    assert rel_err(table.grad, table_r.grad) <= 1e-6
    assert rel_err(xg.grad, xr.grad) <= 1e-5


@needs_ext
def test_outside_the_box_is_clamped():
    table = table_of(3, 512, 2)
    inside = torch.tensor([[1.0, 1.5, 0.7], [-1.0, -0.5, 4.0], [0.3, -0.5, 2.2]])
    outside = torch.tensor([[7.0, 9.0, 0.7], [-3.0, -0.6, 1e30], [0.3, -1e30, 2.2]])
    a = enc(inside, table, 2, 12)
    b = enc(outside, table, 2, 12)
    assert torch.equal(a, b)
    assert torch.equal(b, twin(outside, table, 2, 12))
    # No gradient along a clamped axis, the usual one along the others.
    xo = outside.clone().requires_grad_(True)
    xi = inside.clone().requires_grad_(True)
    enc(xo, table, 2, 12, x_grad=True).sum().backward()
    enc(xi, table, 2, 12, x_grad=True).sum().backward()
    clamped = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    assert (xo.grad[clamped] == 0).all()
    assert torch.equal(xo.grad[~clamped], xi.grad[~clamped])


@needs_ext
def test_non_finite_points_rejected_but_never_read_out_of_bounds():
    table = table_of(4, 256, 2)
    x = points(8)
    x[1, 0], x[3, 2], x[5, 1] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(ValueError, match="'x' contains 1 NaN and 2 Inf"):
        enc(x, table, 2, 40)
    dgnerf.ops.set_checks(False)
    try:
        out = enc(x, table, 2, 40)
    finally:
        dgnerf.ops.set_checks(True)
    # NaN behaves as the box minimum, +-Inf as the border it points to.
    y = x.clone()
    y[1, 0], y[3, 2], y[5, 1] = BOX[0][0], BOX[1][2], BOX[0][1]
    assert torch.equal(out, enc(y, table, 2, 40))


@needs_ext
def test_resolutions_and_level_layout():
    res = dgnerf.ops.hash_grid_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048 and res == sorted(res) and len(set(res)) == 16
    assert dgnerf.ops.hash_grid_resolutions(1, 8, 8) == [8]
    assert dgnerf.ops.hash_grid_resolutions(1, 8, 100) == [8]
    assert dgnerf.ops.hash_grid_resolutions(4, 16, 128) == [16, 32, 64, 128]
    assert dgnerf.ops.hash_grid_resolutions(3, 5, 5) == [5, 5, 5]
    # Level-major output: level l's features are columns l*F .. l*F+F-1, each level alone is a 1-level grid.
    L, T, F = 3, 1000, 2
    table = table_of(L, T, F)
    x = points(100)
    out = enc(x, table, 4, 36)
    for level, n in enumerate(dgnerf.ops.hash_grid_resolutions(L, 4, 36)):
        one = enc(x, table[level : level + 1].contiguous(), n, n)
        assert torch.equal(out[:, level * F : (level + 1) * F], one)


@needs_ext
def test_empty_input_and_leading_dims():
    table = table_of(3, 128, 2).requires_grad_(True)
    x = torch.zeros(0, 3, requires_grad=True)
    out = enc(x, table, 2, 16, x_grad=True)
    assert out.shape == (0, 6)
    out.sum().backward()
    assert torch.equal(table.grad, torch.zeros_like(table)) and x.grad.shape == (0, 3)
    assert enc(torch.zeros(2, 0, 3), table, 2, 16).shape == (2, 0, 6)
    xb = points(60).reshape(2, 5, 6, 3)
    out = enc(xb, table.detach(), 2, 16)
    assert out.shape == (2, 5, 6, 6)
    assert torch.equal(out.reshape(60, 6), enc(xb.reshape(60, 3), table.detach(), 2, 16))


@needs_ext
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_output(out_dtype):
    x = points(500)
    table = table_of(4, 1024, 2).requires_grad_(True)
    ref32 = enc(x, table.detach(), 2, 50)
    out = enc(x, table, 2, 50, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert torch.equal(out, ref32.to(out_dtype))  # float32 sum, rounded once
    g = torch.randn_like(ref32).to(out_dtype)
    out.backward(g)
    t2 = table.detach().clone().requires_grad_(True)
    enc(x, t2, 2, 50).backward(g.float())
    assert table.grad.dtype == torch.float32 and torch.equal(table.grad, t2.grad)
    assert twin(x, table.detach(), 2, 50, out_dtype).dtype == out_dtype


@needs_ext
@pytest.mark.parametrize("L", [1, 5])
def test_backward_is_deterministic_across_thread_counts(L):
    # L=1 with 2 threads splits the level's rows into slices; L=5 gives whole levels to threads.
    x = points(20000).requires_grad_(True)
    table = table_of(L, 2**14, 2).requires_grad_(True)
    g = torch.randn(20000, L * 2)
    grads = []
    n0 = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            table.grad = x.grad = None
            enc(x, table, 4, 500, x_grad=True).backward(g)
            grads.append((table.grad.clone(), x.grad.clone()))
    finally:
        torch.set_num_threads(n0)
    for gt, gx in grads[1:]:
        assert torch.equal(gt, grads[0][0]) and torch.equal(gx, grads[0][1])


@needs_ext
def test_twin_fallback_when_kernel_missing(monkeypatch):
    x = points(200).requires_grad_(True)
    table = table_of(3, 300, 2)
    fast = enc(x, table, 3, 30, x_grad=True)
    monkeypatch.setattr(_common, "use_kernel", lambda op, device: False)
    slow = enc(x, table, 3, 30, x_grad=True)
    assert rel_err(fast, slow) <= 1e-6 and slow.requires_grad


def test_init_hash_table():
    t = dgnerf.ops.init_hash_table(4, 1000, 3, generator=torch.Generator().manual_seed(1))
    assert t.shape == (4, 1000, 3) and t.dtype == torch.float32
    assert float(t.abs().max()) <= 1e-4 and float(t.std()) > 3e-5
    assert dgnerf.ops.init_hash_table(2, 10, 1, dtype=torch.float64).dtype == torch.float64


@needs_ext
def test_opcheck():
    x = points(40)
    table = table_of(3, 64, 2).requires_grad_(True)
    args = (x, table, list(BOX[0]), list(BOX[1]), 2, 12)
    torch.library.opcheck(torch.ops.dgnerf.hash_encode.default, args)
    torch.library.opcheck(torch.ops.dgnerf.hash_encode.default, (x.requires_grad_(True), *args[1:], torch.bfloat16))
    g = torch.randn(40, 6)
    for x_grad, table_grad in ((False, True), (True, True), (True, False)):
        bwd_args = (g, x.detach(), table.detach(), *args[2:], x_grad, table_grad)
        torch.library.opcheck(torch.ops.dgnerf.hash_encode_backward.default, bwd_args)


@needs_ext
def test_torch_compile():
    x = points(64).requires_grad_(True)
    table = table_of(3, 256, 2).requires_grad_(True)
    fn = torch.compile(lambda a, t: enc(a, t, 2, 20, x_grad=True), fullgraph=True, backend="aot_eager")
    out = fn(x, table)
    assert rel_err(out, twin(x.detach(), table.detach(), 2, 20)) <= 1e-6
    out.sum().backward()
    x2, t2 = x.detach().clone().requires_grad_(True), table.detach().clone().requires_grad_(True)
    enc(x2, t2, 2, 20, x_grad=True).sum().backward()
    assert torch.equal(table.grad, t2.grad) and torch.equal(x.grad, x2.grad)


def _bad_cases():
    x, t = points(10), table_of(3, 64, 2)
    kw = dict(base_resolution=2, finest_resolution=12)
    return [
        ((x.to(torch.int64), t), kw, "'x' expected dtype torch.float32"),
        ((x.double(), t), kw, "'x' expected dtype torch.float32 (the dtype of 'table'), got torch.float64"),
        ((x, t.half()), kw, "'table' expected dtype in"),
        ((x[:, :2], t), kw, "'x' expected shape [..., 3]"),
        ((x, t[0]), kw, "'table' expected shape [levels, table_size, features]"),
        ((x, t[:, :, :0]), kw, "'table' expected at least one feature"),
        ((x, t[:, :0]), kw, "'table' expected a table size"),
        ((x, table_of(65, 4, 1)), kw, "'table' expected 1..64 levels"),
        ((x.to("meta"), t), kw, "'x' expected device cpu"),
        ((x, t), dict(base_resolution=0, finest_resolution=12), "'base_resolution' expected an int in [1, 2^20], got 0"),
        ((x, t), dict(base_resolution=2.0, finest_resolution=12), "'base_resolution' expected an int"),
        ((x, t), dict(base_resolution=8, finest_resolution=4), "'finest_resolution' expected an int in [base_resolution (8), 2^20], got 4"),
        ((x, t), dict(base_resolution=2, finest_resolution=2**21), "'finest_resolution' expected"),
        ((x, t), dict(kw, bbox=((0, 0, 0), (1, 1, 0))), "'bbox' expected"),
        ((x, t), dict(kw, bbox=((0, 0), (1, 1))), "'bbox' expected"),
        ((x, t), dict(kw, bbox=((0, 0, float("nan")), (1, 1, 1))), "'bbox' expected"),
        ((x, t), dict(kw, out_dtype=torch.int32), "'out_dtype' expected"),
        ((x.double(), t.double()), dict(kw, out_dtype=torch.float16), "'out_dtype' expected"),
        ((x, t), dict(kw, x_grad=1), "'x_grad' expected a bool"),
        ((x.index_fill(0, torch.tensor([3]), float("nan")), t), kw, "'x' contains 3 NaN"),
        ((x, t.index_fill(1, torch.tensor([0, 5]), float("inf"))), dict(base_resolution=1, finest_resolution=1), "'table' contains"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_named(case):
    args, kw, words = _bad_cases()[case]
    with pytest.raises(ValueError) as e:
        dgnerf.ops.hash_encode(*args, **kw)
    assert words in str(e.value), str(e.value)


def test_bad_helper_arguments_named():
    with pytest.raises(ValueError, match="'n_levels' expected"):
        dgnerf.ops.hash_grid_resolutions(0, 2, 4)
    with pytest.raises(ValueError, match="'finest_resolution' expected"):
        dgnerf.ops.hash_grid_resolutions(3, 8, 4)
    with pytest.raises(ValueError, match="'table_size' expected"):
        dgnerf.ops.init_hash_table(3, 0)
    with pytest.raises(ValueError, match="'dtype' expected"):
        dgnerf.ops.init_hash_table(3, 8, dtype=torch.float16)


@needs_ext
def test_cpp_checks_name_argument():
    x, t = points(10), table_of(3, 64, 2)
    box = (list(BOX[0]), list(BOX[1]))
    with pytest.raises(RuntimeError, match="'x' expected shape"):
        torch.ops.dgnerf.hash_encode(x[:, :2].contiguous(), t, *box, 2, 12)
    with pytest.raises(RuntimeError, match="'x' must be contiguous"):
        torch.ops.dgnerf.hash_encode(x.t().contiguous().t(), t, *box, 2, 12)
    with pytest.raises(RuntimeError, match="'finest_resolution' expected"):
        torch.ops.dgnerf.hash_encode(x, t, *box, 4, 2)
    with pytest.raises(RuntimeError, match="'bbox_max' expected finite values above 'bbox_min'"):
        torch.ops.dgnerf.hash_encode(x, t, box[1], box[0], 2, 12)
    with pytest.raises(RuntimeError, match="'out_dtype' expected"):
        torch.ops.dgnerf.hash_encode(x.double(), t.double(), *box, 2, 12, torch.float16)
    with pytest.raises(RuntimeError, match="'grad_out' expected shape"):
        torch.ops.dgnerf.hash_encode_backward(torch.zeros(10, 5), x, t, *box, 2, 12, False, True)


# --- CUDA ------------------------------------------------------------------------------------


def _need_cuda_kernel():
    if not _ext.has_kernel("hash_encode", "cuda"):
        pytest.fail("CUDA is available but the extension has no CUDA kernel: rebuild with nvcc (DGNERF_CUDA=1)")


@requires_cuda
@pytest.mark.parametrize("L,T,F,base,finest", CONFIGS + [(16, 2**19, 2, 16, 2048)])
def test_cuda_matches_cpu(L, T, F, base, finest):
    _need_cuda_kernel()
    x = points(20000, margin=0.05)
    table = table_of(L, T, F)
    xc, tc = x.cuda().requires_grad_(True), table.cuda().requires_grad_(True)
    xh, th = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = enc(xc, tc, base, finest, x_grad=True)
    out_h = enc(xh, th, base, finest, x_grad=True)
    assert rel_err(out, out_h) <= 1e-6
    g = torch.randn_like(out_h)
    out.backward(g.cuda())
    out_h.backward(g)
    assert rel_err(tc.grad, th.grad) <= 1e-5  # atomics: another summation order
    assert rel_err(xc.grad, xh.grad) <= 1e-5


@requires_cuda
def test_cuda_float64_and_collisions():
    _need_cuda_kernel()
    x = points(5000, torch.float64, margin=0.1)
    table = table_of(4, 7, 3, torch.float64)
    xc, tc = x.cuda().requires_grad_(True), table.cuda().requires_grad_(True)
    xr, tr = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = enc(xc, tc, 2, 40, x_grad=True)
    out_r = twin(xr, tr, 2, 40)
    assert rel_err(out, out_r) <= 1e-13
    g = torch.randn_like(out_r)
    out.backward(g.cuda())
    out_r.backward(g)
    assert rel_err(tc.grad, tr.grad) <= 1e-12 and rel_err(xc.grad, xr.grad) <= 1e-12


@requires_cuda
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_output(out_dtype):
    _need_cuda_kernel()
    x = points(10000).cuda()
    table = table_of(8, 2**14, 2).cuda().requires_grad_(True)
    out = enc(x, table, 4, 400, out_dtype=out_dtype)
    full = enc(x, table.detach(), 4, 400)
    assert out.dtype == out_dtype
    # float32 sum rounded once (nvcc may fuse the float32 sums differently per instantiation: a tolerance)
    assert rel_err(out, full) <= (1e-3 if out_dtype == torch.float16 else 8e-3)
    g = torch.randn_like(full)
    out.backward(g.to(out_dtype))
    t2 = table.detach().clone().requires_grad_(True)
    enc(x, t2, 4, 400).backward(g.to(out_dtype).float())
    assert table.grad.dtype == torch.float32 and rel_err(table.grad, t2.grad) <= 1e-5


@requires_cuda
def test_cuda_graph_capture():
    _need_cuda_kernel()
    x = points(4096).cuda()
    table = table_of(6, 2**12, 2).cuda().requires_grad_(True)
    g = torch.randn(4096, 12, device="cuda")
    dgnerf.ops.set_checks(False)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            for _ in range(2):
                table.grad = None
                enc(x, table, 4, 200).backward(g)
        torch.cuda.current_stream().wait_stream(side)
        table.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = enc(x, table, 4, 200)
            out.backward(g)
        graph.replay()
        torch.cuda.synchronize()
    finally:
        dgnerf.ops.set_checks(True)
    assert rel_err(out, enc(x.cpu(), table.detach().cpu(), 4, 200)) <= 1e-6
    t2 = table.detach().cpu().requires_grad_(True)
    enc(x.cpu(), t2, 4, 200).backward(g.cpu())
    assert rel_err(table.grad, t2.grad) <= 1e-5


@requires_cuda
def test_cuda_non_finite_points_stay_in_bounds():
    _need_cuda_kernel()
    x = points(64)
    x[::3, 1] = float("nan")
    x[1::3, 2] = float("inf")
    table = table_of(4, 512, 2)
    dgnerf.ops.set_checks(False)
    try:
        out = enc(x.cuda(), table.cuda(), 2, 60)
        torch.cuda.synchronize()
        expect = enc(x, table, 2, 60)
    finally:
        dgnerf.ops.set_checks(True)
    assert torch.equal(out.cpu(), expect)
