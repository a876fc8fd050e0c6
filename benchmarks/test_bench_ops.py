"""Fused ops vs their pure-PyTorch twins, timed in one run (default sizes: R=1024 rays, S=64, C=512)."""
import pytest
import torch

import dgnerf
from benchmarks.harness import record, time_ms
from dgnerf import _ext
from dgnerf.ops import reference as ref

R, S, C = 1024, 64, 512


def _need_kernel(op, device):
    if not _ext.has_kernel(op, device.type):
        pytest.skip(f"no compiled {device.type} kernel for {op}: {_ext.load_error or 'rebuild with nvcc'}")


def _integrate_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(R, S, generator=g) * 2
    feats = torch.randn(R, S, C, generator=g)
    depths = 2 + torch.rand(R, S, generator=g).sort(-1).values * 2
    deltas = torch.rand(R, S, generator=g) * 0.05 + 0.01
    bg = torch.randn(C, generator=g)
    return [t.to(device, dtype).requires_grad_(True) for t in (sigma, feats, depths, deltas, bg)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bench_integrate(device, dtype):
    _need_kernel("integrate_features", device)
    if device.type == "cpu" and dtype != torch.float32:
        pytest.skip("CPU integration kernels are float32/float64")
    dgnerf.ops.set_checks(False)  # time the kernels, not the NaN scans
    try:
        inputs = _integrate_inputs(device, dtype)
        g = [torch.randn(R, C, device=device, dtype=dtype), torch.randn(R, device=device, dtype=dtype), torch.randn(R, device=device, dtype=dtype)]

        def fwd(fn):
            with torch.no_grad():
                fn(*inputs)

        def fwd_bwd(fn):
            for t in inputs:
                t.grad = None
            out = fn(*inputs)
            torch.autograd.backward(out, g)

        iters = 5 if device.type == "cpu" else 50
        for name, body in (("integrate_features fwd", fwd), ("integrate_features fwd+bwd", fwd_bwd)):
            ref_ms = time_ms(lambda: body(ref.integrate_features_reference), device, iters=iters)
            fast_ms = time_ms(lambda: body(dgnerf.ops.integrate_features), device, iters=iters)
            record(name, device, dtype, {"R": R, "S": S, "C": C}, ref_ms, fast_ms)
    finally:
        dgnerf.ops.set_checks(True)


def test_bench_sample_rays(device):
    _need_kernel("sample_rays", device)
    dgnerf.ops.set_checks(False)
    try:
        B = 1
        c2w = torch.eye(4)[None, :3].repeat(B, 1, 1).contiguous()
        c2w[:, 2, 3] = -4.0
        K = torch.tensor([[40.0, 40.0, 16.0, 16.0]]).repeat(B, 1)
        c2w, K = c2w.to(device), K.to(device)
        args = (32, 32, 64, 3.0, 5.0, True, 1, 1.5)
        iters = 10 if device.type == "cpu" else 100
        ref_ms = time_ms(lambda: ref.sample_rays_reference(c2w, K, *args), device, iters=iters)
        fast_ms = time_ms(lambda: dgnerf.ops.sample_rays(c2w, K, *args), device, iters=iters)
        record("sample_rays (stratified, sphere)", device, torch.float32, {"B": B, "H": 32, "W": 32, "S": 64}, ref_ms, fast_ms)
    finally:
        dgnerf.ops.set_checks(True)
