"""The fused field MLP (dgnerf.ops.field_mlp) against its twin, the plain MLP with the same arguments
(dgnerf.ops.reference.field_mlp_reference), both fed by the same folding of the codes (fold_conditioning), so
gradients reach the codes and every unfolded weight: values and gradients on fresh random inputs, float64
gradcheck, opcheck, clear errors; CUDA comparisons skip cleanly without a GPU. That folding equals the
unfolded paper formulation is checked at the model level (tests/test_model.py: reference vs fast path).

Initialisation: comparisons across precisions use weights of std 0.3/sqrt(fan_in) and biases of +-1, so
ReLU pre-activations sit well away from 0. With a generic init a few pre-activations fall within rounding
distance of 0, their ReLU masks flip between two precisions and the gradients then differ by ~10% in
bf16 -- plain PyTorch in bf16 shows the same against float32 (docs/mlp_notes.md) -- which says nothing
about the kernel.
"""
import pytest
import torch

from dgnerf.ops.mlp import FieldWeights, field_mlp, fold_conditioning
from dgnerf.ops.reference import field_mlp_reference
from tests.conftest import HAS_CUDA, rel_err, requires_cuda

HAS_KERNEL = hasattr(torch.ops.dgnerf, "field_mlp_forward")


def make_mlp(B=2, P=700, Dx=63, Dd=27, Z=24, E=8, W=64, D=8, Wd=32, F=48, skip=5, dtype=torch.float32,
             device="cpu", margin=True):
    """Random unfolded parameters and inputs (leaf tensors that require grad)."""
    ins = [Dx + Z + E] + [W] * (D - 1)
    if skip is not None:
        ins[skip] += Dx + Z + E
    ws = 0.3 if margin else 1.0

    def bias(n):
        if margin:
            return torch.randint(0, 2, (n,), dtype=torch.int64).to(dtype) * 2 - 1
        return torch.randn(n, dtype=dtype) * 0.1

    lw = [torch.randn(W, i, dtype=dtype) * ws / i**0.5 for i in ins]
    lb = [bias(W) for _ in ins]
    rest = [
        # margin: positive sigma weights, so sigma is not a near-cancelling sum (ill-conditioned in any precision)
        (torch.rand(1, W, dtype=dtype) if margin else torch.randn(1, W, dtype=dtype)) / W**0.5,
        torch.randn(1, dtype=dtype) * 0.1,
        torch.randn(Wd, W + Dd, dtype=dtype) * ws / (W + Dd) ** 0.5,
        bias(Wd),
        torch.randn(F, Wd, dtype=dtype) / Wd**0.5,
        torch.randn(F, dtype=dtype) * 0.1,
    ]
    x = torch.randn(B, P, Dx, dtype=dtype)
    d = torch.randn(B, P, Dd, dtype=dtype)
    z = torch.randn(B, Z, dtype=dtype)
    beta = torch.randn(B, E, dtype=dtype)
    leaf = lambda t: t.to(device).requires_grad_()  # noqa: E731
    return dict(x=leaf(x), d=leaf(d), z=leaf(z), beta=leaf(beta), lw=[leaf(t) for t in lw], lb=[leaf(t) for t in lb],
                rest=[leaf(t) for t in rest], skip=skip, Dx=Dx)


def params_of(m):
    return [m["x"], m["d"], m["z"], m["beta"], *m["lw"], *m["lb"], *m["rest"]]


def run_fused(m, output="feature", precision="fp32"):
    w = FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=m["skip"])
    cond0, cond_skip = fold_conditioning(w, m["z"], m["beta"])
    return field_mlp(m["x"], m["d"], cond0, cond_skip, w, output=output, precision=precision)


def twin_of(x, d, z, beta, lw, lb, rest, skip, dx, output="feature"):
    """The twin on the same folding of the codes as run_fused."""
    w = FieldWeights.from_unfolded(lw, lb, *rest, dx=dx, skip=skip)
    cond0, cond_skip = fold_conditioning(w, z, beta)
    return field_mlp_reference(x, d, cond0, cond_skip, w, output=output)


