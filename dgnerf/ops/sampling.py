"""Ray sampling: a batch of pinhole cameras -> per feature pixel a ray and S depths.

    points, dirs, depths, deltas = sample_rays(c2w, intrinsics, height, width, n_samples, near, far)

c2w [B,3,4] or [B,4,4] camera-to-world ([R | o], OpenCV axes: x right, y down, z forward),
intrinsics [B,4] = (fx, fy, cx, cy) at feature-map resolution. Ray r = v * width + u goes through the
centre of pixel (u, v). Depth i lies in bin i of [near, far] (optionally clipped to the sphere
|x| <= sphere_radius): at the bin's midpoint (eval) or at a seeded uniform offset (stratified=True;
the same seed gives the same depths on CPU, CUDA and the reference; image b of the batch draws with
seed + b, so splitting a batch over processes with seeds shifted by the images before them draws the
same numbers). deltas_i = t_{i+1} - t_i, and the
last delta closes the interval so the deltas sum to its length.

Returns points [B,H*W,S,3], dirs [B,H*W,3] (unit), depths [B,H*W,S], deltas [B,H*W,S]. Gradients flow
to c2w and intrinsics through points and dirs; depths and deltas are sample positions (no gradient).

Example:
    >>> import torch, dgnerf
    >>> c2w = torch.eye(4)[None, :3].clone(); c2w[0, 2, 3] = -4.0
    >>> K = torch.tensor([[40.0, 40.0, 16.0, 16.0]])
    >>> pts, d, t, dt = dgnerf.ops.sample_rays(c2w, K, 32, 32, 64, near=3.0, far=5.0)
    >>> pts.shape
    torch.Size([1, 1024, 64, 3])
"""
from __future__ import annotations

import torch

from dgnerf.ops import _common
from dgnerf.ops.reference import camera_dirs, sample_rays_reference

OP = "sample_rays"
MAX_POINTS = 2**31  # sample points of one call (each is 3 + 1 + 1 floats of output): beyond, refuse by name
_FLOATS = (torch.float32, torch.float64)


def _check(c2w, intrinsics, height, width, n_samples, near, far, sphere_radius):
    _common.check_tensor(OP, "c2w", c2w, dtypes=_FLOATS)
    if not (c2w.dim() == 3 and c2w.shape[1] in (3, 4) and c2w.shape[2] == 4 and c2w.shape[0] > 0):
        _common.fail(OP, f"argument 'c2w' expected shape [batch, 3, 4] or [batch, 4, 4] (camera-to-world), got {list(c2w.shape)}")
    _common.check_tensor(OP, "intrinsics", intrinsics, (c2w.shape[0], 4), "= (fx, fy, cx, cy) per camera", like=c2w, like_name="c2w")
    for name, val in (("height", height), ("width", width), ("n_samples", n_samples)):
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            _common.fail(OP, f"argument '{name}' expected a positive int, got {val!r}")
    _common.check_scalar(OP, "near", near, lambda x: x >= 0, "a finite number >= 0")
    _common.check_scalar(OP, "far", far, lambda x: x > near, f"a finite number > near ({near})")
    _common.check_scalar(OP, "sphere_radius", sphere_radius, lambda x: True, "a finite number")
    points = c2w.shape[0] * height * width * n_samples
    if points > MAX_POINTS:
        _common.fail(OP, f"arguments 'height' x 'width' x 'n_samples' ({height} x {width} x {n_samples} per camera, "
                         f"{c2w.shape[0]} cameras) ask for {points} sample points, more than {MAX_POINTS}; render in tiles")


