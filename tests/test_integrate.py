"""Feature volume integration: CPU kernel vs its pure-PyTorch twin, gradcheck, opcheck, bad inputs."""
import pytest
import torch

import dgnerf
from dgnerf import _ext
from dgnerf.ops import reference as ref
from tests.conftest import rel_err, requires_cuda

needs_ext = pytest.mark.skipif(not _ext.loaded, reason=f"extension not built: {_ext.load_error}")


def make_inputs(R, S, C, dtype=torch.float32, device="cpu", requires_grad=False):
    sigma = (torch.rand(R, S, dtype=torch.float64) * 4).to(dtype)
    features = torch.randn(R, S, C, dtype=torch.float64).to(dtype)
    depths = (2 + torch.rand(R, S, dtype=torch.float64).sort(-1).values * 2).to(dtype)
    deltas = (torch.rand(R, S, dtype=torch.float64) * 0.2 + 0.01).to(dtype)
    background = torch.randn(C, dtype=torch.float64).to(dtype)
    ts = [t.to(device).requires_grad_(requires_grad) for t in (sigma, features, depths, deltas, background)]
    return ts


def run_both(inputs, threshold, fast):
    fn = dgnerf.ops.integrate_features if fast else ref.integrate_features_reference
    return fn(*inputs, threshold)


@needs_ext
@pytest.mark.parametrize("threshold", [0.0, 1e-2, 0.3])
@pytest.mark.parametrize("R,S,C", [(37, 64, 512), (5, 7, 3), (300, 16, 33)])
def test_cpu_matches_reference_values_and_grads(R, S, C, threshold):
    # The oracle runs in float64 on the same (float32-representable) inputs.
    a = make_inputs(R, S, C, requires_grad=True)
    b = [t.detach().double().requires_grad_(True) for t in a]
    out_a = run_both(a, threshold, fast=True)
    out_b = run_both(b, threshold, fast=False)
    for x, y in zip(out_a, out_b):
        assert rel_err(x, y) <= 1e-5
    gs = [torch.randn_like(o) for o in out_b]
    torch.autograd.backward(out_a, [g.float() for g in gs])
    torch.autograd.backward(out_b, gs)
    for name, x, y in zip(["sigma", "features", "depths", "deltas", "background"], a, b):
        assert rel_err(x.grad, y.grad) <= 1e-5, name


@needs_ext
def test_threshold_zero_is_exact_and_cut_drops_samples():
    a = make_inputs(64, 32, 8)
    a[0].mul_(20)  # dense rays terminate early
    exact = dgnerf.ops.integrate_features(*a, 0.0)
    ref_exact = ref.integrate_features_reference(*a, 0.0)
    assert rel_err(exact[0], ref_exact[0]) <= 1e-6
    cut = dgnerf.ops.integrate_features(*a, 0.05)
    assert not torch.equal(cut[1], exact[1])  # the cut actually removed weight
    assert float((exact[1] - cut[1]).max()) <= 0.05 + 1e-6  # at most the remaining transmittance


@needs_ext
def test_high_density_gradients_stay_finite():
    # alpha -> 1: a backward that divided by (1 - alpha) would produce Inf/NaN here.
    s, f, t, d, bg = make_inputs(16, 32, 8, requires_grad=False)
    s = (torch.full_like(s, 1e4)).requires_grad_(True)
    f.requires_grad_(True)
    out = dgnerf.ops.integrate_features(s, f, t, d, bg)
    (out[0].sum() + out[1].sum() + out[2].sum()).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(f.grad).all()


@needs_ext
def test_batched_leading_dims():
    s, f, t, d, bg = make_inputs(24, 8, 5)
    out = dgnerf.ops.integrate_features(s.view(2, 3, 4, 8), f.view(2, 3, 4, 8, 5), t.view(2, 3, 4, 8), d.view(2, 3, 4, 8), bg)
    flat = dgnerf.ops.integrate_features(s, f, t, d, bg)
    assert out[0].shape == (2, 3, 4, 5) and out[1].shape == (2, 3, 4)
    assert torch.equal(out[0].reshape(24, 5), flat[0])