def run_twin(m, output="feature", dtype=None):
    args = [m["x"], m["d"], m["z"], m["beta"], m["lw"], m["lb"], m["rest"]]
    if dtype is not None:  # the oracle in float64
        conv = lambda t: [u.to(dtype) for u in t] if isinstance(t, list) else t.to(dtype)  # noqa: E731
        args = [conv(a) for a in args]
    return twin_of(*args, skip=m["skip"], dx=m["Dx"], output=output)


def compare(m, output, precision, tol_val, tol_grad, torch_baseline=None):
    """Fused vs the float64 twin. With torch_baseline (a dtype), a gradient may also pass if its error is
    within 2x of plain PyTorch's own error in that dtype on the same function (ReLU mask flips), and the
    median gradient error must stay <= tol_grad."""
    sf, of = run_fused(m, output, precision)
    sr, orf = run_twin(m, output, dtype=torch.float64)
    assert sf.dtype == m["x"].dtype and of.dtype == m["x"].dtype
    assert rel_err(sf, sr) <= tol_val, f"sigma rel err {rel_err(sf, sr):.3g}"
    assert rel_err(of, orf) <= tol_val, f"{output} rel err {rel_err(of, orf):.3g}"
    params = params_of(m)
    gs, go = torch.randn_like(sr), torch.randn_like(orf)
    g1 = torch.autograd.grad((sf * gs.to(sf)).sum() + (of * go.to(of)).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad((sr * gs).sum() + (orf * go).sum(), params, allow_unused=True)
    names = ["x_enc", "d_enc", "z_id", "beta"] + [f"layer_w{i}" for i in range(len(m["lw"]))] + \
        [f"layer_b{i}" for i in range(len(m["lb"]))] + ["sigma_w", "sigma_b", "dir_w", "dir_b", "out_w", "out_b"]
    g3 = [None] * len(g2)
    if torch_baseline is not None:
        g3 = _grads_in(m, output, torch_baseline, gs, go)
    errs = []
    for name, a, b, c in zip(names, g1, g2, g3):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0, name
            continue
        assert a is not None, f"no gradient for {name}"
        e = rel_err(a, b)
        errs.append(e)
        tol = tol_grad if c is None else max(tol_grad, 2.0 * rel_err(c, b))
        assert e <= tol, f"grad {name}: rel err {e:.3g} > {tol:.3g}"
    errs.sort()
    assert errs[len(errs) // 2] <= tol_grad, f"median gradient rel err {errs[len(errs) // 2]:.3g}"


def _grads_in(m, output, dtype, gs, go):
    """Gradients of plain PyTorch (the twin) computed in `dtype`, w.r.t. the same parameters."""
    conv = [p.detach().to(dtype).requires_grad_() for p in params_of(m)]
    x, d, z, beta = conv[:4]
    n = len(m["lw"])
    lw, lb, rest = conv[4 : 4 + n], conv[4 + n : 4 + 2 * n], conv[4 + 2 * n :]
    s, o = twin_of(x, d, z, beta, lw, lb, rest, m["skip"], m["Dx"], output=output)
    return torch.autograd.grad((s * gs.to(dtype)).sum() + (o * go.to(dtype)).sum(), conv, allow_unused=True)


needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="dgnerf._C without field_mlp (extension not built)")


@needs_kernel
@pytest.mark.parametrize("output", ["feature", "hidden"])
@pytest.mark.parametrize("skip", [5, None])
def test_cpu_fp32_equals_twin(output, skip):
    # P = 700: two tiles per image, the second partial; B = 2: per-image folded biases.
    m = make_mlp(skip=skip)
    compare(m, output, "fp32", 1e-5, 1e-5)


@needs_kernel
def test_cpu_fp32_odd_sizes():
    m = make_mlp(B=3, P=37, Dx=5, Dd=3, Z=4, E=2, W=24, D=4, Wd=12, F=7, skip=1)
    compare(m, "feature", "fp32", 1e-5, 1e-5)


@needs_kernel
@pytest.mark.parametrize("output", ["feature", "hidden"])
def test_cpu_bf16_close_to_twin(output):
    m = make_mlp(B=2, P=300)
    compare(m, output, "bf16", 1e-2, 1e-2, torch_baseline=torch.bfloat16)


@needs_kernel
def test_cpu_bf16_several_tiles_per_image():
    # 8200 points per image: a whole bf16 tile (8192 points) and a partial one of 8; widths in 16s, so the
    # vectorized epilogues run where the CPU has them.
    m = make_mlp(B=2, P=8200, Dx=9, Dd=5, Z=6, E=3, W=32, D=3, Wd=16, F=16, skip=1)
    for output in ("feature", "hidden"):
        compare(m, output, "bf16", 1e-2, 1e-2, torch_baseline=torch.bfloat16)


BF16_ROWS = HAS_KERNEL and hasattr(torch.ops.dgnerf, "bf16_rows") and bool(torch.ops.dgnerf.bf16_rows(-1))


@pytest.mark.skipif(not BF16_ROWS, reason="no AVX-512 BF16 on this CPU: the portable bf16 epilogues are the only ones")
@pytest.mark.parametrize("output", ["feature", "hidden"])
def test_cpu_bf16_vectorized_epilogues_equal_the_portable_ones(output):
    """The AVX-512 BF16 epilogues (bias + ReLU, ReLU's backward with the bias sums, the float32 outputs) against
    the portable ATen code they replace, on the same inputs: the same values bit for bit, the same gradients up
    to the order of the bias sums."""
    m = make_mlp(B=2, P=700, W=64, Wd=32, F=48)
    gs, go = None, None

    def run():
        nonlocal gs, go
        s, o = run_fused(m, output, "bf16")
        if gs is None:
            gs, go = torch.randn_like(s), torch.randn_like(o)
        g = torch.autograd.grad((s * gs).sum() + (o * go).sum(), params_of(m))
        return s.detach(), o.detach(), g

    fast = run()
    assert torch.ops.dgnerf.bf16_rows(0) is False
    try:
        slow = run()
    finally:
        assert torch.ops.dgnerf.bf16_rows(1) is True
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    for a, b in zip(fast[2], slow[2]):
        assert rel_err(a, b) <= 1e-5, rel_err(a, b)
    # a NaN pre-activation stays NaN through the vectorized ReLU (never a silent 0)
    with torch.no_grad():
        m["lb"][0][3] = float("nan")
    from dgnerf import ops

    with ops.checks(False):
        s, o = run_fused(m, output, "bf16")
    assert torch.isnan(o).any()


def test_fallback_is_the_twin(monkeypatch):
    """Without the compiled kernel the op computes exactly its twin."""
    from dgnerf import _ext

    m = make_mlp(B=2, P=50, W=32, D=4, skip=2)
    monkeypatch.setattr(_ext, "has_kernel", lambda op, device: False)
    monkeypatch.setattr(_ext, "warn_fallback", lambda what="": None)
    s1, o1 = run_fused(m)
    s2, o2 = run_twin(m)
    assert torch.equal(s1, s2) and torch.equal(o1, o2)


@needs_kernel
@pytest.mark.parametrize("skip", [2, None])
def test_gradcheck_float64(skip):
    B, P, Dx, Dd, W, D, Wd, F = 2, 2, 3, 2, 5, 4, 3, 4
    g = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    n_b = D - 2 if skip is not None else D - 1
    inputs = [g(B, P, Dx), g(B, P, Dd), g(B, W), g(B, W), g(W, Dx)] + [g(W, W) for _ in range(D - 1)] + \
        [g(W) for _ in range(n_b)] + [g(W, Dx), g(1, W), g(1), g(Wd, W + Dd), g(Wd), g(F, Wd), g(F)]

    def fn(output):
        def f(*t):
            x, d, c0, cs, w0x = t[:5]
            hw = t[5 : 5 + D - 1]
            hb = t[5 + D - 1 : 5 + D - 1 + n_b]
            swx, sw, sb, dw, db, ow, ob = t[5 + D - 1 + n_b :]
            w = FieldWeights(w0x=w0x, w0c=None, b0=None, hidden_w=tuple(hw), hidden_b=tuple(hb),
                             skip_wx=swx if skip is not None else None, skip_wc=None, skip_b=None, sigma_w=sw,
                             sigma_b=sb, dir_w=dw, dir_b=db, out_w=ow, out_b=ob, skip=skip)
            return field_mlp(x, d, c0, cs if skip is not None else None, w, output=output)
        return f

    for output in ("feature", "hidden"):
        used = inputs if skip is not None else [t for i, t in enumerate(inputs) if i not in (3, 5 + D - 1 + n_b)]
        if skip is None:
            def f_noskip(*t, _f=fn(output)):
                t = list(t)
                t.insert(3, None)
                t.insert(5 + D - 1 + n_b, None)
                return _f(*t)
            assert torch.autograd.gradcheck(f_noskip, used, eps=1e-6, atol=1e-5, fast_mode=True)
        else:
            assert torch.autograd.gradcheck(fn(output), used, eps=1e-6, atol=1e-5, fast_mode=True)


@needs_kernel
def test_opcheck():
    _opcheck("cpu", 0)
    _opcheck("cpu", 1)


def _opcheck(device, precision):
    m = make_mlp(B=2, P=20, Dx=5, Dd=3, Z=4, E=2, W=16, D=4, Wd=8, F=6, skip=2, device=device)
    w = FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=m["skip"])
    c0, cs = fold_conditioning(w, m["z"], m["beta"])
    leaf = lambda t: t.detach().contiguous().requires_grad_()  # noqa: E731
    for feature in (True, False):
        args = (leaf(m["x"]), leaf(m["d"]), leaf(c0), leaf(cs), leaf(w.w0x), [leaf(t) for t in w.hidden_w],
                [leaf(t) for t in w.hidden_b], leaf(w.skip_wx), leaf(w.sigma_w), leaf(w.sigma_b), leaf(w.dir_w),
                leaf(w.dir_b), leaf(w.out_w), leaf(w.out_b), 2, feature, precision, True)
        torch.library.opcheck(torch.ops.dgnerf.field_mlp_forward.default, args)