def _check_flags(stratified, seed):
    # a string "False" is truthy and 1.5 truncates: both would be taken silently
    if not isinstance(stratified, bool):
        _common.fail(OP, f"argument 'stratified' expected a bool, got {stratified!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        _common.fail(OP, f"argument 'seed' expected an int in [-2^63, 2^63), got {seed!r}")


def sample_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int, n_samples: int, near: float,
                far: float, stratified: bool = False, seed: int = 0,
                sphere_radius: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays of a batch of pinhole cameras and their sample depths (conventions in the module docstring).

    Args:
        c2w: camera-to-world [B, 3, 4] or [B, 4, 4], float32 or float64 (OpenCV axes).
        intrinsics: (fx, fy, cx, cy) [B, 4] in pixels of the height x width grid.
        height, width: the ray grid (the feature map); n_samples: S depths per ray.
        near, far: the depth interval; sphere_radius > 0 clips it to the sphere |x| <= radius.
        stratified: seeded jitter within each depth bin (training) instead of the bins' midpoints; seed: its seed.
    Returns:
        points [B, H*W, S, 3], dirs [B, H*W, 3] (unit), depths [B, H*W, S], deltas [B, H*W, S].
    """
    _check(c2w, intrinsics, height, width, n_samples, near, far, sphere_radius)
    _check_flags(stratified, seed)
    if _common.checks_enabled():
        _common.check_finite(OP, {"c2w": c2w, "intrinsics": intrinsics})
    args = (height, width, n_samples, float(near), float(far), bool(stratified), int(seed), float(sphere_radius))
    if _common.use_kernel(OP, c2w.device):
        return torch.ops.dgnerf.sample_rays(c2w.contiguous(), intrinsics.contiguous(), *args)
    return sample_rays_reference(c2w, intrinsics, *args)


if hasattr(torch.ops, "dgnerf") and hasattr(torch.ops.dgnerf, "sample_rays"):

    @torch.library.register_fake("dgnerf::sample_rays")
    def _fake(c2w, intrinsics, height, width, n_samples, near, far, stratified, seed, sphere_radius):
        B, R, S = c2w.shape[0], height * width, n_samples
        return (
            c2w.new_empty((B, R, S, 3)),
            c2w.new_empty((B, R, 3)),
            c2w.new_empty((B, R, S)),
            c2w.new_empty((B, R, S)),
        )

    def _setup(ctx, inputs, output):
        c2w, intrinsics, height, width = inputs[:4]
        ctx.save_for_backward(c2w, intrinsics, output[2])
        ctx.hw = (height, width)
        ctx.set_materialize_grads(False)  # _backward treats a missing gradient as zero

    def _backward(ctx, g_points, g_dirs, g_depths, g_deltas):
        # points = o + t dn, dirs = dn, dn = d / |d|, d = R c, c = ((u+.5-cx)/fx, (v+.5-cy)/fy, 1).
        c2w, intrinsics, depths = ctx.saved_tensors
        height, width = ctx.hw
        d, cam, _ = camera_dirs(c2w, intrinsics, height, width)
        norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        dn = d / norm
        g_o = torch.zeros_like(c2w[:, :3, 3])
        g_dn = torch.zeros_like(dn)
        if g_points is not None:
            g_o = g_o + g_points.sum(dim=(1, 2))
            g_dn = g_dn + torch.einsum("brs,brsk->brk", depths, g_points)
        if g_dirs is not None:
            g_dn = g_dn + g_dirs
        g_d = (g_dn - dn * (dn * g_dn).sum(-1, keepdim=True)) / norm
        rot = c2w[:, :3, :3]
        fx, fy = intrinsics[:, 0:1], intrinsics[:, 1:2]
        xc, yc = cam[..., 0], cam[..., 1]
        g_rot = torch.einsum("bri,brj->bij", g_d, cam)
        g_cam = torch.einsum("bij,bri->brj", rot, g_d)
        g_xc, g_yc = g_cam[..., 0], g_cam[..., 1]
        g_K = torch.stack(
            [-(g_xc * xc).sum(1) / fx[:, 0], -(g_yc * yc).sum(1) / fy[:, 0], -g_xc.sum(1) / fx[:, 0], -g_yc.sum(1) / fy[:, 0]],
            dim=-1,
        )
        g_c2w = torch.zeros_like(c2w)
        g_c2w[:, :3, :3] = g_rot
        g_c2w[:, :3, 3] = g_o
        return g_c2w, g_K, None, None, None, None, None, None, None, None

    torch.library.register_autograd("dgnerf::sample_rays", _backward, setup_context=_setup)
