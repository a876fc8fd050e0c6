"""Cameras for the head model: head pose -> camera-to-world matrix, and default intrinsics.

Conventions (the same as dgnerf.ops.sample_rays):
- Camera axes are OpenCV's: x right, y down, z forward (the viewing direction).
- World frame = the head's frame: the head is centred at the origin and faces -z, i.e. towards a
  camera at (0, 0, -distance) whose c2w rotation is the identity (the frontal view). World x points
  to the image's right in that view, world y down.
- `orbit_c2w(yaw, pitch, roll, distance)`: c2w rotation R = Ry(yaw) Rx(pitch) Rz(roll) and camera
  centre o = R (0, 0, -distance), so the camera always looks at the origin. Angles in degrees.
  Positive yaw moves the camera towards world -x (it sees more of the side on the image's left),
  positive pitch moves it towards world +y (below the head, looking up), positive roll turns the
  camera clockwise about its viewing axis (the head appears rotated counter-clockwise).
  A head rotation R_h seen by a fixed camera is the same image as the camera moved by R_h^T.
- Tracked head poses given as world-to-camera [R | t] (the head's rotation and translation in the
  camera frame) become c2w with `c2w_from_w2c`.
- Intrinsics [B, 4] = (fx, fy, cx, cy) in pixels of the feature map (feature_size), principal point
  at the centre. Multiply by image_size / feature_size for the output image's pixels. Pixel (row v, column u)
  is the ray through image point (u + 0.5, v + 0.5): `pixel_rays`.
- A dataset's world frame: `world_frame(c2w)` is the axis-aligned rotation W that turns `orbit_c2w`'s
  frontal view into the data's (I for the built-in set, diag(1, -1, -1) for a preprocessed video);
  `view_c2w(yaw, pitch, distance, W)` is an orbit camera in that world. The full page: docs/design.md.
"""
from __future__ import annotations

import itertools
import math

import torch


def _as_tensor(v, dtype, device):
    t = torch.as_tensor(v, dtype=dtype, device=device)
    return t.reshape(-1)


def rotation_matrix(yaw, pitch, roll, degrees: bool = True, dtype=torch.float32, device=None) -> torch.Tensor:
    """R = Ry(yaw) Rx(pitch) Rz(roll) -> [B, 3, 3]; inputs are scalars or [B] (broadcast)."""
    y, p, r = (_as_tensor(v, dtype, device) for v in (yaw, pitch, roll))
    y, p, r = torch.broadcast_tensors(y, p, r)
    if degrees:
        y, p, r = (torch.deg2rad(v) for v in (y, p, r))
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    cy, sy, cp, sp, cr, sr = torch.cos(y), torch.sin(y), torch.cos(p), torch.sin(p), torch.cos(r), torch.sin(r)
    Ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    Rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    Rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return Ry @ Rx @ Rz


def orbit_c2w(yaw=0.0, pitch=0.0, roll=0.0, distance: float = 4.0, degrees: bool = True,
              dtype=torch.float32, device=None) -> torch.Tensor:
    """Camera on a sphere of radius `distance` looking at the origin -> c2w [B, 4, 4] (see module doc)."""
    if not (isinstance(distance, (int, float)) and math.isfinite(distance) and distance > 0):
        raise ValueError(f"orbit_c2w: argument 'distance' expected a finite number > 0, got {distance!r}")
    for name, v in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        if not bool(torch.isfinite(_as_tensor(v, torch.float64, None)).all()):
            raise ValueError(f"orbit_c2w: argument '{name}' must be finite, got {v!r}")
    R = rotation_matrix(yaw, pitch, roll, degrees, dtype, device)
    c2w = torch.zeros(R.shape[0], 4, 4, dtype=dtype, device=device)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = -distance * R[:, :, 2]
    c2w[:, 3, 3] = 1
    return c2w


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0), dtype=torch.float32, device=None) -> torch.Tensor:
    """c2w [B, 4, 4] of cameras at `eye` [B, 3] looking at `target`; `up` is world up (-y by default,
    since y points down)."""
    eye = torch.as_tensor(eye, dtype=dtype, device=device).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=dtype, device=device).reshape(-1, 3).expand_as(eye)
    up = torch.as_tensor(up, dtype=dtype, device=device).reshape(-1, 3).expand_as(eye)
    z = target - eye
    zn = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    if bool((zn < 1e-8).any()):
        raise ValueError("look_at: 'eye' and 'target' coincide; the viewing direction is undefined")
    z = z / zn
    x = torch.linalg.cross(-up, z)  # camera x = right = down x forward
    xn = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((xn < 1e-8).any()):
        raise ValueError("look_at: the viewing direction is parallel to 'up'; pass another 'up'")
    x = x / xn
    y = torch.linalg.cross(z, x)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=dtype, device=device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    c2w[:, 3, 3] = 1
    return c2w