@needs_kernel
def test_saved_activations_match_inputs():
    # The forward's saved activations are what the backward reads: check the layout against the twin.
    m = make_mlp(B=1, P=10, W=16, D=3, Wd=8, F=4, skip=1)
    w = FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=m["skip"])
    c0, cs = fold_conditioning(w, m["z"], m["beta"])
    _, hdir_op = field_mlp(m["x"], m["d"], c0, cs, w, output="hidden")
    _, hdir_ref = run_twin(m, output="hidden")
    assert rel_err(hdir_op, hdir_ref) <= 1e-5


# --- errors ---------------------------------------------------------------------------------------


def _small():
    m = make_mlp(B=2, P=8, Dx=5, Dd=3, Z=4, E=2, W=16, D=4, Wd=8, F=6, skip=2)
    w = FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=m["skip"])
    c0, cs = fold_conditioning(w, m["z"], m["beta"])
    return m, w, c0, cs


def test_error_wrong_dtype():
    m, w, c0, cs = _small()
    with pytest.raises(ValueError, match="'x_enc'.*dtype"):
        field_mlp(m["x"].long(), m["d"], c0, cs, w)
    with pytest.raises(ValueError, match="'d_enc' expected dtype"):
        field_mlp(m["x"], m["d"].double(), c0, cs, w)
    with pytest.raises(ValueError, match="'x_enc' expected float32 or float64 on CPU"):
        field_mlp(m["x"].half(), m["d"].half(), c0.half(), cs.half(), w)


