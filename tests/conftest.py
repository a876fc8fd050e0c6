import os
import zlib

import pytest
import torch

from dgnerf.model.config import PRESETS

# Training on a CPU with bf16 matrix units runs in bf16 by default (dgnerf.threads.cpu_bf16_fast); the suite trains in
# float32 on every machine so that its results do not depend on the CPU it runs on. Tests of CPU bf16 training set
# DGNERF_CPU_BF16=1 themselves (tests/test_train.py). Subprocesses (the CLI tests) inherit it.
os.environ.setdefault("DGNERF_CPU_BF16", "0")

HAS_CUDA = torch.cuda.is_available()
_skip_without_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def requires_cuda(fn):
    """Mark a test as a CUDA test (`pytest -m cuda` selects them on a GPU machine) that skips cleanly without one."""
    return pytest.mark.cuda(_skip_without_cuda(fn))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN never passes."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (the fuzz campaign's long run, the 20-kill training run) run only when asked for:
    `pytest -m long` (or any -m expression naming it) or DGNERF_LONG=1; the normal suite runs their quick slices."""
    if "long" in (config.getoption("-m") or "") or os.environ.get("DGNERF_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long run: select it with `pytest -m long` (or DGNERF_LONG=1), see scripts/fuzz.sh")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test (never zeros), but reproducible from the test's name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


# A small model with the paper's structure, and the tiny built-in set (4 people x 3 frames at 32 px),
# shared by the trainer and application tests.
TINY_MODEL = dict(PRESETS["tiny"], renderer_channels=list(PRESETS["tiny"]["renderer_channels"]))


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic_dataset(root, size="tiny", seed=3)
    return str(root)


def tiny_train_config(data, out, **kw):
    """A TrainConfig of the tiny model for a few deterministic steps (tests of the trainer)."""
    from dgnerf.train import TrainConfig

    base = dict(data=data, out=str(out), model=dict(TINY_MODEL), batch_size=2, steps=8, lr=1e-3, lr_final=1e-4,
                lambda_perceptual=0.0, checkpoint_every=4, sample_every=1000, log_every=1, deterministic=True,
                progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)
