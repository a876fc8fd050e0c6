"""Field MLP benchmark: the fused op (dgnerf.ops.field_mlp) vs the plain PyTorch MLP on the unfolded input (the
model's FieldMLP, as the reference path runs it), same run, paper size: 65,536 points (32x32 rays x 64
samples), 8 x 256 trunk, skip at 5, 128 -> 512 head.

CPU: fp32 and bf16 modes against the float32 twin (forward; forward + backward).
CUDA: bf16 / fp16 fused kernel against the twin in the same dtype, with the achieved TFLOP/s of the folded
MLP and the card's bf16 matrix rate measured in the same run (torch.mm 8192^3) as extra fields.
"""
import pytest
import torch

from benchmarks.harness import record, time_ms
from dgnerf.model import FieldMLP, HeadConfig
from dgnerf.ops import _common
from dgnerf.ops.mlp import FieldWeights, field_mlp, fold_conditioning

N_POINTS = 65536
CFG = dict(Dx=63, Dd=27, Z=512, E=46, W=256, D=8, Wd=128, F=512, skip=5)
HAS_KERNEL = hasattr(torch.ops.dgnerf, "field_mlp_forward")


def folded_flops(c, n):
    """Multiply-adds x 2 per point of the folded MLP (what the op computes)."""
    W = c["W"]
    macs = c["Dx"] * W + (c["D"] - 1) * W * W + c["Dx"] * W + W + (W + c["Dd"]) * c["Wd"] + c["Wd"] * c["F"]
    return 2 * macs * n


def unfolded_flops(c, n):
    W, u = c["W"], c["Dx"] + c["Z"] + c["E"]
    macs = u * W + (c["D"] - 2) * W * W + (u + W) * W + W + (W + c["Dd"]) * c["Wd"] + c["Wd"] * c["F"]
    return 2 * macs * n


def build(device, dtype=torch.float32, B=1, n=N_POINTS):
    c = CFG
    torch.manual_seed(0)  # the same weights and inputs every run (errors comparable across runs)
    P = n // B
    u = c["Dx"] + c["Z"] + c["E"]
    ins = [u] + [c["W"]] * (c["D"] - 1)
    ins[c["skip"]] += u
    g = lambda *s, scale=1.0: (torch.randn(*s, device=device, dtype=dtype) * scale)  # noqa: E731
    lw = [g(c["W"], i, scale=i**-0.5) for i in ins]
    lb = [g(c["W"], scale=0.1) for _ in ins]
    rest = [g(1, c["W"], scale=c["W"] ** -0.5), g(1, scale=0.1), g(c["Wd"], c["W"] + c["Dd"], scale=(c["W"] + c["Dd"]) ** -0.5),
            g(c["Wd"], scale=0.1), g(c["F"], c["Wd"], scale=c["Wd"] ** -0.5), g(c["F"], scale=0.1)]
    x, d, z, beta = g(B, P, c["Dx"]), g(B, P, c["Dd"]), g(B, c["Z"]), g(B, c["E"])
    return x, d, z, beta, lw, lb, rest


def folded(lw, lb, rest, z, beta):
    """(FieldWeights, cond0, cond_skip) of build()'s unfolded parameters: what dgnerf.ops.field_mlp takes."""
    w = FieldWeights.from_unfolded(lw, lb, *rest, dx=CFG["Dx"], skip=CFG["skip"])
    return (w, *fold_conditioning(w, z, beta))


_PLAIN = FieldMLP(HeadConfig())  # the paper's layout: CFG's sizes


def plain(x, d, z, beta, lw, lb, rest):
    """The paper's MLP on the unfolded input u = [gamma(x), z, beta] with build()'s parameters: the model's
    FieldMLP.forward run with them (torch.func.functional_call), i.e. what HeadModel's reference path computes."""
    B, P, _ = x.shape
    u = torch.cat([x, torch.cat([z, beta], dim=-1)[:, None, :].expand(B, P, -1)], dim=-1)
    params = {f"trunk.{i}.weight": w for i, w in enumerate(lw)} | {f"trunk.{i}.bias": b for i, b in enumerate(lb)}
    names = ("sigma.weight", "sigma.bias", "dir_layer.weight", "dir_layer.bias", "out.weight", "out.bias")
    params |= dict(zip(names, rest))
    return torch.func.functional_call(_PLAIN, params, (u, d))


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.skipif(not HAS_KERNEL, reason="dgnerf._C without field_mlp")
def test_bench_field_mlp_cpu():
    c = CFG
    x, d, z, beta, lw, lb, rest = build("cpu")
    with _common.checks(False):
        with torch.no_grad():
            w, cond0, cond_skip = folded(lw, lb, rest, z, beta)
            twin = lambda: plain(x, d, z, beta, lw, lb, rest)  # noqa: E731
            fused = {p: (lambda p=p: field_mlp(x, d, cond0, cond_skip, w, precision=p)) for p in ("fp32", "bf16")}
            s_ref, f_ref = twin()
            # Interleaved: twin, fp32, bf16, repeated; each median over its repeats (a loaded 2-core machine).
            ref_ms = time_ms(twin, "cpu", warmup=1, iters=3)
            ms = {p: time_ms(fn, "cpu", warmup=1, iters=3) for p, fn in fused.items()}
            ref_ms = min(ref_ms, time_ms(twin, "cpu", warmup=0, iters=3))
            shape = {"points": N_POINTS, **c}
            # Context for the bf16 errors: plain PyTorch (the twin) in bf16 on the same function.
            lo = lambda t: t.bfloat16()  # noqa: E731
            s_tb, f_tb = plain(lo(x), lo(d), lo(z), lo(beta), [lo(t) for t in lw], [lo(t) for t in lb],
                               [lo(t) for t in rest])
            for p, fn in fused.items():
                s, f = fn()
                more = {} if p == "fp32" else dict(rel_err_feature_torch_bf16=round(rel(f_tb, f_ref), 7),
                                                   rel_err_sigma_torch_bf16=round(rel(s_tb, s_ref), 7))
                record("field_mlp fwd", "cpu", torch.float32 if p == "fp32" else torch.bfloat16, shape, ref_ms, ms[p],
                       rel_err_feature=round(rel(f, f_ref), 7), rel_err_sigma=round(rel(s, s_ref), 7),
                       gflops_fused=round(folded_flops(c, N_POINTS) / ms[p] / 1e6, 1),
                       gflops_twin=round(unfolded_flops(c, N_POINTS) / ref_ms / 1e6, 1), mode=p, **more)