def test_error_wrong_shape():
    m, w, c0, cs = _small()
    with pytest.raises(ValueError, match=r"'d_enc' expected shape \[2, 8, \*\]"):
        field_mlp(m["x"], m["d"][:, :4], c0, cs, w)
    with pytest.raises(ValueError, match=r"'cond0' expected shape \[2, 16\]"):
        field_mlp(m["x"], m["d"], c0[:1], cs, w)
    with pytest.raises(ValueError, match="'cond_skip' is None"):
        field_mlp(m["x"], m["d"], c0, None, w)
    with pytest.raises(ValueError, match=r"'weights.w0x' expected shape"):
        field_mlp(m["x"][..., :4], m["d"], c0, cs, w)


def test_error_bad_options():
    m, w, c0, cs = _small()
    with pytest.raises(ValueError, match="'precision'"):
        field_mlp(m["x"], m["d"], c0, cs, w, precision="int8")
    with pytest.raises(ValueError, match="'precision' 'fp16' is not supported on CPU"):
        field_mlp(m["x"], m["d"], c0, cs, w, precision="fp16")
    with pytest.raises(ValueError, match="'output'"):
        field_mlp(m["x"], m["d"], c0, cs, w, output="rgb")
    with pytest.raises(ValueError, match="skip"):
        FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=7)


