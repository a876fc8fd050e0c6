"""The --preview contact sheet: sampled crops with the mask tinted, the landmarks and the head's axes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dgnerf.face import geometry as G

AXIS_CM = 8.0
COLORS = {"x": (255, 40, 40), "y": (40, 220, 40), "z": (60, 120, 255)}


def draw_frame(img: np.ndarray, mask: np.ndarray, uv_crop: np.ndarray, R, t, K_crop, label: str = "") -> Image.Image:
    """One tile: the crop, the mask's outside darkened and its inside tinted green, the landmarks
    (irises in yellow) and the head frame's axes (x red, y green, z blue, 8 cm) from its origin."""
    base = img.astype(np.float32)
    m = (mask.astype(np.float32) / 255.0)[..., None]
    tint = base * 0.75 + np.array([0, 255, 0], np.float32) * 0.25
    out = m * tint + (1 - m) * base * 0.45
    tile = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(tile)
    r = max(1.0, img.shape[0] / 256)
    for i, (u, v) in enumerate(uv_crop):
        col = (255, 230, 0) if i >= 468 else (255, 255, 255)
        d.ellipse([u - r * 0.6, v - r * 0.6, u + r * 0.6, v + r * 0.6], fill=col)
    pts = np.array([[0, 0, 0], [AXIS_CM, 0, 0], [0, AXIS_CM, 0], [0, 0, AXIS_CM]], np.float64)
    p = G.project(pts, R, t, K_crop)
    for k, name in enumerate("xyz", start=1):
        d.line([tuple(p[0]), tuple(p[k])], fill=COLORS[name], width=max(2, int(2 * r)))
    if label:
        d.rectangle([0, 0, img.shape[1], 12 * r], fill=(0, 0, 0))
        d.text((2, 1), label, fill=(255, 255, 255))
    return tile


def contact_sheet(out_dir: Path, frames: list, resolution: int, n: int = 12, cols: int = 4) -> Path:
    """Samples up to n kept frames evenly over the set and writes out_dir/preview.png."""
    if not frames:
        return None
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    tiles = []
    for i in idx:
        f = frames[i]
        z = np.load(f.staged, allow_pickle=False)
        uv = G.to_crop(f.lm[:, :2] * np.array([f.hw[1], f.hw[0]]), *f.crop, resolution)
        yaw, pitch, roll = G.euler_from_head_rotation(f.R)
        label = f"#{f.number} y{yaw:+.0f} p{pitch:+.0f} r{roll:+.0f} e{f.err:.2f}px"
        tiles.append(draw_frame(z["image"], z["mask"], uv, f.R, f.t, f.K_crop, label))
    rows = (len(tiles) + cols - 1) // cols
    c = min(cols, len(tiles))
    sheet = Image.new("RGB", (c * resolution + (c - 1) * 4, rows * resolution + (rows - 1) * 4), (30, 30, 30))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * (resolution + 4), (k // cols) * (resolution + 4)))
    path = Path(out_dir) / "preview.png"
    sheet.save(path)
    return path