@pytest.mark.skipif(not HAS_KERNEL, reason="dgnerf._C without field_mlp")
def test_bench_field_mlp_cpu_train():
    """Forward + backward to every parameter (training), 16,384 points to keep the run short."""
    c = CFG
    n = 16384
    x, d, z, beta, lw, lb, rest = build("cpu", n=n)
    params = [x, d, z, beta, *lw, *lb, *rest]
    for p in params:
        p.requires_grad_()

    def twin():
        s, f = plain(x, d, z, beta, lw, lb, rest)
        return torch.autograd.grad(s.sum() + f.sum(), params)

    def fused(prec):
        w, cond0, cond_skip = folded(lw, lb, rest, z, beta)
        s, f = field_mlp(x, d, cond0, cond_skip, w, precision=prec)
        return torch.autograd.grad(s.sum() + f.sum(), params)

    with _common.checks(False):
        g_ref = twin()
        ref_ms = time_ms(twin, "cpu", warmup=1, iters=3)
        for prec in ("fp32", "bf16"):
            fast_ms = time_ms(lambda: fused(prec), "cpu", warmup=1, iters=3)
            g = fused(prec)
            worst = max(rel(a, b) for a, b in zip(g, g_ref))
            record("field_mlp fwd+bwd", "cpu", torch.float32 if prec == "fp32" else torch.bfloat16,
                   {"points": n, **c}, ref_ms, fast_ms, max_rel_err_grad=round(worst, 6), mode=prec)


def _cuda_mm_tflops(dtype):
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    ms = time_ms(lambda: torch.mm(a, b), "cuda", warmup=3, iters=10)
    return 2 * 8192**3 / ms / 1e9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_bench_field_mlp_cuda(prec):
    c = CFG
    dtype = torch.bfloat16 if prec == "bf16" else torch.float16
    x, d, z, beta, lw, lb, rest = build("cuda")
    with _common.checks(False):
        with torch.no_grad():
            w, cond0, cond_skip = folded(lw, lb, rest, z, beta)
            s64, f64 = plain(x.double(), d.double(), z.double(), beta.double(), [t.double() for t in lw],
                             [t.double() for t in lb], [t.double() for t in rest])
            lo = lambda t: t.to(dtype)  # noqa: E731
            twin = lambda: plain(lo(x), lo(d), lo(z), lo(beta), [lo(t) for t in lw], [lo(t) for t in lb],  # noqa: E731
                                 [lo(t) for t in rest])
            fused = lambda: field_mlp(x, d, cond0, cond_skip, w, precision=prec)  # noqa: E731
            ref_ms = time_ms(twin, "cuda", warmup=3, iters=20)
            fast_ms = time_ms(fused, "cuda", warmup=3, iters=20)
            s, f = fused()
            import os

            os.environ["DGNERF_MLP_FUSED"] = "0"  # the same precision layer by layer through cuBLAS
            try:
                layerwise_ms = time_ms(fused, "cuda", warmup=3, iters=20)
            finally:
                os.environ.pop("DGNERF_MLP_FUSED", None)
            mm_tflops = _cuda_mm_tflops(dtype)
            tflops = folded_flops(c, N_POINTS) / fast_ms / 1e9
            extra = dict(rel_err_feature=round(rel(f, f64), 6), rel_err_sigma=round(rel(s, s64), 6),
                         tflops=round(tflops, 1), mm_tflops=round(mm_tflops, 1),
                         fraction_of_mm=round(tflops / mm_tflops, 3), layerwise_cublas_ms=round(layerwise_ms, 4),
                         mode=prec)
            try:  # tiny-cuda-nn as a peer where it imports (not installable here)
                import tinycudann  # noqa: F401

                extra["tinycudann"] = "importable (peer benchmark not wired: its width stops at 128)"
            except ImportError:
                pass
            record("field_mlp fwd", "cuda", dtype, {"points": N_POINTS, **c}, ref_ms, fast_ms, **extra)
