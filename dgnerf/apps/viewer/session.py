"""The viewer's engine, apart from any transport: what the page may ask for, checked field by field, and the
renders, code files and PNGs that answer it (docs/viewer.md).

    session = ViewerSession(model, device, dataset="heads")
    state = session.parse_state(json_from_the_page)        # ViewerInputError names the bad field
    image, info = session.render(state, "preview")          # HxWx3 uint8, timings and the pose used

Level of detail: a "preview" frame runs the same model on a smaller feature map (rays at preview_size^2
pixels instead of feature_size^2, the renderer upsampling it by the same factor), so a drag costs about
(preview_size / feature_size)^2 of a full frame and shows the same head, only blurrier.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import safetensors.numpy
import torch
from PIL import Image

from dgnerf.apps.interp import slerp_norm
from dgnerf.camera import view_c2w
from dgnerf.codes import load_code
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.model import HeadModel, RenderOptions

QUALITIES = ("preview", "full")
PRECISIONS = ("fp32", "bf16", "fp16")
SKIP_STRIDES = (0, 2, 4, 8)
MAX_CODES = 64  # persons shown in the page's menus (a large set lists its first ones)
MAX_UPLOADS = 16  # code files the page may add in one server run
ANGLE = 180.0
PITCH = 89.0  # at +-90 the orbit camera's up vector is undefined
UPLOAD_EXTS = (".npy", ".txt", ".safetensors")
MAX_UPLOAD_BYTES = 256 * 1024


class ViewerInputError(DgnerfError):
    """A message from the page that the viewer refuses; the text names the field (shown in the page)."""


@dataclass
class Person:
    name: str
    identity: torch.Tensor  # [I]
    expression: torch.Tensor | None = None  # [F, E] the recorded sequence (dataset persons)
    yaw_pitch_roll: torch.Tensor | None = None  # [F, 3] the recorded head pose, degrees, in the model's orbit terms


@dataclass
class Components:
    """Expression sliders: code = sum_k s_k * scale_k * axes_k (s in units of the data's spread)."""

    axes: torch.Tensor  # [K, E] orthonormal rows
    scale: torch.Tensor  # [K]
    labels: list
    source: str


@dataclass
class State:
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    distance: float = 4.0
    identity_a: int = 0
    identity_b: int = 0
    identity_t: float = 0.0
    expression: list = field(default_factory=list)  # slider values
    sequence: tuple | None = None  # (person index, frame, with recorded pose)
    precision: str = "fp32"
    skip: int = 0
    ert: float = 0.0
    drag: bool = False
    live: bool = False
    live_quality: str = "preview"


def preview_model(model: HeadModel, feature_size: int) -> HeadModel:
    """The same weights with a smaller feature map: a shallow copy (parameters and submodules shared, not
    copied) whose config asks for feature_size^2 rays; the renderer is convolutional, so it upsamples any
    map by the same 2^n. Intrinsics follow from the config's field of view, so the framing is the same."""
    cfg = model.cfg
    if feature_size == cfg.feature_size:
        return model
    scale = cfg.image_size // cfg.feature_size
    twin = copy.copy(model)  # nn.Module's __dict__ (with _parameters/_modules) is shared, not cloned
    twin.cfg = dataclasses.replace(cfg, feature_size=feature_size, image_size=feature_size * scale)
    return twin


def orbit_angles(R: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees with R = Ry(yaw) Rx(pitch) Rz(roll) (dgnerf.camera.rotation_matrix)."""
    R = np.asarray(R, np.float64)
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -R[1, 2]))))
    yaw = math.degrees(math.atan2(R[0, 2], R[2, 2]))
    roll = math.degrees(math.atan2(R[1, 0], R[1, 1]))
    return yaw, pitch, roll


def _expression_components(codes: torch.Tensor, k: int, basis: dict | None, meta: dict) -> Components:
    """Principal axes of the dataset's expression codes, uncentred like the preprocess basis (code 0 stays the
    neutral face, so "reset" is neutral), each scaled by its RMS so a slider at 1 is a typical expression."""
    X = codes.double()
    _, S, Vt = torch.linalg.svd(X, full_matrices=False)
    k = min(k, int((S > S[0] * 1e-6).sum()) if S.numel() and S[0] > 0 else 0)
    axes = Vt[:k].clone()
    for i in range(k):  # a fixed sign per axis: the largest entry positive
        j = int(axes[i].abs().argmax())
        if axes[i, j] < 0:
            axes[i] = -axes[i]
    scale = (X @ axes.T).pow(2).mean(0).sqrt() if k else torch.zeros(0, dtype=torch.float64)
    labels = [_label(axes[i], basis, meta) for i in range(k)]
    return Components(axes.float(), scale.float(), labels, "pca")


def _label(axis: torch.Tensor, basis: dict | None, meta: dict) -> str:
    """What a component moves: the named parameters of a parameter basis (the built-in set), or the face
    region whose landmarks move most for a landmark basis (a preprocessed video's); '' when unknown."""
    names = meta.get("params")
    if basis is not None and "basis" in basis:
        B = basis["basis"].double()
        if names and B.shape[0] == axis.numel() and B.shape[1] == len(names):
            w = B.T @ axis.double()  # code = B @ params, B orthonormal columns: params = B^T code
            top = torch.argsort(w.abs(), descending=True)[:2]
            parts = [f"{names[int(i)]}{'+' if w[int(i)] > 0 else '-'}" for i in top if w[int(i)].abs() > 0.25 * w.abs().max()]
            return " ".join(parts)
        if "reference" in basis and "stddev" in basis and B.shape[0] == axis.numel():
            ref = basis["reference"].double().reshape(-1, 3)
            off = ((axis.double() * basis["stddev"].double()) @ B).reshape(-1, 3)
            if off.shape == ref.shape:
                return _region(ref, off.norm(dim=1))
    return ""


def _region(ref: torch.Tensor, motion: torch.Tensor) -> str:
    """Where on the face (reference shape, +y up, +x the image's right) the motion is centred."""
    if float(motion.sum()) <= 0:
        return ""
    w = motion / motion.sum()
    c = (w[:, None] * ref).sum(0)
    lo, hi = ref.min(0).values, ref.max(0).values
    y = float((c[1] - lo[1]) / (hi[1] - lo[1]).clamp_min(1e-9))
    x = float((c[0] - (lo[0] + hi[0]) / 2) / (hi[0] - lo[0]).clamp_min(1e-9))
    part = "brows/eyes" if y > 0.62 else ("mouth/jaw" if y < 0.38 else "cheeks/nose")
    side = " (image right)" if x > 0.08 else (" (image left)" if x < -0.08 else "")
    return part + side


class ViewerSession:
    """Everything the page can change, and the renders. Holds no per-client state (the State does), so one
    session serves every page; `render` is not thread-safe (the server runs renders one at a time)."""

    def __init__(self, model: HeadModel, device: torch.device, dataset: str | None = None, code_files=(),
                 components: int = 8, preview_size: int | None = None, max_persons: int = MAX_CODES):
        self.model = model.eval()
        self.device = torch.device(device)
        cfg = model.cfg
        self.world = cfg.world_rotation
        if preview_size is None:
            preview_size = max(4, cfg.feature_size // 2)
        if not (isinstance(preview_size, int) and 1 <= preview_size <= cfg.feature_size):
            raise DgnerfError(f"preview size: expected an int in [1, {cfg.feature_size}] (the feature map), got {preview_size!r}")
        self.preview_size = preview_size
        self.preview = preview_model(model, preview_size)
        self.persons: list[Person] = []
        self.dataset_info = None
        self.expression_basis = None  # the dataset's basis file path when it is a landmark basis (live driving)
        comps = None
        if dataset is not None:
            comps = self._load_dataset(dataset, components, max_persons)
        for spec in code_files:
            z = load_code(spec, cfg.identity_dim, "identity")[0]
            self.persons.append(Person(os.path.basename(spec), z))
        if not self.persons:
            # no data and no code: seeded random identities, so the page has something to slide between
            for s in range(4):
                z = load_code(f"random:{s}", cfg.identity_dim, "identity")[0]
                self.persons.append(Person(f"random:{s}", z / z.norm()))
        if comps is None or comps.axes.shape[0] == 0:
            k = min(components, cfg.expression_dim)
            comps = Components(torch.eye(cfg.expression_dim)[:k], torch.full((k,), 1.0), [""] * k, "code")
        self.components = comps
        self.uploads = 0

    # ------------------------------------------------------------------ data
    def _load_dataset(self, root: str, k: int, max_persons: int) -> Components:
        cfg = self.model.cfg
        ds = HeadDataset(root, check="none")
        if ds.identity_dim != cfg.identity_dim or ds.expression_dim != cfg.expression_dim:
            raise DgnerfError(f"--data {root}: codes are identity {ds.identity_dim}-d / expression {ds.expression_dim}-d, "
                              f"the checkpoint expects {cfg.identity_dim} / {cfg.expression_dim}")
        a = ds.arrays
        W = self.world if self.world is not None else torch.eye(3)
        for p in ds.persons[:max_persons]:
            rows = [j for j, f in enumerate(ds.frames) if f.person == p]
            if not rows:
                continue
            # the recorded camera in the model's orbit terms: c2w = W Ry Rx Rz, so Ry Rx Rz = W^T c2w
            M = W.T.double() @ a["c2w"][rows, :3, :3].double()
            ypr = torch.tensor([orbit_angles(m.numpy()) for m in M], dtype=torch.float32)
            self.persons.append(Person(p, a["identity"][rows].mean(0), a["expression"][rows].clone(), ypr))
        meta = ds.expression_basis_metadata()
        basis = ds.expression_basis()
        params = meta.get("params")
        names = params.split(",") if params else ds.manifest.get("meta", {}).get("expression_params")
        if meta.get("kind") == "landmark_offsets_pca":
            self.expression_basis = os.path.join(root, ds.manifest["expression_basis"])
        self.dataset_info = {"root": os.path.basename(os.path.normpath(root)), "frames": len(ds),
                             "persons": len(ds.persons), "basis": meta.get("kind", "")}
        return _expression_components(a["expression"], k, basis, {"params": names} if names else {})

    def add_code(self, name: str, data: bytes) -> int:
        """A code file sent by the page (its bytes, never a path) -> index of the new person."""
        if self.uploads >= MAX_UPLOADS:
            raise ViewerInputError(f"upload: at most {MAX_UPLOADS} code files per server run")
        if not isinstance(name, str) or not name or len(name) > 120:
            raise ViewerInputError("upload.name: expected a file name of 1..120 characters")
        ext = os.path.splitext(name)[1].lower()
        if ext not in UPLOAD_EXTS:
            raise ViewerInputError(f"upload.name: expected a {', '.join(UPLOAD_EXTS)} code file, got {ext or 'no extension'!r}")
        if len(data) > MAX_UPLOAD_BYTES:
            raise ViewerInputError(f"upload: {len(data)} bytes; a code file has at most {MAX_UPLOAD_BYTES}")
        # load_code reads paths: the bytes go to a private temporary file of the server's own naming
        with tempfile.TemporaryDirectory(prefix="dgnerf-view-") as td:
            path = os.path.join(td, "code" + ext)
            with open(path, "wb") as f:
                f.write(data)
            try:
                z = load_code(path, self.model.cfg.identity_dim, "identity")[0]
            except DgnerfError as e:
                raise ViewerInputError(str(e).replace(repr(path), repr(os.path.basename(name)))) from None
        self.uploads += 1
        self.persons.append(Person(os.path.basename(name)[:60], z))
        return len(self.persons) - 1

    # ------------------------------------------------------------------ what the page is told
    def hello(self) -> dict:
        cfg = self.model.cfg
        return {
            "type": "hello",
            "device": self.device.type,
            "image_size": cfg.image_size,
            "feature_size": cfg.feature_size,
            "preview_size": self.preview_size,
            "preview_image_size": self.preview.cfg.image_size,
            "distance": cfg.camera_distance,
            "distance_range": list(self.hello_distance_range()),
            "precisions": [p for p in PRECISIONS if p != "fp16" or self.device.type == "cuda"],
            "skip_strides": list(SKIP_STRIDES),
            "persons": [{"name": p.name, "frames": 0 if p.expression is None else int(p.expression.shape[0])}
                        for p in self.persons],
            "components": [{"label": lab} for lab in self.components.labels],
            "component_source": self.components.source,
            "dataset": self.dataset_info,
            "live_quality": "full" if self.device.type == "cuda" else "preview",
        }

    def default_state(self) -> State:
        return State(distance=self.model.cfg.camera_distance, identity_b=min(1, len(self.persons) - 1),
                     expression=[0.0] * len(self.components.labels),
                     live_quality="full" if self.device.type == "cuda" else "preview")

    # ------------------------------------------------------------------ checking the page's messages
    def parse_state(self, msg) -> State:
        """A State from the page's JSON object; every field checked (type, finiteness, range)."""
        if not isinstance(msg, dict):
            raise ViewerInputError(f"state: expected a JSON object, got {type(msg).__name__}")
        known = {"type", "camera", "identity", "expression", "sequence", "options", "drag", "live", "live_quality", "seq"}
        extra = sorted(set(msg) - known)
        if extra:
            raise ViewerInputError(f"state: unknown field(s) {extra[:5]}")
        st = self.default_state()
        cam = _obj(msg, "camera")
        lo, hi = self.hello_distance_range()
        st.yaw = _num(cam, "yaw", -ANGLE, ANGLE, "camera.")
        st.pitch = _num(cam, "pitch", -PITCH, PITCH, "camera.")
        st.roll = _num(cam, "roll", -ANGLE, ANGLE, "camera.")
        st.distance = _num(cam, "distance", lo, hi, "camera.")
        ident = _obj(msg, "identity")
        n = len(self.persons)
        st.identity_a = _int(ident, "a", 0, n - 1, "identity.")
        st.identity_b = _int(ident, "b", 0, n - 1, "identity.")
        st.identity_t = _num(ident, "t", 0.0, 1.0, "identity.")
        ex = msg.get("expression")
        k = len(self.components.labels)
        if not isinstance(ex, list) or len(ex) != k:
            raise ViewerInputError(f"expression: expected a list of {k} slider values, got "
                                   f"{type(ex).__name__ if not isinstance(ex, list) else f'{len(ex)} values'}")
        st.expression = [_number(v, -5.0, 5.0, f"expression[{i}]") for i, v in enumerate(ex)]
        seq = msg.get("sequence")
        if seq is not None:
            if not isinstance(seq, dict):
                raise ViewerInputError("sequence: expected null or {person, frame, pose}")
            p = _int(seq, "person", 0, n - 1, "sequence.")
            frames = self.persons[p].expression
            if frames is None:
                raise ViewerInputError(f"sequence.person: {self.persons[p].name!r} has no recorded sequence (a code file)")
            f = _int(seq, "frame", 0, frames.shape[0] - 1, "sequence.")
            pose = seq.get("pose", False)
            if not isinstance(pose, bool):
                raise ViewerInputError("sequence.pose: expected true or false")
            st.sequence = (p, f, pose)
        opt = _obj(msg, "options")
        prec = opt.get("precision")
        allowed = [p for p in PRECISIONS if p != "fp16" or self.device.type == "cuda"]
        if prec not in allowed:
            raise ViewerInputError(f"options.precision: expected one of {allowed}, got {prec!r}")
        st.precision = prec
        st.skip = _int(opt, "skip", 0, 16, "options.")
        st.ert = _num(opt, "ert", 0.0, 0.5, "options.")
        for name in ("drag", "live"):
            v = msg.get(name, False)
            if not isinstance(v, bool):
                raise ViewerInputError(f"{name}: expected true or false, got {v!r}")
            setattr(st, name, v)
        lq = msg.get("live_quality", st.live_quality)
        if lq not in QUALITIES:
            raise ViewerInputError(f"live_quality: expected one of {list(QUALITIES)}, got {lq!r}")
        st.live_quality = lq
        return st

    def hello_distance_range(self) -> tuple[float, float]:
        d = self.model.cfg.camera_distance
        return round(d * 0.5, 4), round(d * 2.0, 4)

    # ------------------------------------------------------------------ codes and renders
    def codes(self, st: State, live_expression: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(identity [1, I], expression [1, E]) of a state (live: the tracked expression replaces the sliders)."""
        za, zb = self.persons[st.identity_a].identity, self.persons[st.identity_b].identity
        t = torch.tensor([st.identity_t])
        z = za[None].clone() if st.identity_t == 0 else slerp_norm(za, zb, t)
        if live_expression is not None:
            e = live_expression.reshape(1, -1).float()
        elif st.sequence is not None:
            p, f, _ = st.sequence
            e = self.persons[p].expression[f][None].clone()
        else:
            s = torch.tensor(st.expression, dtype=torch.float32)
            e = ((s * self.components.scale)[None] @ self.components.axes) if s.numel() else torch.zeros(1, self.model.cfg.expression_dim)
        return z.float(), e.float()

    def slider_values(self, expression: torch.Tensor) -> list[float]:
        """The sliders that show an expression code (its projection on the components)."""
        c = self.components
        s = (expression.reshape(1, -1).float() @ c.axes.T)[0] / c.scale.clamp_min(1e-12)
        return [round(float(v), 4) for v in s.clamp(-5, 5)]

    def pose(self, st: State) -> tuple[float, float, float]:
        if st.sequence is not None and st.sequence[2]:
            p, f, _ = st.sequence
            y, pi, r = (float(v) for v in self.persons[p].yaw_pitch_roll[f])
            return y, max(-PITCH, min(PITCH, pi)), r
        return st.yaw, st.pitch, st.roll

    @torch.no_grad()
    def render(self, st: State, quality: str, pose: tuple | None = None,
               live_expression: torch.Tensor | None = None) -> tuple[np.ndarray, dict]:
        """One frame -> (HxWx3 uint8, info: quality, size, per-stage ms, the pose and expression used)."""
        if quality not in QUALITIES:
            raise ViewerInputError(f"quality: expected one of {list(QUALITIES)}, got {quality!r}")
        model = self.model if quality == "full" else self.preview
        yaw, pitch, roll = pose if pose is not None else self.pose(st)
        z, e = self.codes(st, live_expression)
        dev = self.device
        c2w = view_c2w(yaw, pitch, st.distance, self.world, device=dev, roll=roll)
        opts = RenderOptions(precision=st.precision, skip_stride=st.skip, ert_threshold=st.ert, timed=True)
        out = model(z.to(dev), e.to(dev), c2w, options=opts)
        img = (out.image[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        info = {"quality": quality, "size": int(img.shape[0]),
                "timings": {k: round(v, 2) for k, v in out.timings.items()},
                "pose": [round(yaw, 3), round(pitch, 3), round(roll, 3)]}
        if live_expression is not None or st.sequence is not None:
            info["sliders"] = self.slider_values(e)
        return img, info

    def warmup(self) -> None:
        """One frame of each quality with the page's default options, so the first drag is not the one that
        pays for oneDNN's kernel selection and the allocator's growth (the first frame costs several)."""
        st = self.default_state()
        for precision in ("bf16", "fp32") if self.device.type == "cpu" else ("fp16", "fp32"):
            st.precision, st.skip, st.ert = precision, 4, 1e-3
            for q in QUALITIES:
                self.render(st, q)

    def png_bytes(self, st: State) -> bytes:
        img, _ = self.render(st, "full")
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return buf.getvalue()

    def code_file_bytes(self, st: State) -> bytes:
        """The current codes as one .safetensors that `dgnerf render --identity F --expression F` and
        `dgnerf drive --target F` read (each picks its tensor by name); the camera rides in the metadata."""
        z, e = self.codes(st)
        yaw, pitch, roll = self.pose(st)
        meta = {"format": "dgnerf-view-codes", "camera": json.dumps({"yaw": yaw, "pitch": pitch, "roll": roll,
                                                                      "distance": st.distance}),
                "persons": json.dumps([self.persons[st.identity_a].name, self.persons[st.identity_b].name]),
                "identity_t": str(st.identity_t)}
        return safetensors.numpy.save({"identity": z[0].numpy().astype(np.float32),
                                       "expression": e[0].numpy().astype(np.float32)}, metadata=meta)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _obj(msg: dict, name: str) -> dict:
    v = msg.get(name)
    if not isinstance(v, dict):
        raise ViewerInputError(f"{name}: expected a JSON object, got {type(v).__name__}")
    return v


def _number(v, lo: float, hi: float, label: str) -> float:
    # bool is an int in Python and JSON's true would pass as 1: refused; NaN/Infinity (which json.loads accepts) too
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ViewerInputError(f"{label}: expected a number in [{lo:g}, {hi:g}], got {v!r}"[:200])
    return float(v)


def _num(d: dict, key: str, lo: float, hi: float, prefix: str = "") -> float:
    return _number(d.get(key), lo, hi, f"{prefix}{key}")


def _int(d: dict, key: str, lo: int, hi: int, prefix: str = "") -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ViewerInputError(f"{prefix}{key}: expected an integer in [{lo}, {hi}], got {v!r}"[:200])
    return int(v)


__all__ = [
    "QUALITIES",
    "Components",
    "Person",
    "State",
    "ViewerInputError",
    "ViewerSession",
    "encode_jpeg",
    "orbit_angles",
    "preview_model",
]
