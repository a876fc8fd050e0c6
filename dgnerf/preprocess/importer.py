"""Import a user's own tracking results (3DMM coefficients of any length + head poses) as a dataset.

    dgnerf preprocess import --tracking TRACK.json --out DATASET [--resolution 256] [--scale S]
    dgnerf.preprocess.importer.import_tracking("TRACK.json", "DATASET")

TRACK.json: {"frames": [ {...}, ... ], optional defaults at the top level}. Per frame (or top level):
  image       path of the frame (relative to the JSON's folder), any size (required)
  mask        path of a head mask (grey, 255 = head); absent: --full-masks makes all-255 masks
  c2w | w2c   4x4 camera-to-world / head-to-camera (or "R" 3x3 + "t" 3 for the head-to-camera pose)
  intrinsics  [fx, fy, cx, cy] in pixels of that image, or "K" 3x3
  expression  the tracker's coefficients, any length E (the same E for every frame)
  identity    optional [I]; absent: FaceNet on MediaPipe landmarks (needs the preprocess extra)
  person      optional id (default "p000"); split optional (default "train")
Top-level options: "camera": "opencv" (default) or "opengl" (y up, z backwards: converted);
"pixel_centers": "half" (default, the dataset's) or "integer" (OpenCV calibration: +0.5 is added);
"translation_scale": multiplies translations (choose it so the head fits a sphere of head_radius ~ 1.3).
A .npz with the same keys as arrays (strings as numpy unicode arrays; never object arrays) works too.
Images that are not square are centre-cropped to a square and resized, intrinsics adjusted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dgnerf.data import DatasetWriter
from dgnerf.errors import DgnerfError
from dgnerf.face.imaging import crop_square
from dgnerf.face.recognition import FaceNet
from dgnerf.preprocess.sources import MediaPipeFaces

FLIP_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _load_tracking(path: Path) -> tuple[list[dict], dict]:
    if not path.is_file():
        raise DgnerfError(f"--tracking {path}: no such file")
    if path.suffix == ".json":
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DgnerfError(f"--tracking {path}: not valid JSON ({e})") from None
        except RecursionError:
            raise DgnerfError(f"--tracking {path}: JSON nested too deeply to be a tracking file") from None
        if not isinstance(d, dict) or not isinstance(d.get("frames"), list) or not d["frames"]:
            raise DgnerfError(f"--tracking {path}: expected an object with a non-empty list 'frames'")
        top = {k: v for k, v in d.items() if k != "frames"}
        return [dict(top, **f) if isinstance(f, dict) else {"_bad": f} for f in d["frames"]], top
    if path.suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
            arrs = {k: z[k] for k in z.files}
        except ValueError as e:
            raise DgnerfError(f"--tracking {path}: unreadable without pickles ({e}); store strings as unicode arrays") from None
        if "image" not in arrs:
            raise DgnerfError(f"--tracking {path}: no 'image' array (paths of the frames)")
        n = len(arrs["image"])
        top = {k: (v.item() if v.ndim == 0 else v) for k, v in arrs.items() if v.ndim == 0}
        frames = []
        for i in range(n):
            f = dict(top)
            for k, v in arrs.items():
                if v.ndim > 0:
                    if len(v) != n:
                        raise DgnerfError(f"--tracking {path}: array {k!r} has {len(v)} rows, 'image' has {n}")
                    f[k] = v[i].tolist() if v.dtype.kind in "fiu" else str(v[i])
            frames.append(f)
        return frames, top
    raise DgnerfError(f"--tracking {path}: expected a .json or .npz file")


def _mat(v, shape, what):
    a = np.asarray(v, np.float64)
    if a.shape != shape:
        raise ValueError(f"{what}: expected shape {list(shape)}, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return a


def frame_camera(f: dict) -> tuple[np.ndarray, np.ndarray]:
    """(c2w 4x4 in the dataset convention, intrinsics [4] in pixels with half-integer centres)."""
    if "c2w" in f:
        c2w = _mat(f["c2w"], (4, 4), "c2w")
    elif "w2c" in f:
        c2w = np.linalg.inv(_mat(f["w2c"], (4, 4), "w2c"))
    elif "R" in f and "t" in f:
        w2c = np.eye(4)
        w2c[:3, :3] = _mat(f["R"], (3, 3), "R")
        w2c[:3, 3] = _mat(f["t"], (3,), "t")
        c2w = np.linalg.inv(w2c)
    else:
        raise ValueError("no pose: give 'c2w', 'w2c' or 'R' + 't'")
    cam = str(f.get("camera", "opencv")).lower()
    if cam == "opengl":
        c2w = c2w @ FLIP_GL
    elif cam != "opencv":
        raise ValueError(f"camera: expected 'opencv' or 'opengl', got {cam!r}")
    c2w[:3, 3] *= float(f.get("translation_scale", 1.0))
    if "intrinsics" in f:
        k = _mat(f["intrinsics"], (4,), "intrinsics")
    elif "K" in f:
        K = _mat(f["K"], (3, 3), "K")
        k = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    else:
        raise ValueError("no intrinsics: give 'intrinsics' [fx, fy, cx, cy] or 'K'")
    pc = str(f.get("pixel_centers", "half")).lower()
    if pc == "integer":
        k = k + np.array([0, 0, 0.5, 0.5])
    elif pc != "half":
        raise ValueError(f"pixel_centers: expected 'half' or 'integer', got {pc!r}")
    return c2w, k


def square_resize(img: np.ndarray, k: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop to a square and resize to res; intrinsics follow."""
    H, W = img.shape[:2]
    side = min(H, W)
    x0, y0 = (W - side) / 2, (H - side) / 2
    s = res / side
    out = crop_square(img, x0, y0, side, res) if (H, W) != (res, res) else img
    return out, np.array([k[0] * s, k[1] * s, (k[2] - x0) * s, (k[3] - y0) * s])


