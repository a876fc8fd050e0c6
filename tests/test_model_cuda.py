"""HeadModel on a GPU: fast vs reference, reduced precisions, CUDA graphs (skipped without CUDA)."""
import pytest
import torch

from dgnerf.camera import intrinsics_from_fov, orbit_c2w
from dgnerf.metrics import psnr
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from dgnerf.model.graphs import graphed_frame
from tests.conftest import rel_err

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _setup(cfg, B=2):
    torch.manual_seed(0)
    model = HeadModel(cfg).cuda()
    z = torch.randn(B, cfg.identity_dim, device="cuda")
    beta = torch.randn(B, cfg.expression_dim, device="cuda")
    c2w = orbit_c2w(torch.tensor([10.0, -15.0][:B]), 5.0, 0.0, cfg.camera_distance, device="cuda")
    K = intrinsics_from_fov(cfg.fov_deg, cfg.feature_size, B, device="cuda")
    return model, (z, beta, c2w, K)


@pytest.mark.parametrize("cfg", [HeadConfig.tiny(), HeadConfig()], ids=["tiny", "default"])
def test_cuda_fast_equals_reference(cfg):
    model, args = _setup(cfg)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = model(*args, options=RenderOptions(path="reference"))
    fast = model(*args, options=RenderOptions(path="fast"))
    assert psnr(fast.image, ref.image) >= 50
    assert rel_err(fast.feature_map, ref.feature_map) < 1e-4
    cpu = model.cpu()(*[a.cpu() for a in args])
    assert rel_err(cpu.feature_map, ref.feature_map) < 1e-4


def test_cuda_gradients_match():
    cfg = HeadConfig.tiny()
    model, (z, beta, c2w, K) = _setup(cfg)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    grads = {}
    for path in ("reference", "fast"):
        model.zero_grad()
        zz = z.clone().requires_grad_(True)
        model(zz, beta, c2w, K, options=RenderOptions(path=path)).image.square().mean().backward()
        grads[path] = [zz.grad] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["fast"], grads["reference"]):
        assert rel_err(a, b) < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_reduced_precision(precision):
    model, args = _setup(HeadConfig())
    with torch.no_grad():
        ref = model(*args, options=RenderOptions(path="fast"))
        out = model(*args, options=RenderOptions(path="fast", precision=precision))
    assert psnr(out.image, ref.image) >= 40


def test_cuda_graph_replays_the_frame():
    model, args = _setup(HeadConfig(), B=1)
    with torch.no_grad():
        want = model(*args, options=RenderOptions(path="fast", precision="bf16")).image.clone()
        graphed = graphed_frame(model, batch=1, options=RenderOptions(precision="bf16"))
        got = graphed(*args).image
        assert psnr(got, want) >= 60
        z2 = torch.randn_like(args[0])
        want2 = model(z2, *args[1:], options=RenderOptions(path="fast", precision="bf16")).image
        assert psnr(graphed(z2, *args[1:]).image, want2) >= 60


@pytest.mark.parametrize("flags", [dict(skip_stride=4), dict(skip_stride=4, ert_threshold=1e-3),
                                   dict(ert_threshold=1e-3, ert_chunk=8)])
def test_cuda_skip_and_ert_match_cpu_and_dense(flags):
    # Batched empty-space skipping / early termination on a GPU: same result as on the CPU, close to dense.
    from dgnerf.model.prior import apply_head_prior

    cfg = HeadConfig.tiny()
    model, args = _setup(cfg, B=2)
    apply_head_prior(model)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        dense = model(*args, options=RenderOptions(path="fast"))
        approx = model(*args, options=RenderOptions(path="fast", **flags))
        cpu = model.cpu()(*[a.cpu() for a in args], options=RenderOptions(path="fast", **flags))
    assert psnr(approx.image, dense.image) >= 35
    assert rel_err(approx.feature_map.cpu(), cpu.feature_map) < 1e-4
