"""Golden values: behaviour that a refactor must not change, checked bit for bit on the CPU.

A fixed pipeline with fixed seeds: the tiny built-in set, 5 deterministic training steps of the tiny model,
renders of the resulting checkpoint through both model paths and through `dgnerf render`, and 5 fitting
iterations of the held-out person (`dgnerf fit`). Every float the pipeline produces is compared with
tests/golden/golden.safetensors.

Bit-for-bit comparison needs the same arithmetic: the same CPU instruction set (MKL and oneDNN pick their
kernels by ISA and CPU vendor) and the same thread count (ATen's own reductions may split by thread). The test pins
2 threads; on a machine whose ISA or CPU vendor differs from the one the values were recorded on, it compares
within float32 rounding instead and says so.

Regenerate (only for a deliberate change of behaviour, never to make a refactor pass):
    DGNERF_GOLDEN_WRITE=1 python -m pytest tests/test_golden.py
"""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dgnerf.cli import main
from tests.conftest import TINY_MODEL

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "golden.safetensors")
WRITE = os.environ.get("DGNERF_GOLDEN_WRITE") == "1"
THREADS = 2


def _render(model, identity, expression, c2w, intrinsics, **options):
    """The one place that knows HeadModel's calling convention (updated with the API, never the values)."""
    from dgnerf.model import RenderOptions

    out = model(identity, expression, c2w, intrinsics, options=RenderOptions(**options))
    return {"image": out.image, "feature_map": out.feature_map, "opacity": out.opacity, "depth": out.depth}


def _isa() -> str:
    """The instruction set ATen dispatches to and the CPU's vendor: MKL and oneDNN pick other kernels on another
    vendor's CPU of the same ISA (an AMD and an Intel AVX-512 machine round differently)."""
    vendor = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()}/{vendor}"


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _produce(tmp_path_factory.mktemp("golden"))
    finally:
        torch.set_num_threads(prev_threads)


def _produce(tmp):
    vals = {}
    data = str(tmp / "data")
    assert main(["dataset", "build-synthetic", "--out", data, "--size", "tiny", "--seed", "3"]) == 0
    run = str(tmp / "run")
    assert main(["train", data, "--out", run, "--steps", "5", "--batch-size", "2", "--lr", "2e-3", "--lr-final",
                 "1e-3", "--lambda-perceptual", "0", "--checkpoint-every", "5", "--sample-every", "1000",
                 "--log-every", "1", "--seed", "7", "--deterministic", "--device", "cpu", "--no-progress",
                 "--model", json.dumps(TINY_MODEL)]) == 0
    with open(os.path.join(run, "metrics.jsonl")) as f:
        vals["train.losses"] = torch.tensor([json.loads(line)["loss"] for line in f], dtype=torch.float64)
    ckpt = os.path.join(run, "checkpoints", "step_00000005", "model.safetensors")
    for k, v in load_file(ckpt).items():
        vals[f"ckpt.{k}"] = v

    from dgnerf.camera import orbit_c2w
    from dgnerf.model.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    g = torch.Generator().manual_seed(11)
    cfg = model.cfg
    identity = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    expression = 0.3 * torch.randn(2, 46, generator=g)
    c2w = torch.cat([orbit_c2w(20.0, -5.0, distance=cfg.camera_distance),
                     orbit_c2w(-35.0, 10.0, 4.0, distance=cfg.camera_distance)])
    K = model.default_intrinsics(2)
    with torch.no_grad():
        cases = {"ref": dict(path="reference"), "fast": dict(path="fast"), "bf16": dict(path="fast", precision="bf16"),
                 "strat": dict(path="fast", stratified=True, seed=5),
                 "skip": dict(path="fast", skip_stride=3, ert_threshold=1e-2)}
        for name, opts in cases.items():
            for k, v in _render(model, identity, expression, c2w, K, **opts).items():
                vals[f"render.{name}.{k}"] = v.float()
    # and through the CLI, from the code files the trainer's dataset holds
    png = str(tmp / "render.png")
    assert main(["render", "--checkpoint", ckpt, "--identity", "random:1", "--expression", "random:2", "--yaw", "15", "--pitch", "5",
                 "--out", png, "--device", "cpu"]) == 0
    from PIL import Image

    vals["cli.render_png"] = torch.from_numpy(np.asarray(Image.open(png)).copy())
    fit_out = tmp / "fit"
    assert main(["fit", data, "--checkpoint", ckpt, "--out", str(fit_out), "--iters", "5", "--no-lpips", "--no-csim",
                 "--no-progress", "--device", "cpu"]) == 0
    for k, v in load_file(str(fit_out / "codes.safetensors")).items():
        vals[f"fit.{k}"] = v
    rep = json.loads((fit_out / "metrics.json").read_text())
    person = rep["persons"]["p0003"]
    vals["fit.metrics"] = torch.tensor([person[part][m] for part in sorted(person) if isinstance(person[part], dict)
                                        for m in sorted(person[part]) if isinstance(person[part][m], (int, float))],
                                       dtype=torch.float64)
    return {k: v.contiguous() for k, v in vals.items()}


def test_golden_values(produced):
    if WRITE:
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        save_file(produced, GOLDEN, metadata={"isa": _isa(), "threads": str(THREADS), "torch": torch.__version__})
        pytest.skip(f"wrote {GOLDEN}")
    from safetensors import safe_open

    with safe_open(GOLDEN, "pt") as f:
        meta = f.metadata()
    golden = load_file(GOLDEN)
    assert sorted(produced) == sorted(golden)
    exact = meta.get("isa") == _isa() and meta.get("torch") == torch.__version__
    bad = []
    for k in sorted(golden):
        a, b = produced[k], golden[k]
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        if exact:
            if not torch.equal(a, b):
                diff = float((a.double() - b.double()).abs().max())
                bad.append(f"{k}: max |diff| {diff:g}")
        elif a.is_floating_point():
            if not torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5):
                bad.append(f"{k}: max |diff| {float((a.double() - b.double()).abs().max()):g}")
        elif not (a.to(torch.int32) - b.to(torch.int32)).abs().max() <= 1:
            bad.append(f"{k}: differs by more than one level")
    assert not bad, ("bit-for-bit" if exact else "within rounding (other ISA/torch)") + " mismatch:\n" + "\n".join(bad)