def c2w_from_w2c(w2c: torch.Tensor) -> torch.Tensor:
    """Invert rigid world-to-camera matrices [B, 3|4, 4] -> c2w [B, 4, 4]."""
    if w2c.dim() != 3 or w2c.shape[1] not in (3, 4) or w2c.shape[2] != 4:
        raise ValueError(f"c2w_from_w2c: argument 'w2c' expected shape [B, 3, 4] or [B, 4, 4], got {list(w2c.shape)}")
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    out = torch.zeros(w2c.shape[0], 4, 4, dtype=w2c.dtype, device=w2c.device)
    out[:, :3, :3] = R.transpose(1, 2)
    out[:, :3, 3] = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    out[:, 3, 3] = 1
    return out


def intrinsics_from_fov(fov_deg: float, size: int, batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """(fx, fy, cx, cy) [batch, 4] of a square pinhole image of `size` pixels and field of view `fov_deg`."""
    if not (0 < fov_deg < 180):
        raise ValueError(f"intrinsics_from_fov: argument 'fov_deg' expected a number in (0, 180), got {fov_deg!r}")
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, f, size / 2, size / 2]], dtype=dtype, device=device).expand(batch, 4).contiguous()


def orbit_path(n_frames: int, yaw_amplitude: float = 30.0, pitch_amplitude: float = 10.0):
    """Yaw/pitch angles (degrees) [n] of a closed loop around the frontal view, for orbit videos."""
    if not (isinstance(n_frames, int) and n_frames > 0):
        raise ValueError(f"orbit_path: argument 'n_frames' expected a positive int, got {n_frames!r}")
    s = torch.arange(n_frames, dtype=torch.float64) / n_frames * 2 * math.pi
    return yaw_amplitude * torch.sin(s), pitch_amplitude * torch.sin(2 * s)


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


def world_frame(c2w: torch.Tensor) -> torch.Tensor:
    """The axis-aligned rotation W [3,3] (a signed permutation, det +1) nearest to the mean orientation of a
    dataset's cameras c2w [N,4,4]: the frame in which `orbit_c2w`'s frontal view (looking along +z, y down,
    dgnerf.camera) is the dataset's. I for the built-in set; diag(1, -1, -1) for a preprocessed video (world =
    MediaPipe's face frame, +y up, +z out of the face, the camera in front at +z)."""
    M = c2w[:, :3, :3].double().mean(0)
    best, score = torch.eye(3, dtype=torch.float64), -math.inf
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            P = torch.zeros(3, 3, dtype=torch.float64)
            for i in range(3):
                P[i, perm[i]] = signs[i]
            if torch.det(P) > 0 and float((P * M).sum()) > score:
                best, score = P, float((P * M).sum())
    return best.float()


def view_c2w(yaw, pitch=0.0, distance: float = 4.0, world: torch.Tensor | None = None, device=None,
             roll=0.0) -> torch.Tensor:
    """orbit_c2w(yaw, pitch, roll, distance) [1,4,4] turned into a dataset's world (world_frame; None = the built-in
    convention): yaw 0 is the dataset's frontal view, positive yaw shows more of the head's side on the image's left."""
    c2w = orbit_c2w(float(yaw), float(pitch), float(roll), distance, device=device)
    if world is not None:
        c2w = c2w.clone()
        c2w[:, :3, :] = world.to(c2w) @ c2w[:, :3, :]
    return c2w


def skew(w: torch.Tensor) -> torch.Tensor:
    """[w]x: the cross-product matrix of the vectors w [..., 3] -> [..., 3, 3]."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([z, -w[..., 2], w[..., 1], w[..., 2], z, -w[..., 0], -w[..., 1], w[..., 0], z], -1).reshape(*w.shape[:-1], 3, 3)


def corrected_c2w(c2w: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """c2w @ [exp([rot]x) | trans]: a rigid correction in the camera's own frame (zero = unchanged); rot is an axis-angle
    vector in radians, trans in the scene's units. Used by fitting (per-frame pose offsets) and by training's optional
    per-frame camera correction; differentiable in all three inputs."""
    R = torch.linalg.matrix_exp(skew(rot))
    top = torch.cat([R, trans[..., None]], -1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device).expand(*c2w.shape[:-2], 1, 4)
    return c2w @ torch.cat([top, bottom], -2)


__all__ = ["rotation_matrix", "orbit_c2w", "look_at", "c2w_from_w2c", "intrinsics_from_fov", "orbit_path",
           "pixel_rays", "world_frame", "view_c2w", "skew", "corrected_c2w"]
