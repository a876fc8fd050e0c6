"""Image warps and rasterisation in torch / PIL (no OpenCV), in the continuous-coordinate convention of
geometry.py: the top-left image corner is (0, 0), pixel centres are at half-integers."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def _to_tensor(img: np.ndarray) -> tuple[torch.Tensor, bool]:
    a = np.asarray(img)
    gray = a.ndim == 2
    t = torch.from_numpy(np.array(a if not gray else a[..., None], copy=True)).float()
    return t.permute(2, 0, 1)[None], gray


def _from_tensor(t: torch.Tensor, like: np.ndarray, gray: bool) -> np.ndarray:
    out = t[0].permute(1, 2, 0)
    if gray:
        out = out[..., 0]
    if like.dtype == np.uint8:
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
    return out.numpy().astype(like.dtype)


def warp_affine(img: np.ndarray, A: np.ndarray, out_hw: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """out(p) = img(A^-1 p) for continuous points p of the output; A [2,3] maps source -> output.
    Bilinear; where the source scale shrinks by more than 1.5x, it is first box-downsampled so the
    result does not alias. img: [H,W] or [H,W,C], uint8 or float."""
    A = np.asarray(A, np.float64)
    H, W = np.asarray(img).shape[:2]
    t, gray = _to_tensor(img)
    # scale of the map (source px per output px)
    lin = A[:, :2]
    shrink = float(np.sqrt(abs(np.linalg.det(lin))))  # output px per source px
    if shrink < 1 / 1.5:
        Hs, Ws = max(1, int(round(H * shrink * 1.25))), max(1, int(round(W * shrink * 1.25)))
        t = F.interpolate(t, size=(Hs, Ws), mode="bilinear", antialias=True, align_corners=False)
        # source coordinates scale by (Ws/W, Hs/H): u_s = u * Ws/W
        S = np.diag([W / Ws, H / Hs])
        A = np.hstack([lin @ S, A[:, 2:]])
        H, W = Hs, Ws
    M = np.vstack([A, [0, 0, 1]])
    Minv = np.linalg.inv(M)
    ho, wo = out_hw
    v, u = np.meshgrid(np.arange(ho) + 0.5, np.arange(wo) + 0.5, indexing="ij")
    src = np.stack([u, v, np.ones_like(u)], -1) @ Minv.T
    gx = src[..., 0] / W * 2 - 1
    gy = src[..., 1] / H * 2 - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1)).float()[None]
    if fill != 0.0:
        t = t - fill
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        out = out + fill
    return _from_tensor(out, np.asarray(img), gray)


def crop_affine(x0: float, y0: float, size: float, resolution: int) -> np.ndarray:
    s = resolution / size
    return np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]])


def crop_square(img: np.ndarray, x0: float, y0: float, size: float, resolution: int, fill: float = 0.0) -> np.ndarray:
    """The square [x0, x0+size) x [y0, y0+size) of img resized to resolution^2 (outside: `fill`)."""
    return warp_affine(img, crop_affine(x0, y0, size, resolution), (resolution, resolution), fill)


def fill_polygon(hw: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Boolean [H,W] of the pixels whose centres fall inside the polygon (continuous coordinates)."""
    im = Image.new("L", (hw[1], hw[0]), 0)
    p = np.asarray(pts, np.float64) - 0.5  # PIL draws in pixel-index coordinates
    if len(p) >= 3:
        ImageDraw.Draw(im).polygon([tuple(map(float, q)) for q in p], fill=255)
    return np.asarray(im) > 127


def convex_hull(pts: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of [N,2] points, counter-clockwise."""
    P = sorted(set(map(tuple, np.asarray(pts, np.float64).tolist())))
    if len(P) <= 2:
        return np.asarray(P)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in P:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(P):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    k = 2 * radius + 1
    return (F.max_pool2d(t, k, stride=1, padding=radius)[0, 0] > 0.5).numpy()


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~dilate(~mask, radius)
