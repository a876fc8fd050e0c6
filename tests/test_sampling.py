"""Ray sampling: CPU kernel vs its pure-PyTorch twin, seeded jitter, sphere clipping, gradients, bad inputs."""

import pytest
import torch

import dgnerf
from dgnerf import _ext
from dgnerf.ops import reference as ref
from tests.conftest import rel_err, requires_cuda

needs_ext = pytest.mark.skipif(not _ext.loaded, reason=f"extension not built: {_ext.load_error}")


def random_cameras(B, dtype=torch.float32, rows=3, distance=4.0):
    """Cameras on a sphere of radius `distance` looking at the origin (OpenCV axes), random focal/centre."""
    cams = []
    for _ in range(B):
        yaw, pitch = (torch.rand(2, dtype=torch.float64) - 0.5) * torch.tensor([1.4, 0.8], dtype=torch.float64)
        eye = distance * torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), -torch.cos(yaw) * torch.cos(pitch)])
        z = -eye / eye.norm()
        x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.stack([x, y, z], dim=1)
        m[:3, 3] = eye
        cams.append(m[:rows])
    c2w = torch.stack(cams).to(dtype)
    K = torch.stack([torch.tensor([40.0, 40.0, 16.0, 16.0], dtype=torch.float64) + torch.randn(4, dtype=torch.float64)]).expand(B, 4)
    K = (K + torch.randn(B, 4, dtype=torch.float64) * 0.5).to(dtype).contiguous()
    return c2w, K


@needs_ext
@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("radius", [0.0, 1.2])
@pytest.mark.parametrize("rows", [3, 4])
def test_cpu_matches_reference(stratified, radius, rows):
    c2w, K = random_cameras(3, rows=rows)
    args = (12, 10, 24, 2.5, 5.5, stratified, 1234, radius)
    fast = dgnerf.ops.sample_rays(c2w, K, *args)
    slow = ref.sample_rays_reference(c2w.double(), K.double(), *args)
    for name, a, b in zip(["points", "dirs", "depths", "deltas"], fast, slow):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= 1e-5, name
    pts, dirs, t, dl = fast
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert (t[..., 1:] >= t[..., :-1]).all()
    assert (dl > 0).all()


@needs_ext
def test_seeded_jitter_is_reproducible_and_uniform():
    c2w, K = random_cameras(2)
    a = dgnerf.ops.sample_rays(c2w, K, 8, 8, 16, 2.0, 6.0, True, 7)[2]
    b = dgnerf.ops.sample_rays(c2w, K, 8, 8, 16, 2.0, 6.0, True, 7)[2]
    c = dgnerf.ops.sample_rays(c2w, K, 8, 8, 16, 2.0, 6.0, True, 8)[2]
    assert torch.equal(a, b) and not torch.equal(a, c)
    u = ref.uniform01(99, torch.arange(200000), torch.float64)
    assert abs(float(u.mean()) - 0.5) < 5e-3 and abs(float(u.var()) - 1 / 12) < 2e-3
    assert float(u.min()) >= 0 and float(u.max()) < 1


@needs_ext
def test_midpoints_and_deltas_cover_the_interval():
    c2w, K = random_cameras(1)
    _, _, t, dl = dgnerf.ops.sample_rays(c2w, K, 4, 4, 8, 2.0, 6.0)
    step = 4.0 / 8
    assert torch.allclose(t[0, 0], 2.0 + step * (torch.arange(8) + 0.5))
    assert torch.allclose(dl, torch.full_like(dl, step), atol=1e-6)
    _, _, t2, dl2 = dgnerf.ops.sample_rays(c2w, K, 4, 4, 8, 2.0, 6.0, True, 3)
    assert torch.allclose(dl2.sum(-1), torch.full_like(dl2[..., 0], 4.0), atol=1e-5)


