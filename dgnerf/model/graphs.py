"""A whole frame of the fast path captured in a CUDA graph (fixed batch size and options).

    frame = graphed_frame(model, batch=1, options=RenderOptions(precision="bf16"))
    out = frame(identity, expression, c2w)      # a Render whose tensors are static buffers

The returned tensors are overwritten by the next call (clone them to keep). Input checks run on the host
before each replay unless check=False (one host sync: the NaN scan).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from dgnerf import ops
from dgnerf.model.head import HeadModel, Render, RenderOptions


def graphed_frame(model: HeadModel, batch: int = 1, options: RenderOptions | None = None,
                  warmup: int = 3) -> Callable[..., Render]:
    """Capture one dense fast-path frame (no grad) of `model` for `batch` images -> replay function."""
    opt = options if options is not None else RenderOptions(precision="bf16")
    dev = model.background.device
    if dev.type != "cuda":
        raise ValueError(f"graphed_frame: CUDA graphs need the model on a CUDA device, it is on {dev}")
    if opt.path != "fast" or opt.ert_threshold > 0 or opt.skip_stride > 0 or opt.timed:
        raise ValueError("graphed_frame: only the dense fast path has fixed shapes (path='fast', no ert/skip/timed)")
    cfg = model.cfg
    static = {
        "identity": torch.randn(batch, cfg.identity_dim, device=dev),
        "expression": torch.zeros(batch, cfg.expression_dim, device=dev),
        "c2w": torch.eye(4, device=dev).expand(batch, 4, 4).contiguous(),
        "intrinsics": model.default_intrinsics(batch, device=dev),
    }
    static["c2w"][:, 2, 3] = -cfg.camera_distance
    with ops.checks(False):
        def run():
            return model(static["identity"], static["expression"], static["c2w"], static["intrinsics"], options=opt)

        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            outputs = run()

    def replay(identity, expression, c2w, intrinsics=None, check: bool = True) -> Render:
        if intrinsics is None:
            intrinsics = static["intrinsics"]
        if check:
            model.check_inputs(identity, expression, c2w, intrinsics)
        if identity.shape[0] != batch:
            raise ValueError(f"graphed frame: captured for batch {batch}, got identity of batch {identity.shape[0]}")
        static["identity"].copy_(identity)
        static["expression"].copy_(expression)
        if c2w.shape[1] == 3:
            static["c2w"][:, :3].copy_(c2w)
        else:
            static["c2w"].copy_(c2w)
        static["intrinsics"].copy_(intrinsics)
        graph.replay()
        return outputs

    replay.graph = graph
    return replay


__all__ = ["graphed_frame"]