def test_error_device():
    m, w, c0, cs = _small()
    with pytest.raises(ValueError, match="'cond0' expected device cpu"):
        field_mlp(m["x"], m["d"], c0.to("meta"), cs, w)


def test_error_nan_names_argument():
    m, w, c0, cs = _small()
    x = m["x"].detach().clone()
    x[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="'x_enc' contains 1 NaN"):
        field_mlp(x, m["d"], c0, cs, w)


@needs_kernel
def test_error_in_kernel_checks():
    # The C++ checks name the argument too (for callers of torch.ops.dgnerf directly).
    m, w, c0, cs = _small()
    with pytest.raises(RuntimeError, match="'hidden_b' expected 2 biases .* got 0"):
        torch.ops.dgnerf.field_mlp_forward(m["x"], m["d"], c0, cs, w.w0x.contiguous(), list(w.hidden_w), [],
                                           w.skip_wx.contiguous(), w.sigma_w, w.sigma_b, w.dir_w, w.dir_b, w.out_w,
                                           w.out_b, 2, True, 0, False)


_DT = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --- CUDA -----------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("output", ["feature", "hidden"])
def test_cuda_fused_close_to_twin(precision, output):
    # P = 300: blocks straddle the image boundary and the last block is partial.
    m = make_mlp(B=2, P=300, device="cuda")
    compare(m, output, precision, 1e-2, 1e-2, torch_baseline=_DT[precision])


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_fused_paper_size(precision):
    m = make_mlp(B=2, P=1000, Z=512, E=46, W=256, D=8, Wd=128, F=512, skip=5, device="cuda")
    compare(m, "feature", precision, 1e-2, 1e-2, torch_baseline=_DT[precision])


@requires_cuda
def test_cuda_fused_odd_sizes_and_no_skip():
    m = make_mlp(B=3, P=37, Dx=5, Dd=3, Z=4, E=2, W=40, D=4, Wd=12, F=7, skip=None, device="cuda")
    compare(m, "feature", "bf16", 1e-2, 1e-2, torch_baseline=torch.bfloat16)
    m = make_mlp(B=1, P=129, Dx=63, Dd=27, W=96, D=3, Wd=16, F=33, skip=1, device="cuda")
    compare(m, "hidden", "fp16", 1e-2, 1e-2, torch_baseline=torch.float16)


@requires_cuda
def test_cuda_wide_layer():
    # W = 512 does not fit 128-row blocks in shared memory: the kernel switches to 64-row blocks.
    m = make_mlp(B=1, P=200, Z=8, E=4, W=512, D=3, Wd=64, F=32, skip=1, device="cuda")
    compare(m, "feature", "bf16", 1e-2, 1e-2, torch_baseline=torch.bfloat16)


