"""The CPU fast path on a busy machine: quiet and busy ratios side by side, measured in one run.

"Busy" = two other 2-thread torch processes doing small matrix products and elementwise work in a loop
(benchmarks/contention.py), started and stopped by the benchmark; the reference and the fast path are measured
under the same load, interleaved. Each record has the quiet and the busy ratio (reference / fast), the wall and
process CPU milliseconds of both paths in both states, and the fast path's CPU-time growth (busy CPU ms / quiet
CPU ms: how much of the busy time is spent spinning or waiting rather than working).

Cases: the 256x256 frame (paper config, head-prior weights) in bf16 and bf16 + skipping (b1); a training step
of the demo config; an iteration of `dgnerf fit` (one image, the demo's model). docs/performance.md has the
numbers and what they showed.

Run: pytest benchmarks/test_bench_contended.py -s   (CPU only, ~4 min on 2 cores)
"""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks.contention import CompetingLoad
from benchmarks.harness import record
from benchmarks.test_bench_frame import _inputs, _model, interleaved_ms
from dgnerf.apps.demo import DEMO_MODEL
from dgnerf.apps.fit import FitConfig, fit_person, targets_from_dataset
from dgnerf.model import RenderOptions
from dgnerf.model.checkpoint import load_checkpoint
from dgnerf.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif("cpu" not in os.environ.get("DGNERF_BENCH_DEVICES", "cpu,cuda").split(","),
                                reason="CPU benchmarks deselected by DGNERF_BENCH_DEVICES")
CPU = torch.device("cpu")
LOAD = dict(jobs=2, threads=2)


def _quiet_and_busy(fns, iters: int, warmup: int = 1):
    """(wall, cpu) medians of each fn, first quiet, then under the competing load."""
    quiet = interleaved_ms(fns, CPU, iters=iters, warmup=warmup)
    with CompetingLoad(**LOAD) as load:
        busy = interleaved_ms(fns, CPU, iters=iters, warmup=warmup)
        assert load.running == LOAD["jobs"], "a competing job ended early: the busy numbers would be quiet ones"
    return quiet, busy


def _record(name, dtype, shape, quiet, busy, i, **extra):
    """Record candidate i (0 = reference) against the reference, busy as the headline."""
    (qw, qc), (bw, bc) = quiet, busy
    rec = record(f"{name} busy (2 x 2-thread torch jobs)", CPU, dtype, shape, bw[0], bw[i],
                 quiet_reference_ms=round(qw[0], 2), quiet_fast_ms=round(qw[i], 2), quiet_speedup=round(qw[0] / qw[i], 3),
                 busy_speedup=round(bw[0] / bw[i], 3), fast_cpu_ms_quiet=round(qc[i], 1), fast_cpu_ms_busy=round(bc[i], 1),
                 reference_cpu_ms_quiet=round(qc[0], 1), reference_cpu_ms_busy=round(bc[0], 1),
                 fast_cpu_growth=round(bc[i] / qc[i], 3), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset)"),
                 load="2 competing processes x 2 threads (small GEMMs + elementwise)", **extra)
    print(f"{rec['name']}: quiet {rec['quiet_speedup']}x, busy {rec['busy_speedup']}x; fast CPU ms {rec['fast_cpu_ms_quiet']}"
          f" -> {rec['fast_cpu_ms_busy']} ({rec['fast_cpu_growth']}x)")
    return rec


def test_frame_contended():
    model = _model("head-prior", CPU)
    cfg = model.cfg
    args = _inputs(cfg, 1, CPU)
    variants = [("reference", dict(path="reference")), ("fast bf16", dict(precision="bf16")),
                ("fast bf16+skip4+ert1e-3", dict(precision="bf16", skip_stride=4, ert_threshold=1e-3))]
    fns = [lambda kw=kw: model(*args, options=RenderOptions(**kw)) for _, kw in variants]
    shape = {"B": 1, "image": cfg.image_size, "feature": cfg.feature_size, "S": cfg.n_samples, "scene": "head-prior"}
    with torch.no_grad():
        for fn in fns:
            fn()
        quiet, busy = _quiet_and_busy(fns, iters=3)
    for i, (name, kw) in enumerate(variants[1:], start=1):
        _record(f"frame {name} b1", torch.bfloat16, shape, quiet, busy, i, flags=kw)


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("contended") / "set"
    build_synthetic_dataset(root, size="small", seed=0, persons=4, frames_per_person=8, test_persons=1, progress=False)
    return str(root)


def test_train_step_contended(demo_set, tmp_path):
    batch = 8
    trainers = []
    for path in ("reference", "fast"):
        cfg = TrainConfig(data=demo_set, out=str(tmp_path / path), model=dict(DEMO_MODEL), path=path, batch_size=batch,
                          steps=10**6, lambda_perceptual=0.0, progress=False, tensorboard=False,
                          checkpoint_every=10**9, sample_every=10**9, log_every=10**9)
        trainers.append(Trainer(cfg))
    step = [0]

    def one(tr):
        def fn():
            step[0] += 1
            tr.train_step(step[0])
        return fn

    fns = [one(t) for t in trainers]
    quiet, busy = _quiet_and_busy(fns, iters=5, warmup=2)
    c = trainers[1].model_cfg
    shape = {"config": "demo", "batch": batch, "image": c.image_size, "feature": c.feature_size, "samples": c.n_samples}
    # the fast trainer runs bf16 on a CPU with bf16 matrix units (TrainConfig.amp): the record says which
    _record("train step (demo config)", torch.bfloat16 if trainers[1].precision == "bf16" else torch.float32, shape,
            quiet, busy, 1)


def test_fit_iteration_contended(demo_set, tmp_path):
    # a demo-config checkpoint (untrained weights: the cost of an iteration does not depend on them)
    cfg = TrainConfig(data=demo_set, out=str(tmp_path / "run"), model=dict(DEMO_MODEL), batch_size=2, steps=1,
                      lambda_perceptual=0.0, progress=False, tensorboard=False)
    tr = Trainer(cfg)
    path = tr.save(0)
    model = load_checkpoint(os.path.join(path, "model.safetensors"))
    target = targets_from_dataset(demo_set, model.cfg, split="test", max_frames=1)[0]
    iters = 5

    def fit(p):
        return lambda: fit_person(model, target, FitConfig(iters=iters, batch=1, path=p), progress=False)

    fns = [fit("reference"), fit("fast")]
    quiet, busy = _quiet_and_busy(fns, iters=3)
    # per iteration
    scale = lambda q: ([v / iters for v in q[0]], [v / iters for v in q[1]])  # noqa: E731
    c = model.cfg
    shape = {"config": "demo", "frames": 1, "image": c.image_size, "feature": c.feature_size, "samples": c.n_samples}
    _record("fit iteration (one image, demo config)", torch.float32, shape, scale(quiet), scale(busy), 1)
