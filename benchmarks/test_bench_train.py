"""Training throughput (images/s): the fast path vs the reference path, same data, same model, one run."""
import time

import pytest
import torch

from benchmarks.harness import record
from dgnerf.apps.demo import DEMO_MODEL
from dgnerf.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("bench") / "set"
    build_synthetic_dataset(root, size="small", seed=0, persons=4, frames_per_person=8, test_persons=1)
    return str(root)


def _img_per_s(data, out, path, device, model, batch, steps):
    cfg = TrainConfig(data=data, out=out, model=dict(model), path=path, batch_size=batch, steps=steps + 2,
                      lambda_perceptual=0.0, progress=False, tensorboard=False, device=str(device),
                      checkpoint_every=10**9, sample_every=10**9)
    t = Trainer(cfg)
    for s in range(2):  # warm-up
        t.train_step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(2, steps + 2):
        t.train_step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0), t.precision


# The paper's field at full size (32x32 rays x 64 samples, 8x256 MLP, 512 features) with the renderer
# cut to one 2x block so the built-in 64 px set can feed it: the field dominates a training step.
PAPER_FIELD = dict(feature_size=32, image_size=64, renderer_channels=(256,))


@pytest.mark.parametrize("config", ["demo", "paper-field"])
def test_bench_train_throughput(device, small_set, tmp_path, config):
    if config == "paper-field" and device.type != "cuda":
        pytest.skip("paper-size training step: GPU only (minutes per step group on this CPU)")
    model = DEMO_MODEL if config == "demo" else PAPER_FIELD
    batch, steps = (8, 3) if device.type == "cpu" else ((8, 20) if config == "demo" else (4, 10))
    ref, _ = _img_per_s(small_set, str(tmp_path / "r"), "reference", device, model, batch, steps)
    # the fast path trains in bf16 on CUDA and on CPUs with bf16 matrix units (TrainConfig.amp); the record says which
    fast, precision = _img_per_s(small_set, str(tmp_path / "f"), "fast", device, model, batch, steps)
    from dgnerf.model import HeadConfig

    c = HeadConfig(**model)
    shape = {"config": config, "batch": batch, "image": c.image_size, "feature": c.feature_size,
             "samples": c.n_samples, "mlp": f"{c.mlp_depth}x{c.mlp_width}"}
    # record in ms per image so that speedup = reference / fast as for every other record
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    record("train step (per image)", device, dtype, shape, 1e3 / ref, 1e3 / fast,
           reference_img_s=round(ref, 2), fast_img_s=round(fast, 2))
