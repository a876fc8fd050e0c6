"""Per-frame features: the head region (for the mask) and gaze from the iris landmarks."""
from __future__ import annotations

import numpy as np

from dgnerf.face.geometry import apply_similarity, procrustes, project
from dgnerf.face.imaging import convex_hull, dilate, fill_polygon

# A head (hair and ears included) in the canonical face frame, cm: an ellipsoid about a centre behind
# and above the face origin. The face mesh spans x +-7.7, y -9.4..8.3, z -2.4..7.6 (nose tip).
HEAD_CENTER = np.array([0.0, 2.0, -2.5])
HEAD_SEMI_AXES = np.array([10.0, 13.0, 12.0])


def head_ellipsoid_points(n_lat: int = 16, n_lon: int = 32) -> np.ndarray:
    th = np.linspace(0, np.pi, n_lat)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    unit = np.stack([np.sin(T) * np.cos(P), np.cos(T), np.sin(T) * np.sin(P)], -1).reshape(-1, 3)
    return HEAD_CENTER + unit * HEAD_SEMI_AXES


_ELLIPSOID = head_ellipsoid_points()


def head_region(R, t, K, hw, face_uv: np.ndarray | None = None, chin_cut: bool = True) -> np.ndarray:
    """Boolean [H,W]: the projected head ellipsoid (posed by R, t, seen through K), united with the
    face landmarks' hull; below the chin line (in the head's own frame) is cut away unless
    chin_cut=False, so the neck and shoulders stay out."""
    pts = _ELLIPSOID
    if chin_cut:
        pts = pts[pts[:, 1] >= -11.0]
    uv = project(pts, R, t, K)
    region = fill_polygon(hw, convex_hull(uv))
    if face_uv is not None and len(face_uv) >= 3:
        region |= dilate(fill_polygon(hw, convex_hull(face_uv)), 1)
    return region


def head_mask(seg_prob: np.ndarray, region: np.ndarray, lo: float = 0.3, hi: float = 0.7) -> np.ndarray:
    """uint8 [H,W] mask: the segmenter's person probability inside the head region, ramped from 0 at
    `lo` to 255 at `hi` (a soft edge, as the dataset format allows)."""
    m = np.clip((np.asarray(seg_prob, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    m = np.where(region, m, 0.0)
    return (m * 255).round().astype(np.uint8)


# MediaPipe indices: the subject's right eye (image left) with iris 468..472, left eye with 473..477.
EYES = {
    "right": {"corners": (33, 133), "lids": (159, 145), "iris": 468},
    "left": {"corners": (362, 263), "lids": (386, 374), "iris": 473},
}
GAZE_DIM = 6
GAZE_NAMES = ["right_x", "right_y", "left_x", "left_y", "right_open", "left_open"]


def gaze_features(shape: np.ndarray, reference: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """[6]: per eye, the iris centre in the eye's own frame (x along the corner-to-corner line, y
    perpendicular, both divided by the eye width, origin at the corners' midpoint; + = towards the
    image right / up the face), then each eye's opening (lid distance / width). `shape` [478, 3] in the
    y-up shape frame (expression.to_shape_frame); it is first frontalised onto `reference` when given,
    so head rotation does not leak in."""
    S = np.asarray(shape, np.float64)
    if S.shape[0] < 478:
        return np.zeros(GAZE_DIM, np.float32)
    if reference is not None:
        n = len(reference)
        s, R, t = procrustes(S[:n], reference, weights)
        S = apply_similarity(s, R, t, S)
    out = []
    opens = []
    for eye in ("right", "left"):
        e = EYES[eye]
        a, b = S[e["corners"][0], :2], S[e["corners"][1], :2]
        if eye == "left":
            a, b = b, a  # both eyes measured left-to-right in the image
        mid, d = (a + b) / 2, b - a
        wdt = np.linalg.norm(d) + 1e-9
        ex = d / wdt
        ey = np.array([-ex[1], ex[0]])  # +90 deg: up the face in the y-up frame
        c = S[e["iris"], :2] - mid
        out += [float(c @ ex / wdt), float(c @ ey / wdt)]
        opens.append(float(np.linalg.norm(S[e["lids"][0], :2] - S[e["lids"][1], :2]) / wdt))
    return np.asarray(out + opens, np.float32)
