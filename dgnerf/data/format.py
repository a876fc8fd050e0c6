"""The dgnerf dataset format (version 1): writer, checker, loader. docs/dataset.md is the user's description.

A dataset is a directory:

    manifest.json                  format, version, resolution, code lengths, persons, frames (file names)
    frames.safetensors             per-frame arrays, row i = manifest frame i (or frames.npz, no pickles)
    images/000000.png ...          8-bit RGB, exactly resolution (height x width)
    masks/000000.png ...           8-bit grey head mask (255 = head), same size
    expression_basis.safetensors   optional: the basis the expression codes were projected on

Arrays in frames.*: c2w [N,4,4] (camera-to-world, OpenCV camera axes x right / y down / z forward, the head
at the world origin: the tracked head pose is the extrinsic), intrinsics [N,4] (fx, fy, cx, cy in pixels of
the stored image; top-left image corner = (0,0), pixel centres at half-integers), expression [N,E],
identity [N,I], optional gaze [N,G]. All float32.

Nothing here unpickles anything: JSON, PNG, safetensors, and npz read with allow_pickle=False.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dgnerf.codes import EXPRESSION_DIM, IDENTITY_DIM
from dgnerf.errors import DgnerfError
from dgnerf.fileio import atomic_write_bytes

FORMAT_NAME = "dgnerf-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS_SAFETENSORS = "frames.safetensors"
ARRAYS_NPZ = "frames.npz"
EXPRESSION_BASIS = "expression_basis.safetensors"
ROTATION_TOL = 1e-3  # |R^T R - I|_max and |det R - 1|; float32 poses from trackers sit far below this

REQUIRED_ARRAYS = ("c2w", "intrinsics", "expression", "identity")


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------


def _as_hw(resolution) -> tuple[int, int]:
    """resolution: int (square) or (height, width)."""
    if isinstance(resolution, (int, np.integer)):
        h = w = int(resolution)
    else:
        try:
            h, w = (int(v) for v in resolution)
        except Exception:
            raise DgnerfError(f"resolution: expected an int or (height, width), got {resolution!r}") from None
    if h <= 0 or w <= 0:
        raise DgnerfError(f"resolution: expected positive sizes, got (height={h}, width={w})")
    return h, w


def _to_numpy(x, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    try:
        return np.asarray(x)
    except Exception:
        raise DgnerfError(f"{name}: expected an array, got {type(x).__name__}") from None


def _image_to_uint8_hwc(image, name: str, hw: tuple[int, int], channels: int) -> np.ndarray:
    """Accepts HxWxC / CxHxW (torch layout), uint8 or float in [0,1]; returns uint8 HxWxC (C=3) or HxW (C=1)."""
    a = _to_numpy(image, name)
    h, w = hw
    if channels == 1:
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        elif a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise DgnerfError(f"{name}: expected a [H,W] (or [1,H,W]) mask, got shape {tuple(a.shape)}")
    else:
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
            a = np.transpose(a, (1, 2, 0))
        if a.ndim != 3 or a.shape[-1] != 3:
            raise DgnerfError(f"{name}: expected an RGB image [H,W,3] or [3,H,W], got shape {tuple(a.shape)}")
    if a.shape[:2] != (h, w):
        raise DgnerfError(f"{name}: expected height x width {h}x{w} (the dataset resolution), got {a.shape[0]}x{a.shape[1]}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return np.ascontiguousarray(a.astype(np.uint8) * 255)
    if not np.issubdtype(a.dtype, np.floating):
        raise DgnerfError(f"{name}: expected uint8 or float in [0,1], got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise DgnerfError(f"{name}: contains NaN or infinite values")
    if a.min() < -1e-3 or a.max() > 1 + 1e-3:
        raise DgnerfError(f"{name}: float values must lie in [0,1], got range [{a.min():.4g}, {a.max():.4g}]")
    return np.ascontiguousarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8))


def rotation_problem(c2w: np.ndarray, tol: float = ROTATION_TOL) -> str | None:
    """None when c2w is a rigid 4x4 transform (R^T R = I, det R = +1, last row 0 0 0 1), else a description."""
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape != (4, 4):
        return f"expected a 4x4 matrix, got shape {m.shape}"
    if not np.isfinite(m).all():
        return "contains NaN or infinite values"
    r = m[:3, :3]
    orth = float(np.abs(r.T @ r - np.eye(3)).max())
    if orth > tol:
        return f"pose is not a rotation: max |R^T R - I| = {orth:.3g} (tolerance {tol:g})"
    det = float(np.linalg.det(r))
    if abs(det - 1.0) > tol:
        return f"pose is not a rotation: det R = {det:.4g} (expected +1; a reflection or a scaled matrix)"
    if np.abs(m[3] - np.array([0, 0, 0, 1.0])).max() > tol:
        return f"last row of c2w must be [0, 0, 0, 1], got {m[3].tolist()}"
    return None


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """safetensors.numpy.save with a canonical header (sorted keys, compact JSON, padded to 8 bytes):
    safetensors writes its metadata map in hash order, so the same content could give different bytes.
    Data offsets in the header are relative to the end of the header, so rewriting it is safe."""
    import struct

    from safetensors.numpy import save

    raw = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata or None)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def _save_png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=4)


# ----------------------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------------------


class DatasetWriter:
    """Writes a dataset directory frame by frame. PNGs go to disk at once; the per-frame arrays and the
    manifest are written by close() (the manifest last, so an interrupted write has no manifest and is
    reported as incomplete rather than read half-way).

        with DatasetWriter("out/set", resolution=256) as w:
            w.add_frame(image, mask, c2w, intrinsics, expression, identity, person="p000", split="train")
            w.set_expression_basis({"basis": B})          # optional, B is [E, D]

    resolution: int or (height, width). expression_dim: E (46 by default; imported trackers may use
    another length). identity_dim: 512. gaze_dim: G or None (then add_frame must not get gaze).
    head_radius: radius of a sphere about the origin that holds the head, in the units of the c2w
    translations (the trainer sets near/far from it). near/far: optional explicit ray bounds.
    background: optional RGB in [0,1] that fills the images outside the mask (None: real background).
    arrays: "safetensors" (default) or "npz". overwrite: replace an existing dataset in `root`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution,
        expression_dim: int = EXPRESSION_DIM,
        identity_dim: int = IDENTITY_DIM,
        gaze_dim: int | None = None,
        head_radius: float = 1.0,
        near: float | None = None,
        far: float | None = None,
        background: Sequence[float] | None = None,
        meta: dict | None = None,
        arrays: str = "safetensors",
        overwrite: bool = False,
    ):
        self.root = os.fspath(root)
        self.height, self.width = _as_hw(resolution)
        for name, v in (("expression_dim", expression_dim), ("identity_dim", identity_dim)):
            if int(v) <= 0:
                raise DgnerfError(f"{name}: expected a positive length, got {v}")
        if gaze_dim is not None and int(gaze_dim) <= 0:
            raise DgnerfError(f"gaze_dim: expected a positive length or None, got {gaze_dim}")
        if not (head_radius > 0 and math.isfinite(head_radius)):
            raise DgnerfError(f"head_radius: expected a positive number, got {head_radius}")
        if arrays not in ("safetensors", "npz"):
            raise DgnerfError(f"arrays: expected 'safetensors' or 'npz', got {arrays!r}")
        if background is not None and (len(background) != 3 or not all(0 <= float(c) <= 1 for c in background)):
            raise DgnerfError(f"background: expected 3 values in [0,1], got {background!r}")
        self.expression_dim = int(expression_dim)
        self.identity_dim = int(identity_dim)
        self.gaze_dim = None if gaze_dim is None else int(gaze_dim)
        self.head_radius = float(head_radius)
        self.near, self.far = near, far
        self.background = None if background is None else [float(c) for c in background]
        self.meta = dict(meta or {})
        self.arrays_format = arrays
        self._frames: list[dict] = []
        self._persons: dict[str, str] = {}  # id -> split, in first-seen order
        self._arrays: dict[str, list[np.ndarray]] = {k: [] for k in REQUIRED_ARRAYS}
        if self.gaze_dim is not None:
            self._arrays["gaze"] = []
        self._basis: dict[str, np.ndarray] | None = None
        self._basis_meta: dict[str, str] | None = None
        self._closed = False

        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise DgnerfError(f"{self.root}: exists and is not a directory")
        if os.path.isdir(self.root) and os.listdir(self.root):
            if not overwrite:
                raise DgnerfError(f"{self.root}: directory is not empty (pass overwrite=True / --overwrite to replace a dataset)")
            self._clear_existing()
        os.makedirs(os.path.join(self.root, "images"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "masks"), exist_ok=True)

    def _clear_existing(self) -> None:
        # Only remove what a dataset consists of; refuse to wipe a directory that is something else.
        known = {MANIFEST, ARRAYS_SAFETENSORS, ARRAYS_NPZ, EXPRESSION_BASIS, "images", "masks", "preview.png"}
        entries = set(os.listdir(self.root))
        if MANIFEST not in entries and not entries <= known:
            raise DgnerfError(f"{self.root}: not empty and holds no {MANIFEST}; refusing to overwrite a directory that is not a dataset")
        for e in entries & known:
            p = os.path.join(self.root, e)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        return False

    def __len__(self) -> int:
        return len(self._frames)

    def add_frame(
        self,
        image,
        mask,
        c2w,
        intrinsics,
        expression,
        identity,
        person: str,
        split: str = "train",
        gaze=None,
        source: str | None = None,
    ) -> int:
        """Adds one frame; returns its index. image: [H,W,3] / [3,H,W], uint8 or float in [0,1]. mask: [H,W]
        (uint8, bool or float in [0,1]; 1 = head). c2w: [4,4]. intrinsics: (fx, fy, cx, cy) in pixels.
        expression: [E]. identity: [I]. person: the person's id (str). split: that person's split (all
        frames of a person share it). gaze: [G] when the writer has gaze_dim. source: free text
        (e.g. 'clip.mp4#frame=12')."""
        if self._closed:
            raise DgnerfError("DatasetWriter.add_frame: the writer is closed")
        i = len(self._frames)
        hw = (self.height, self.width)
        img = _image_to_uint8_hwc(image, f"frame {i}: image", hw, 3)
        msk = _image_to_uint8_hwc(mask, f"frame {i}: mask", hw, 1)
        person = str(person)
        split = str(split)
        if not person:
            raise DgnerfError(f"frame {i}: person must be a non-empty id")
        if not split:
            raise DgnerfError(f"frame {i}: split must be a non-empty name (train, val, test)")
        if self._persons.setdefault(person, split) != split:
            raise DgnerfError(
                f"frame {i}: person {person!r} is in split {self._persons[person]!r}, got split {split!r}; "
                "a dataset splits by person"
            )
        values = {
            "c2w": (_to_numpy(c2w, f"frame {i}: c2w"), (4, 4)),
            "intrinsics": (_to_numpy(intrinsics, f"frame {i}: intrinsics"), (4,)),
            "expression": (_to_numpy(expression, f"frame {i}: expression"), (self.expression_dim,)),
            "identity": (_to_numpy(identity, f"frame {i}: identity"), (self.identity_dim,)),
        }
        if self.gaze_dim is not None:
            if gaze is None:
                raise DgnerfError(f"frame {i}: gaze is required (the writer was made with gaze_dim={self.gaze_dim})")
            values["gaze"] = (_to_numpy(gaze, f"frame {i}: gaze"), (self.gaze_dim,))
        elif gaze is not None:
            raise DgnerfError(f"frame {i}: gaze given but the writer was made with gaze_dim=None")
        for name, (a, shape) in values.items():
            if tuple(a.shape) != shape:
                raise DgnerfError(f"frame {i}: {name}: expected shape {list(shape)}, got {list(a.shape)}")
            if not np.isfinite(a.astype(np.float64)).all():
                raise DgnerfError(f"frame {i}: {name} contains NaN or infinite values")
        prob = rotation_problem(values["c2w"][0])
        if prob:
            raise DgnerfError(f"frame {i}: c2w: {prob}")
        k = values["intrinsics"][0]
        if not (k[0] > 0 and k[1] > 0):
            raise DgnerfError(f"frame {i}: intrinsics: fx and fy must be positive, got fx={k[0]}, fy={k[1]}")

        img_name = f"images/{i:06d}.png"
        msk_name = f"masks/{i:06d}.png"
        _save_png(os.path.join(self.root, img_name), img)
        _save_png(os.path.join(self.root, msk_name), msk)
        for name, (a, _) in values.items():
            self._arrays[name].append(a.astype(np.float32))
        entry = {"person": person, "split": split, "image": img_name, "mask": msk_name}
        if source is not None:
            entry["source"] = str(source)
        self._frames.append(entry)
        return i

    def set_expression_basis(self, tensors: dict, metadata: dict | None = None) -> None:
        """Stores the expression basis with the set: tensors must hold 'basis' [E, D] (row k = component k);
        anything else (e.g. 'mean' [D], 'stddev' [E]) is kept as is. metadata: str -> str, the safetensors
        metadata of the file (read it with HeadDataset.expression_basis_metadata)."""
        if "basis" not in tensors:
            raise DgnerfError("set_expression_basis: tensors must contain 'basis' [E, D]")
        out = {k: np.ascontiguousarray(_to_numpy(v, f"expression basis {k}")) for k, v in tensors.items()}
        b = out["basis"]
        if b.ndim != 2 or b.shape[0] != self.expression_dim:
            raise DgnerfError(f"expression basis: 'basis' must be [E={self.expression_dim}, D], got shape {list(b.shape)}")
        self._basis = out
        self._basis_meta = {str(k): str(v) for k, v in (metadata or {}).items()}

    def close(self) -> str:
        """Writes frames.safetensors (or .npz), the basis and manifest.json (last); returns the root."""
        if self._closed:
            return self.root
        if not self._frames:
            raise DgnerfError(f"{self.root}: no frames were added; an empty dataset is not written")
        arrays = {k: np.stack(v).astype(np.float32) for k, v in self._arrays.items()}
        if self.arrays_format == "safetensors":
            atomic_write_bytes(os.path.join(self.root, ARRAYS_SAFETENSORS), safetensors_bytes(arrays, {"format": FORMAT_NAME}))
            arrays_name = ARRAYS_SAFETENSORS
        else:
            import io

            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(os.path.join(self.root, ARRAYS_NPZ), buf.getvalue())
            arrays_name = ARRAYS_NPZ
        basis_name = None
        if self._basis is not None:
            atomic_write_bytes(os.path.join(self.root, EXPRESSION_BASIS), safetensors_bytes(self._basis, self._basis_meta))
            basis_name = EXPRESSION_BASIS
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "resolution": {"height": self.height, "width": self.width},
            "expression_dim": self.expression_dim,
            "identity_dim": self.identity_dim,
            "gaze_dim": self.gaze_dim,
            "camera": {"convention": "opencv", "pose": "camera_to_world", "world": "head_at_origin"},
            "head_radius": self.head_radius,
            "near": self.near,
            "far": self.far,
            "background": self.background,
            "arrays": arrays_name,
            "expression_basis": basis_name,
            "persons": [{"id": p, "split": s} for p, s in self._persons.items()],
            "num_frames": len(self._frames),
            "frames": self._frames,
            "meta": self.meta,
        }
        atomic_write_bytes(os.path.join(self.root, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
        self._closed = True
        return self.root


# ----------------------------------------------------------------------------------------------------------
# reading + checking
# ----------------------------------------------------------------------------------------------------------


def read_manifest(root: str | os.PathLike) -> dict:
    """Parses and validates manifest.json's structure; raises DgnerfError naming the file and the field."""
    root = os.fspath(root)
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise DgnerfError(f"{root}: dataset directory not found")
    if not os.path.isfile(path):
        raise DgnerfError(f"{path}: missing (not a dgnerf dataset, or its writer was never closed)")
    try:
        with open(path, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
    except Exception as e:
        raise DgnerfError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise DgnerfError(f"{path}: 'format' must be {FORMAT_NAME!r}, got {m.get('format') if isinstance(m, dict) else type(m).__name__!r}")
    if m.get("version") != FORMAT_VERSION:
        raise DgnerfError(f"{path}: unsupported 'version' {m.get('version')!r} (this dgnerf reads version {FORMAT_VERSION})")

    def need(key, types, what):
        if key not in m:
            raise DgnerfError(f"{path}: missing field {key!r} ({what})")
        if not isinstance(m[key], types) or isinstance(m[key], bool):
            raise DgnerfError(f"{path}: field {key!r} must be {what}, got {m[key]!r}")

    need("resolution", dict, "{'height': H, 'width': W}")
    r = m["resolution"]
    if not all(isinstance(r.get(k), int) and r.get(k) > 0 for k in ("height", "width")):
        raise DgnerfError(f"{path}: field 'resolution' must be {{'height': H, 'width': W}} with positive ints, got {r!r}")
    need("expression_dim", int, "a positive int")
    need("identity_dim", int, "a positive int")
    need("arrays", str, f"{ARRAYS_SAFETENSORS!r} or {ARRAYS_NPZ!r}")
    need("persons", list, "a list of {'id', 'split'}")
    need("frames", list, "a list of {'person', 'split', 'image', 'mask'}")
    need("head_radius", (int, float), "a positive number")
    if not (math.isfinite(m["head_radius"]) and m["head_radius"] > 0):
        raise DgnerfError(f"{path}: field 'head_radius' must be a positive number, got {m['head_radius']!r}")
    for key in ("near", "far"):
        v = m.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise DgnerfError(f"{path}: field {key!r} must be a non-negative number or null, got {v!r}")
    if m.get("near") is not None and m.get("far") is not None and not m["near"] < m["far"]:
        raise DgnerfError(f"{path}: 'near' ({m['near']}) must be less than 'far' ({m['far']})")
    if m["expression_dim"] <= 0 or m["identity_dim"] <= 0:
        raise DgnerfError(f"{path}: expression_dim and identity_dim must be positive")
    if m.get("gaze_dim") is not None and (not isinstance(m["gaze_dim"], int) or m["gaze_dim"] <= 0):
        raise DgnerfError(f"{path}: field 'gaze_dim' must be a positive int or null, got {m['gaze_dim']!r}")
    if m["arrays"] not in (ARRAYS_SAFETENSORS, ARRAYS_NPZ):
        raise DgnerfError(f"{path}: field 'arrays' must be {ARRAYS_SAFETENSORS!r} or {ARRAYS_NPZ!r}, got {m['arrays']!r}")
    for i, p in enumerate(m["persons"]):
        if not isinstance(p, dict) or not isinstance(p.get("id"), str) or not isinstance(p.get("split"), str):
            raise DgnerfError(f"{path}: persons[{i}] must be {{'id': str, 'split': str}}, got {p!r}")
    for i, fr in enumerate(m["frames"]):
        if not isinstance(fr, dict) or not all(isinstance(fr.get(k), str) for k in ("person", "split", "image", "mask")):
            raise DgnerfError(f"{path}: frames[{i}] must have string fields person, split, image, mask; got {fr!r}")
    if m.get("num_frames", len(m["frames"])) != len(m["frames"]):
        raise DgnerfError(f"{path}: num_frames = {m['num_frames']} but {len(m['frames'])} frames are listed")
    return m


def load_arrays(root: str | os.PathLike, manifest: dict) -> dict[str, np.ndarray]:
    """Loads frames.safetensors / frames.npz (never pickles); raises DgnerfError naming the file."""
    path = os.path.join(os.fspath(root), manifest["arrays"])
    if not os.path.isfile(path):
        raise DgnerfError(f"{path}: missing (the manifest names it as the per-frame arrays file)")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        from safetensors.numpy import load_file

        return load_file(path)
    except Exception as e:
        raise DgnerfError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _safe_relpath(root: str, rel: str) -> str | None:
    """The absolute file path for a manifest entry, or None if it escapes the dataset directory."""
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        return None
    return os.path.join(root, rel)


def _check_png(path: str, rel: str, kind: str, hw: tuple[int, int], full: bool) -> str | None:
    from PIL import Image

    if path is None:
        return f"{rel}: {kind} path must be relative and inside the dataset directory"
    if not os.path.isfile(path):
        return f"{rel}: missing {kind}"
    try:
        with Image.open(path) as im:
            size = im.size
            mode = im.mode
            if full:
                im.load()
    except Exception as e:
        return f"{rel}: unreadable {kind} ({type(e).__name__}: {e})"
    if (size[1], size[0]) != hw:
        return f"{rel}: wrong {kind} size: expected {hw[0]}x{hw[1]} (height x width, the manifest's resolution), got {size[1]}x{size[0]}"
    ok_modes = ("RGB",) if kind == "image" else ("L", "1")
    if mode not in ok_modes:
        return f"{rel}: wrong {kind} mode: expected {' or '.join(ok_modes)} (8-bit), got {mode}"
    return None


def check_dataset(root: str | os.PathLike, level: str = "full", progress: bool = False) -> list[str]:
    """Every problem of a dataset as one line each, naming the file (empty list: the set is fine).

    level: 'full' decodes every PNG; 'header' only opens them (size, mode: fast on big sets); 'arrays'
    skips the PNGs except for existence. Checks: manifest structure; arrays file, keys, shapes, code
    lengths; NaN/inf; c2w a rigid transform (R^T R = I, det R = +1); fx, fy > 0; each frame's image and
    mask present, readable, of the manifest's size; persons consistent and each in one split;
    the expression basis when named."""
    if level not in ("full", "header", "arrays"):
        raise DgnerfError(f"check_dataset: level must be 'full', 'header' or 'arrays', got {level!r}")
    root = os.fspath(root)
    try:
        m = read_manifest(root)
    except DgnerfError as e:
        return [str(e)]
    problems: list[str] = []
    hw = (m["resolution"]["height"], m["resolution"]["width"])
    n = len(m["frames"])
    arrays_name = m["arrays"]
    if n == 0:
        problems.append(f"{MANIFEST}: lists no frames")

    # persons and splits
    person_split = {}
    for p in m["persons"]:
        if p["id"] in person_split:
            problems.append(f"{MANIFEST}: person {p['id']!r} listed twice in 'persons'")
        person_split[p["id"]] = p["split"]
    for i, fr in enumerate(m["frames"]):
        if fr["person"] not in person_split:
            problems.append(f"{MANIFEST}: frame {i} ({fr['image']}): person {fr['person']!r} is not in 'persons'")
        elif person_split[fr["person"]] != fr["split"]:
            problems.append(
                f"{MANIFEST}: frame {i} ({fr['image']}): split {fr['split']!r} differs from person "
                f"{fr['person']!r}'s split {person_split[fr['person']]!r}"
            )

    # arrays
    try:
        arrays = load_arrays(root, m)
    except DgnerfError as e:
        problems.append(str(e))
        arrays = None
    if arrays is not None:
        expected = {
            "c2w": (n, 4, 4),
            "intrinsics": (n, 4),
            "expression": (n, m["expression_dim"]),
            "identity": (n, m["identity_dim"]),
        }
        if m.get("gaze_dim") is not None:
            expected["gaze"] = (n, m["gaze_dim"])
        good = {}
        for key, shape in expected.items():
            if key not in arrays:
                problems.append(f"{arrays_name}: missing array {key!r} (expected shape {list(shape)})")
                continue
            a = arrays[key]
            if tuple(a.shape) != shape:
                what = {"expression": "wrong expression code length", "identity": "wrong identity code length", "gaze": "wrong gaze length"}.get(key, f"wrong {key} shape")
                problems.append(f"{arrays_name}: {what}: array {key!r} expected shape {list(shape)} (from {MANIFEST}), got {list(a.shape)}")
                continue
            if not np.issubdtype(a.dtype, np.floating):
                problems.append(f"{arrays_name}: array {key!r} must be float, got {a.dtype}")
                continue
            good[key] = a
        for key, a in good.items():
            bad = ~np.isfinite(a.reshape(n, -1)).all(axis=1)
            for i in np.nonzero(bad)[0][:20]:
                problems.append(f"{arrays_name}: frame {i} ({m['frames'][i]['image']}): {key} contains NaN or infinite values")
            if bad.sum() > 20:
                problems.append(f"{arrays_name}: {key}: {int(bad.sum()) - 20} more frames with NaN or infinite values")
        if "c2w" in good:
            c2w = good["c2w"].astype(np.float64)
            finite = np.isfinite(c2w.reshape(n, -1)).all(axis=1)
            count = 0
            for i in range(n):
                if finite[i]:
                    prob = rotation_problem(c2w[i])
                    if prob:
                        count += 1
                        if count <= 20:
                            problems.append(f"{arrays_name}: frame {i} ({m['frames'][i]['image']}): c2w: {prob}")
            if count > 20:
                problems.append(f"{arrays_name}: c2w: {count - 20} more frames whose pose is not a rotation")
        if "intrinsics" in good:
            k = good["intrinsics"]
            bad = np.nonzero(np.isfinite(k).all(axis=1) & ~((k[:, 0] > 0) & (k[:, 1] > 0)))[0]
            for i in bad[:20]:
                problems.append(f"{arrays_name}: frame {i} ({m['frames'][i]['image']}): intrinsics: fx and fy must be positive, got {k[i, :2].tolist()}")

    # expression basis
    if m.get("expression_basis"):
        bpath = _safe_relpath(root, m["expression_basis"])
        if bpath is None or not os.path.isfile(bpath):
            problems.append(f"{m['expression_basis']}: missing (named by {MANIFEST} as the expression basis)")
        else:
            try:
                from safetensors.numpy import load_file

                b = load_file(bpath).get("basis")
                if b is None:
                    problems.append(f"{m['expression_basis']}: has no 'basis' tensor")
                elif b.ndim != 2 or b.shape[0] != m["expression_dim"]:
                    problems.append(f"{m['expression_basis']}: 'basis' must be [E={m['expression_dim']}, D], got {list(b.shape)}")
                elif not np.isfinite(b).all():
                    problems.append(f"{m['expression_basis']}: 'basis' contains NaN or infinite values")
            except Exception as e:
                problems.append(f"{m['expression_basis']}: unreadable ({type(e).__name__}: {e})")

    # images and masks
    frames = m["frames"]
    it: Iterable = enumerate(frames)
    if progress and n > 200:
        from tqdm import tqdm

        it = tqdm(it, total=n, desc="checking frames", unit="frame")
    for i, fr in it:
        for kind in ("image", "mask"):
            rel = fr[kind]
            path = _safe_relpath(root, rel)
            if level == "arrays":
                if path is None or not os.path.isfile(path):
                    problems.append(f"{rel}: missing {kind}" if path else f"{rel}: {kind} path must be inside the dataset")
                continue
            prob = _check_png(path, rel, kind, hw, full=(level == "full"))
            if prob:
                problems.append(prob)
    return problems


def format_problems(root: str, problems: list[str]) -> str:
    head = f"dataset {root}: {len(problems)} problem{'s' if len(problems) != 1 else ''} (run `dgnerf dataset check {root}`):"
    lines = problems[:50]
    more = [f"... and {len(problems) - 50} more"] if len(problems) > 50 else []
    return "\n".join([head] + [f"  - {p}" for p in lines] + more)


@dataclass
class FrameInfo:
    index: int
    person: str
    person_index: int
    split: str
    image: str
    mask: str
    source: str | None


class HeadDataset:
    """torch Dataset over a dgnerf dataset directory (optionally one split).

    item = {'image': [3,H,W] float32 in [0,1], 'mask': [1,H,W] float32 in [0,1], 'c2w': [4,4],
            'intrinsics': [4] (fx, fy, cx, cy), 'expression': [E], 'identity': [I],
            'person': int64 scalar (index into .persons, over the WHOLE set so ids agree across splits),
            'index': int64 scalar (frame index in the manifest), 'gaze': [G] when the set has gaze}

    check: 'header' (default: manifest, arrays, every PNG opened), 'full' (every PNG decoded) or 'none'.
    A defective set raises DgnerfError listing the same problems `dgnerf dataset check` prints.
    """

    def __init__(self, root: str | os.PathLike, split: str | Sequence[str] | None = None, check: str = "header"):
        import torch

        self.root = os.fspath(root)
        if check != "none":
            problems = check_dataset(self.root, level=check)
            if problems:
                raise DgnerfError(format_problems(self.root, problems))
        m = read_manifest(self.root)
        self.manifest = m
        self.height, self.width = m["resolution"]["height"], m["resolution"]["width"]
        self.expression_dim = m["expression_dim"]
        self.identity_dim = m["identity_dim"]
        self.gaze_dim = m.get("gaze_dim")
        self.head_radius = float(m["head_radius"])
        self.near, self.far = m.get("near"), m.get("far")
        self.background = m.get("background")
        self.persons = [p["id"] for p in m["persons"]]
        self.person_splits = {p["id"]: p["split"] for p in m["persons"]}
        pidx = {p: i for i, p in enumerate(self.persons)}
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        all_splits = {p["split"] for p in m["persons"]}
        if splits is not None and not splits <= all_splits:
            raise DgnerfError(f"split: {sorted(splits - all_splits)} not in this dataset (it has {sorted(all_splits)})")
        arrays = load_arrays(self.root, m)
        keep = [i for i, fr in enumerate(m["frames"]) if splits is None or fr["split"] in splits]
        self.frames = [
            FrameInfo(i, fr["person"], pidx.get(fr["person"], -1), fr["split"], fr["image"], fr["mask"], fr.get("source"))
            for i, fr in ((i, m["frames"][i]) for i in keep)
        ]
        sel = np.asarray(keep, dtype=np.int64)
        names = ["c2w", "intrinsics", "expression", "identity"] + (["gaze"] if self.gaze_dim is not None else [])
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(arrays[k][sel].astype(np.float32))) for k in names}

    @property
    def split_persons(self) -> list[str]:
        """Ids of the persons that have frames in this (split-filtered) dataset, in manifest order."""
        seen = {f.person for f in self.frames}
        return [p for p in self.persons if p in seen]

    def expression_basis(self) -> dict | None:
        """The stored expression basis as torch tensors ('basis' [E, D], ...), or None."""
        name = self.manifest.get("expression_basis")
        if not name:
            return None
        from safetensors.torch import load_file

        return load_file(os.path.join(self.root, name))

    def expression_basis_metadata(self) -> dict:
        """The string metadata stored with the expression basis ({} when there is none)."""
        name = self.manifest.get("expression_basis")
        if not name:
            return {}
        from safetensors import safe_open

        with safe_open(os.path.join(self.root, name), "np") as f:
            meta = f.metadata() or {}
        return dict(meta)

    def __len__(self) -> int:
        return len(self.frames)

    def _read_png(self, rel: str, kind: str) -> np.ndarray:
        from PIL import Image

        path = os.path.join(self.root, rel)
        prob = _check_png(path, rel, kind, (self.height, self.width), full=False)
        if prob:
            raise DgnerfError(format_problems(self.root, [prob]))
        try:
            with Image.open(path) as im:
                return np.array(im.convert("L") if kind == "mask" else im)
        except Exception as e:
            raise DgnerfError(format_problems(self.root, [f"{rel}: unreadable {kind} ({type(e).__name__}: {e})"])) from None

    def __getitem__(self, j: int) -> dict:
        import torch

        if not -len(self) <= j < len(self):
            raise IndexError(f"HeadDataset index {j} out of range (0..{len(self) - 1})")
        f = self.frames[j]
        img = self._read_png(f.image, "image")
        msk = self._read_png(f.mask, "mask")
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0),
            "mask": torch.from_numpy(np.ascontiguousarray(msk[None])).float().div_(255.0),
            "person": torch.tensor(f.person_index, dtype=torch.int64),
            "index": torch.tensor(f.index, dtype=torch.int64),
        }
        for k, v in self.arrays.items():
            item[k] = v[j]
        return item
