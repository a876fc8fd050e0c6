"""GPU variant probe: times every candidate the CUDA dispatch chooses between, eager and replayed from a
CUDA graph (the graph removes the host launch cost, so it shows the GPU time), in one process:

- field MLP, paper size, 65,536 points (one frame) and 2,097,152 (32 frames): the fused kernel, the same
  precision layer by layer through cuBLAS (DGNERF_MLP_FUSED=0), the fused kernel without the packed-weight
  cache (DGNERF_MLP_PACK_CACHE=0), and plain PyTorch (the twin) in the same dtype; achieved TFLOP/s;
- the neural renderer in bf16 at batch 1 and 32: phase form vs upsample form, NCHW vs NHWC;
- whole frames (HeadModel fast path, bf16) for each renderer form, graphed and eager.

Usage (on the GPU machine; benchmarks/device_check.sh runs it): python -m benchmarks.gpu_probe OUT.json
"""
from __future__ import annotations

import json
import os
import sys

import torch

from benchmarks.harness import device_name, time_ms
from benchmarks.test_bench_mlp import CFG, build, folded, folded_flops, plain
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from dgnerf.model.graphs import graphed_frame
from dgnerf.ops import _common
from dgnerf.ops.mlp import field_mlp

ROWS: list[dict] = []


def graph_ms(fn, iters: int = 20) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return time_ms(g.replay, "cuda", warmup=3, iters=iters)


class env:
    def __init__(self, **kv):
        self.kv = kv

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.kv}
        os.environ.update(self.kv)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def row(group, name, shape, eager_ms, graph_ms_, **extra):
    r = dict(group=group, name=name, shape=shape, eager_ms=round(eager_ms, 4),
             graph_ms=None if graph_ms_ is None else round(graph_ms_, 4), **extra)
    ROWS.append(r)
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    g = "-" if graph_ms_ is None else f"{graph_ms_:8.3f}"
    print(f"{group:8s} {name:34s} {shape:22s} eager {eager_ms:8.3f} ms  graph {g} ms  {more}", flush=True)


def probe_mlp():
    for n in (65536, 2097152):
        B = n // 65536
        x, d, z, beta, lw, lb, rest = build("cuda", B=B, n=n)
        w, cond0, cond_skip = folded(lw, lb, rest, z, beta)
        flops = folded_flops(CFG, n)
        for prec, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            lo = lambda t: t.to(dt)  # noqa: E731
            xl, dl, zl, bl = lo(x), lo(d), lo(z), lo(beta)
            lwl, lbl, rl = [lo(t) for t in lw], [lo(t) for t in lb], [lo(t) for t in rest]
            variants = {
                "fused": ({}, lambda: field_mlp(x, d, cond0, cond_skip, w, precision=prec)),
                "fused, no pack cache": ({"DGNERF_MLP_PACK_CACHE": "0"},
                                         lambda: field_mlp(x, d, cond0, cond_skip, w, precision=prec)),
                "layer-by-layer cuBLAS": ({"DGNERF_MLP_FUSED": "0"},
                                          lambda: field_mlp(x, d, cond0, cond_skip, w, precision=prec)),
                "plain PyTorch (unfolded)": ({}, lambda: plain(xl, dl, zl, bl, lwl, lbl, rl)),
            }
            for name, (kv, fn) in variants.items():
                if prec == "fp16" and name != "fused":
                    continue
                with env(**kv):
                    e = time_ms(fn, "cuda", warmup=3, iters=20)
                    gm = graph_ms(fn)
                row("mlp", f"{name} {prec}", f"points={n}", e, gm,
                    tflops_graph=round(flops / gm / 1e9, 1), tflops_eager=round(flops / e / 1e9, 1))


def probe_renderer():
    torch.manual_seed(0)
    r = HeadModel(HeadConfig()).renderer.cuda().eval()
    for B in (1, 32):
        x = torch.randn(B, 512, 32, 32, device="cuda")
        for form in ("phase", "upsample"):
            for nhwc in (False, True):
                fn = lambda: r(x, torch.bfloat16, channels_last=nhwc, fast=form == "phase")  # noqa: E731
                row("renderer", f"{form}{' nhwc' if nhwc else ''} bf16", f"B={B}", time_ms(fn, "cuda", 3, 20),
                    graph_ms(fn))


def probe_frame():
    torch.manual_seed(0)
    model = HeadModel(HeadConfig()).cuda().eval()
    cfg = model.cfg
    for B in (1, 32):
        z = torch.randn(B, cfg.identity_dim, device="cuda")
        beta = 0.5 * torch.randn(B, cfg.expression_dim, device="cuda")
        c2w = torch.eye(4, device="cuda").expand(B, 4, 4).contiguous()
        c2w[:, 2, 3] = -cfg.camera_distance
        for form, mlp in ((("auto", False), "fused"), (("phase", False), "fused"), (("upsample", False), "fused"),
                          (("auto", False), "cuBLAS")):
            opt = RenderOptions(precision="bf16", renderer_form=form[0], channels_last=form[1])
            with env(DGNERF_MLP_FUSED="0" if mlp == "cuBLAS" else "1"):
                replay = graphed_frame(model, batch=B, options=opt)
                gm = time_ms(lambda: replay(z, beta, c2w, check=False), "cuda", warmup=3, iters=20)
                e = time_ms(lambda: model(z, beta, c2w, options=opt), "cuda", warmup=2, iters=10)
            row("frame", f"bf16 renderer {form[0]} mlp {mlp}", f"B={B},256x256", e, gm,
                fps_graph=round(B * 1000 / gm, 1), fps_eager=round(B * 1000 / e, 1))
            del replay


def main(out_path: str):
    _common.set_checks(False)
    print(f"device: {device_name('cuda')}, torch {torch.__version__}", flush=True)
    with torch.no_grad():
        for fn in (probe_mlp, probe_renderer, probe_frame):
            try:
                fn()
            except Exception as exc:  # keep what was measured; report the failure
                print(f"{fn.__name__} FAILED: {type(exc).__name__}: {exc}", flush=True)
                ROWS.append(dict(group=fn.__name__, error=f"{type(exc).__name__}: {exc}"))
            with open(out_path, "w") as f:
                json.dump(dict(device=device_name("cuda"), torch=torch.__version__, rows=ROWS), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "probe.json")
