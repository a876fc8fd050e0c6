"""Pictures and videos people look at: image grids, loss curves and PNG/MP4 writing, without a plotting library."""
from __future__ import annotations

import math
import os

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image, ImageDraw

from dgnerf.fileio import atomic_output


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float in [0,1] -> [H,W,3] uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def grid(images: list[np.ndarray], cols: int, pad: int = 2, scale: int = 1, fill: int = 32) -> np.ndarray:
    """Equal-size [H,W,3] uint8 tiles -> one grid image (nearest-neighbour scaled by `scale`)."""
    h, w = images[0].shape[:2]
    rows = max(1, math.ceil(len(images) / cols))
    out = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), fill, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
        out[y:y + h * scale, x:x + w * scale] = im.repeat(scale, 0).repeat(scale, 1)
    return out


def save_png(path: str, array: np.ndarray) -> None:
    """Through a temporary file: a failed save leaves no partial PNG."""
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def loss_curve_png(path: str, series: dict[str, list[tuple[int, float]]], title: str = "training loss",
                   size=(720, 420)) -> None:
    """Line plot of named (step, value) series on a log-y axis, drawn with PIL."""
    W, H = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [(s, v) for ser in series.values() for s, v in ser if v > 0 and math.isfinite(v)]
    d.text((left, 8), title, fill="black")
    if not pts:
        img.save(path)
        return
    s0, s1 = min(p[0] for p in pts), max(p[0] for p in pts)
    lv = [math.log10(p[1]) for p in pts]
    v0, v1 = math.floor(min(lv) * 4) / 4, math.ceil(max(lv) * 4) / 4
    if v1 - v0 < 0.25:
        v1 = v0 + 0.25
    s1 = max(s1, s0 + 1)

    def xy(s, v):
        x = left + (s - s0) / (s1 - s0) * (W - left - right)
        y = top + (v1 - math.log10(v)) / (v1 - v0) * (H - top - bottom)
        return x, y

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    k = v0
    while k <= v1 + 1e-9:
        y = xy(s0, 10**k)[1]
        d.line([left, y, W - right, y], fill=(225, 225, 225))
        d.text((4, y - 6), f"{10**k:.3g}", fill="black")
        k += 0.25 if v1 - v0 <= 1.5 else 0.5
    for i in range(6):
        s = s0 + (s1 - s0) * i / 5
        x = xy(s, 10**v0)[0]
        d.text((x - 10, H - bottom + 6), f"{int(s)}", fill="black")
    d.text((W // 2 - 15, H - 16), "step", fill="black")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for i, (name, ser) in enumerate(series.items()):
        c = colours[i % len(colours)]
        line = [xy(s, v) for s, v in ser if v > 0 and math.isfinite(v)]
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        for x, y in line if len(line) <= 20 else []:  # markers where points are few (one point draws no line)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=c, width=2)
        d.text((W - right - 150, top + 6 + 14 * i), name, fill=c)
    img.save(path)


def write_video(frames, out: str, fps: float) -> str:
    """MP4 through imageio-ffmpeg; if that is unavailable or fails, a GIF next to it. Returns the path written.
    Written through a temporary file: a failure leaves no partial video behind."""
    if not frames:
        raise ValueError(f"{out}: no frames to write")
    ext = os.path.splitext(out)[1].lower()
    if ext == ".mp4":
        try:
            with atomic_output(out) as tmp:
                with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8,
                                        macro_block_size=1) as w:
                    for f in frames:
                        w.append_data(f)
            return out
        except Exception as e:  # no ffmpeg backend, codec missing...
            gif = os.path.splitext(out)[0] + ".gif"
            print(f"MP4 writing failed ({type(e).__name__}: {e}); writing {gif} instead")
            out = gif
    with atomic_output(out) as tmp:
        imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
    return out
