"""Camera conventions of the dataset format, as code (docs/dataset.md).

c2w: camera-to-world 4x4, OpenCV camera axes (x right, y down, z forward = viewing direction); the head sits
at the world origin, so the tracked head pose is the camera extrinsic. Intrinsics (fx, fy, cx, cy) are in
pixels of the stored image, with the image's top-left corner at (0, 0) and pixel centres at half-integers:
the ray of pixel (row v, column u) passes through image point (u + 0.5, v + 0.5); a centred principal point
is (W/2, H/2).
"""
from __future__ import annotations

import torch


def pixel_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int):
    """Rays through every pixel centre. c2w [..., 4, 4], intrinsics [..., 4] ->
    origins [..., H, W, 3], unit directions [..., H, W, 3] (world frame)."""
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w: expected [..., 4, 4], got {tuple(c2w.shape)}")
    if intrinsics.shape[-1] != 4:
        raise ValueError(f"intrinsics: expected [..., 4] (fx, fy, cx, cy), got {tuple(intrinsics.shape)}")
    dt, dev = c2w.dtype, c2w.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dt, device=dev) + 0.5, torch.arange(width, dtype=dt, device=dev) + 0.5, indexing="ij"
    )
    fx, fy, cx, cy = (intrinsics[..., i, None, None] for i in range(4))
    d_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as((u - cx) / fx)], dim=-1)
    r = c2w[..., None, None, :3, :3]
    d = (r @ d_cam[..., None])[..., 0]
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    return o, d


def look_at_c2w(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV camera-to-world for a camera at `eye` looking at `target`; `up` is the world direction that
    appears up in the image (image y points down, so the camera's y axis is -up projected)."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)  # camera x (right) = forward x up, for y down
    if x.norm() < 1e-9:
        raise ValueError("look_at_c2w: viewing direction is parallel to `up`")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m