@requires_cuda
def test_cuda_fp32_exact():
    m = make_mlp(B=2, P=300, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        compare(m, "feature", "fp32", 1e-5, 1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


@requires_cuda
@pytest.mark.parametrize("precision", [0, 1, 2])
def test_opcheck_cuda(precision):
    _opcheck("cuda", precision)


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_fused_matches_layerwise(precision, monkeypatch):
    # DGNERF_MLP_FUSED=0 runs the same precision layer by layer through cuBLAS: same function, other code.
    m = make_mlp(B=2, P=300, device="cuda")
    with torch.no_grad():
        s1, o1 = run_fused(m, precision=precision)
        monkeypatch.setenv("DGNERF_MLP_FUSED", "0")
        s2, o2 = run_fused(m, precision=precision)
    assert rel_err(o1, o2) <= 1e-2 and rel_err(s1, s2) <= 1e-2


@requires_cuda
def test_cuda_matches_cpu_bf16():
    m = make_mlp(B=1, P=256, device="cpu")
    s_cpu, o_cpu = run_fused(m, precision="bf16")
    mc = {k: ([t.detach().cuda() for t in v] if isinstance(v, list) else (v.detach().cuda() if torch.is_tensor(v) else v))
          for k, v in m.items()}
    s_gpu, o_gpu = run_fused(mc, precision="bf16")
    assert rel_err(o_gpu.cpu(), o_cpu) <= 1e-2 and rel_err(s_gpu.cpu(), s_cpu) <= 1e-2
    assert HAS_CUDA


@requires_cuda
def test_cuda_pack_cache_follows_weight_updates():
    # The packed weights are cached per weight tensors + version counters: an in-place update (what an
    # optimizer step does) must repack, and a fresh model at a reused address must not hit a stale entry.
    m = make_mlp(B=2, P=300, device="cuda")
    with torch.no_grad():
        s0, o0 = run_fused(m, precision="bf16")
        s0b, o0b = run_fused(m, precision="bf16")  # second call: from the cache, bit-identical
        assert torch.equal(s0, s0b) and torch.equal(o0, o0b)
        for t in (m["lw"][3], m["rest"][2], m["lb"][2], m["rest"][5]):
            t.mul_(1.5).add_(0.05)
            s1, o1 = run_fused(m, precision="bf16")
            sr, orf = run_twin(m, dtype=torch.float64)
            assert rel_err(o1, orf) <= 1e-2 and rel_err(s1, sr) <= 1e-2
            assert not torch.equal(o1, o0)
            o0 = o1
    for _ in range(6):  # more models than cache entries, each compared with its own twin
        mm = make_mlp(B=1, P=200, device="cuda")
        with torch.no_grad():
            s, o = run_fused(mm, precision="fp16")
            sr, orf = run_twin(mm, dtype=torch.float64)
        assert rel_err(o, orf) <= 1e-2 and rel_err(s, sr) <= 1e-2


@requires_cuda
def test_cuda_fused_in_cuda_graph():
    # Captured with a cold cache (packing inside the capture, not cached) and with a warm one.
    m = make_mlp(B=2, P=300, device="cuda")
    w = FieldWeights.from_unfolded(m["lw"], m["lb"], *m["rest"], dx=m["Dx"], skip=m["skip"])
    with torch.no_grad():
        cond0, cond_skip = fold_conditioning(w, m["z"], m["beta"])
        ref_s, ref_o = field_mlp(m["x"], m["d"], cond0, cond_skip, w, precision="bf16")
        for warm in (False, True):
            if not warm:
                m["lw"][1].add_(0.0)  # bumps the version: the capture packs again
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            g = torch.cuda.CUDAGraph()
            with torch.cuda.stream(s), torch.cuda.graph(g):
                gs, go = field_mlp(m["x"], m["d"], cond0, cond_skip, w, precision="bf16")
            torch.cuda.current_stream().wait_stream(s)
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(gs, ref_s) and torch.equal(go, ref_o)
            field_mlp(m["x"], m["d"], cond0, cond_skip, w, precision="bf16")  # fills the cache for the next round