def import_tracking(
    tracking: str | Path,
    out: str | Path,
    resolution: int = 256,
    head_radius: float = 1.3,
    full_masks: bool = False,
    overwrite: bool = False,
    log=print,
) -> dict:
    """Writes the dataset; returns {"kept": n, "dropped": [(frame, reason)], "expression_dim": E}."""
    from PIL import Image

    path = Path(tracking)
    frames, _ = _load_tracking(path)
    root = path.parent
    dims = {len(f["expression"]) for f in frames if isinstance(f.get("expression"), (list, tuple))}
    if not dims:
        raise DgnerfError(f"--tracking {path}: no frame has an 'expression' list")
    E = max(dims, key=lambda d: sum(1 for f in frames if len(f.get("expression", []) or []) == d))
    encoder = faces = None
    dropped, rows = [], []
    for i, f in enumerate(frames):
        try:
            if "_bad" in f:
                raise ValueError("frame entry is not an object")
            if "image" not in f:
                raise ValueError("no 'image'")
            expr = np.asarray(f.get("expression"), np.float64)
            if expr.shape != (E,):
                raise ValueError(f"expression: expected length {E} (as most frames), got {list(expr.shape)}")
            c2w, k = frame_camera(f)
            ip = root / str(f["image"])
            with Image.open(ip) as im:
                rgb = np.asarray(im.convert("RGB"))
            if "mask" in f and f["mask"]:
                with Image.open(root / str(f["mask"])) as im:
                    mask = np.asarray(im.convert("L"))
                if mask.shape != rgb.shape[:2]:
                    raise ValueError(f"mask {f['mask']} is {mask.shape[1]}x{mask.shape[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
            elif full_masks:
                mask = np.full(rgb.shape[:2], 255, np.uint8)
            else:
                raise ValueError("no 'mask' (pass --full-masks to use the whole image)")
            if "identity" in f and f["identity"] is not None:
                ident = np.asarray(f["identity"], np.float32)
            else:
                if encoder is None:
                    encoder, faces = FaceNet(), MediaPipeFaces(static=True, max_faces=1)
                lms = faces(rgb)
                if not lms:
                    raise ValueError("no identity given and no face found to compute one")
                ident = encoder(rgb, lms[0][:, :2] * np.array([rgb.shape[1], rgb.shape[0]]))
            img_r, k_r = square_resize(rgb, k, resolution)
            mask_r, _ = square_resize(mask, k, resolution)
            rows.append((i, img_r, mask_r, c2w, k_r, expr, ident, str(f.get("person", "p000")), str(f.get("split", "train")), str(f["image"])))
        except (ValueError, OSError, DgnerfError) as e:
            dropped.append((i, str(e)))
        except Exception as e:  # noqa: BLE001 - a frame's damaged file (e.g. Pillow's decompression-bomb refusal) drops the frame
            dropped.append((i, f"{f.get('image', '?')}: {type(e).__name__}: {str(e)[:160]}"))
    if not rows:
        raise DgnerfError(f"--tracking {path}: no frame could be imported; first problems: " + "; ".join(f"frame {i}: {r}" for i, r in dropped[:3]))
    idims = {len(r[6]) for r in rows}
    if len(idims) > 1:
        raise DgnerfError(f"--tracking {path}: identity codes of different lengths {sorted(idims)}")
    with DatasetWriter(
        out, resolution, expression_dim=E, identity_dim=idims.pop(), head_radius=head_radius, meta={"generator": "dgnerf preprocess import", "tracking": path.name}, overwrite=overwrite
    ) as w:
        for i, img, mask, c2w, k, expr, ident, person, split, src in rows:
            try:
                w.add_frame(img, mask, c2w, k, expr, ident, person=person, split=split, source=src)
            except DgnerfError as e:
                dropped.append((i, str(e)))
    for i, r in dropped[:20]:
        log(f"  dropped frame {i}: {r}")
    log(f"imported {len(rows)}/{len(frames)} frames (expression length {E}) into {out}")
    return {"kept": len(rows), "dropped": dropped, "expression_dim": E}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dgnerf preprocess import", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking", required=True, help="TRACK.json or .npz (format: docs/preprocess.md)")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--head-radius", type=float, default=1.3)
    p.add_argument("--full-masks", action="store_true", help="frames without a mask get an all-255 mask")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    import_tracking(a.tracking, a.out, a.resolution, a.head_radius, a.full_masks, a.overwrite)
    return 0