@needs_ext
def test_sphere_clipping_keeps_points_inside():
    c2w, K = random_cameras(2, distance=4.0)
    K[:, :2] = 10.0  # wide field of view: some rays miss the sphere
    pts, dirs, t, _ = dgnerf.ops.sample_rays(c2w, K, 16, 16, 8, 0.5, 8.0, False, 0, 1.0)
    o = c2w[:, None, :3, 3]
    b = (o * dirs).sum(-1)
    hit = (b * b - ((o * o).sum(-1) - 1.0)) > 0
    assert hit.any() and (~hit).any()
    inside = pts.norm(dim=-1)[hit] <= 1.0 + 1e-4
    assert inside.all()
    assert torch.allclose(t[~hit][:, 0], torch.full_like(t[~hit][:, 0], 0.5 + 7.5 / 16))


@needs_ext
def test_gradients_to_camera_match_reference():
    c2w, K = random_cameras(2, dtype=torch.float64)
    c2w.requires_grad_(True)
    K.requires_grad_(True)
    c2w_r, K_r = c2w.detach().clone().requires_grad_(True), K.detach().clone().requires_grad_(True)
    out = dgnerf.ops.sample_rays(c2w, K, 5, 6, 7, 2.0, 6.0, True, 5)
    out_r = ref.sample_rays_reference(c2w_r, K_r, 5, 6, 7, 2.0, 6.0, True, 5)
    gp, gd = torch.randn_like(out[0]), torch.randn_like(out[1])
    (out[0] * gp).sum().add((out[1] * gd).sum()).backward()
    (out_r[0] * gp).sum().add((out_r[1] * gd).sum()).backward()
    assert rel_err(c2w.grad, c2w_r.grad) <= 1e-10
    assert rel_err(K.grad, K_r.grad) <= 1e-10


@needs_ext
def test_gradcheck_float64():
    c2w, K = random_cameras(1, dtype=torch.float64)
    fn = lambda c, k: dgnerf.ops.sample_rays(c, k, 2, 3, 4, 2.0, 6.0, True, 1)[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (c2w.requires_grad_(True), K.requires_grad_(True)))


@needs_ext
def test_opcheck():
    c2w, K = random_cameras(2)
    torch.library.opcheck(torch.ops.dgnerf.sample_rays.default, (c2w.requires_grad_(True), K, 3, 4, 5, 2.0, 6.0, True, 1, 0.0))


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"c2w": torch.zeros(2, 2, 4)}, "'c2w' expected shape"),
        ({"c2w": torch.zeros(2, 3, 4, dtype=torch.int64)}, "'c2w' expected dtype"),
        ({"intrinsics": torch.ones(3, 4)}, "'intrinsics' expected shape"),
        ({"intrinsics": torch.ones(2, 4, dtype=torch.float64)}, "'intrinsics' expected dtype"),
        ({"n_samples": 0}, "'n_samples' expected a positive int"),
        ({"far": 1.0}, "'far' expected"),
        ({"near": float("nan")}, "'near' expected"),
        ({"intrinsics": torch.tensor([[1.0, 1.0, float("nan"), 0.0]] * 2)}, "'intrinsics' contains 2 NaN"),
    ],
)
def test_bad_inputs_named(kwargs, words):
    c2w, K = random_cameras(2)
    args = dict(c2w=c2w, intrinsics=K, height=4, width=4, n_samples=8, near=2.0, far=6.0)
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        dgnerf.ops.sample_rays(**args)
    assert words in str(e.value), str(e.value)


@requires_cuda
@pytest.mark.parametrize("stratified", [False, True])
def test_cuda_matches_reference(stratified):
    if not _ext.has_kernel("sample_rays", "cuda"):
        pytest.fail("CUDA is available but the extension has no CUDA kernel: rebuild with nvcc (DGNERF_CUDA=1)")
    c2w, K = random_cameras(4)
    args = (32, 32, 64, 2.5, 5.5, stratified, 77, 1.3)
    fast = dgnerf.ops.sample_rays(c2w.cuda(), K.cuda(), *args)
    slow = ref.sample_rays_reference(c2w.double(), K.double(), *args)
    for a, b in zip(fast, slow):
        assert rel_err(a, b) <= 1e-5


def test_wrong_device_named():
    c2w, K = random_cameras(1)
    with pytest.raises(ValueError, match="'intrinsics' expected device cpu"):
        dgnerf.ops.sample_rays(c2w, K.to("meta"), 4, 4, 8, 2.0, 6.0)