@needs_ext
@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_gradcheck_float64(threshold):
    inputs = make_inputs(3, 6, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda *xs: dgnerf.ops.integrate_features(*xs, threshold)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@needs_ext
def test_opcheck():
    inputs = make_inputs(4, 5, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.dgnerf.integrate_features.default, (*inputs, 0.0))
    args = [torch.randn(4, 3), torch.randn(4), torch.randn(4)] + [t.detach() for t in inputs] + [0.0]
    torch.library.opcheck(torch.ops.dgnerf.integrate_features_backward.default, tuple(args))


@needs_ext
def test_torch_compile():
    inputs = make_inputs(8, 6, 4)
    fn = torch.compile(lambda *xs: dgnerf.ops.integrate_features(*xs), fullgraph=True, backend="eager")
    out = fn(*inputs)
    assert rel_err(out[0], ref.integrate_features_reference(*inputs)[0]) <= 1e-5


BAD = [
    ("features", lambda s, f, t, d, b: (s, f.double(), t, d, b), "dtype"),
    ("sigma", lambda s, f, t, d, b: (s[:, :-1], f, t, d, b), "shape"),
    ("background", lambda s, f, t, d, b: (s, f, t, d, b[:-1]), "shape"),
    ("depths", lambda s, f, t, d, b: (s, f, t.half(), d, b), "dtype"),
    ("features", lambda s, f, t, d, b: (s.half(), f.half(), t.half(), d.half(), b.half()), "float32 or float64 on CPU"),
    ("features", lambda s, f, t, d, b: (s[:0], f[:0], t[:0], d[:0], b), "empty"),
    ("features", lambda s, f, t, d, b: (s, f.index_fill(1, torch.tensor([2]), float("nan")), t, d, b), "NaN"),
    ("sigma", lambda s, f, t, d, b: (s.index_fill(1, torch.tensor([0]), float("inf")), f, t, d, b), "Inf"),
]


@pytest.mark.parametrize("arg,mutate,words", BAD)
def test_bad_inputs_named(arg, mutate, words):
    inputs = mutate(*make_inputs(6, 5, 4))
    with pytest.raises((ValueError, RuntimeError)) as e:
        dgnerf.ops.integrate_features(*inputs)
    msg = str(e.value)
    assert f"'{arg}'" in msg and words in msg, msg


@needs_ext
def test_cpp_checks_name_argument():
    s, f, t, d, b = make_inputs(6, 5, 4)
    with pytest.raises(RuntimeError, match="'deltas'.*shape"):
        torch.ops.dgnerf.integrate_features(s, f, t, d[:, :2].contiguous(), b, 0.0)
    with pytest.raises(RuntimeError, match="'features' must be contiguous"):
        torch.ops.dgnerf.integrate_features(s, f.transpose(0, 1).contiguous().transpose(0, 1), t, d, b, 0.0)
    with pytest.raises(RuntimeError, match="'threshold'"):
        torch.ops.dgnerf.integrate_features(s, f, t, d, b, 1.5)


def test_noncontiguous_inputs_are_accepted_by_the_public_op():
    s, f, t, d, b = make_inputs(6, 5, 4)
    fT = f.transpose(0, 1).contiguous().transpose(0, 1)
    out = dgnerf.ops.integrate_features(s, fT, t, d, b)
    assert rel_err(out[0], ref.integrate_features_reference(s, f, t, d, b)[0]) <= 1e-6


@requires_cuda
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10), (torch.float16, 1e-2), (torch.bfloat16, 2e-2)]
)
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_cuda_matches_reference(dtype, tol, threshold):
    if not _ext.has_kernel("integrate_features", "cuda"):
        pytest.fail("CUDA is available but the extension has no CUDA kernel: rebuild with nvcc (DGNERF_CUDA=1)")
    base = make_inputs(257, 64, 512, dtype=torch.float64)
    a = [t.to("cuda", dtype).requires_grad_(True) for t in base]
    b = [t.clone().requires_grad_(True) for t in base]
    out_a = dgnerf.ops.integrate_features(*a, threshold)
    out_b = ref.integrate_features_reference(*b, threshold)
    for x, y in zip(out_a, out_b):
        assert rel_err(x, y) <= tol
    gs = [torch.randn_like(o) for o in out_b]
    torch.autograd.backward(out_a, [g.to("cuda", dtype) for g in gs])
    torch.autograd.backward(out_b, gs)
    for name, x, y in zip(["sigma", "features", "depths", "deltas", "background"], a, b):
        assert rel_err(x.grad, y.grad) <= tol * 5, name


@requires_cuda
def test_cuda_graph_capture():
    inputs = make_inputs(64, 16, 32, device="cuda")
    dgnerf.ops.set_checks(False)
    try:
        out = dgnerf.ops.integrate_features(*inputs)  # warm-up outside the graph
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = dgnerf.ops.integrate_features(*inputs)
        g.replay()
        torch.cuda.synchronize()
        expect = ref.integrate_features_reference(*[t.cpu() for t in inputs])
        assert rel_err(out[0], expect[0]) <= 1e-5
    finally:
        dgnerf.ops.set_checks(True)


def test_wrong_device_named():
    s, f, t, d, b = make_inputs(6, 5, 4)
    with pytest.raises(ValueError, match="'depths' expected device cpu"):
        dgnerf.ops.integrate_features(s, f, t.to("meta"), d, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite_agrees_with_isfinite(dtype):
    # the ops' result checks use one min/max pass (dgnerf.ops.all_finite): it must see every NaN and Inf
    from dgnerf.ops import all_finite

    t = torch.randn(300, 7).to(dtype)
    assert all_finite(t, None, torch.arange(3), torch.empty(0, dtype=dtype)) is True
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in ((0, 0), (123, 4), (299, 6)):
            u = t.clone()
            u[where] = bad
            assert all_finite(u) is False and all_finite(t, u) is False
            assert all_finite(u[:, ::2]) is bool(torch.isfinite(u[:, ::2]).all())  # strided views too
    if dtype == torch.float64:
        assert all_finite(torch.tensor([1e300, -1e300], dtype=dtype)) is True  # finite beyond float32's range
