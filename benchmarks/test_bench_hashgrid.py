"""Hash-grid encoding vs its pure-PyTorch twin, timed in one run: 65,536 points x 16 levels, T = 2^19
rows of F = 2 float32 features, resolutions 16..2048 in the box [-1, 1]^3 (the Instant-NGP defaults).
Records go to benchmarks/results/local/ (untracked); docs/hashgrid.md quotes the measured ratios."""
import pytest
import torch

import dgnerf
from benchmarks.harness import record, time_ms
from dgnerf import _ext
from dgnerf.ops import reference as ref

N, L, T, F, BASE, FINEST = 65536, 16, 2**19, 2, 16, 2048
SHAPE = {"N": N, "L": L, "T": T, "F": F, "base": BASE, "finest": FINEST}


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_bench_hash_encode(device, out_dtype):
    if not _ext.has_kernel("hash_encode", device.type):
        pytest.skip(f"no compiled {device.type} kernel for hash_encode: {_ext.load_error or 'rebuild with nvcc'}")
    if device.type == "cpu" and out_dtype != torch.float32:
        pytest.skip("the CPU benchmark times float32 output (bfloat16 output costs the same sum)")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, 3, generator=g) * 2 - 1).to(device)
    table = dgnerf.ops.init_hash_table(L, T, F, generator=g).to(device).requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(N, L * F, generator=g).to(device, out_dtype)
    ref_dtype = None if out_dtype == torch.float32 else out_dtype

    def fast(pts, x_grad=False):
        return dgnerf.ops.hash_encode(pts, table, base_resolution=BASE, finest_resolution=FINEST, x_grad=x_grad,
                                      out_dtype=ref_dtype)

    def slow(pts, x_grad=False):
        return ref.hash_encode_reference(pts, table, BASE, FINEST, out_dtype=ref_dtype)

    def fwd(fn):
        with torch.no_grad():
            fn(x)

    def fwd_bwd(fn):
        table.grad = None
        fn(x).backward(grad)

    def fwd_bwd_x(fn):
        table.grad = xg.grad = None
        fn(xg, x_grad=True).backward(grad)

    cpu = device.type == "cpu"
    dgnerf.ops.set_checks(False)  # time the kernels, not the NaN scans
    try:
        for name, body in (("hash_encode fwd", fwd), ("hash_encode fwd+bwd", fwd_bwd),
                           ("hash_encode fwd+bwd (table and x)", fwd_bwd_x)):
            # The twin takes seconds per call on the CPU: fewer of its repetitions. The kernels get more
            # warm-up: the first few 64 MB gradients wait for the OS to assemble huge pages.
            ref_ms = time_ms(lambda b=body: b(slow), device, warmup=1 if cpu else 3, iters=3 if cpu else 20)
            fast_ms = time_ms(lambda b=body: b(fast), device, warmup=5 if cpu else 10, iters=15 if cpu else 100)
            record(name, device, out_dtype, SHAPE, ref_ms, fast_ms)
    finally:
        dgnerf.ops.set_checks(True)
