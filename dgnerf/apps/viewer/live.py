"""Live driving: webcam frames -> head pose and expression code, with the preprocessing pipeline's parts
(docs/preprocess.md): MediaPipe's face mesh (tracking mode: each frame starts from the last), the one-person
track selector, PnP of the 468 landmarks against the canonical face mesh, and the projection of the aligned
landmarks into the model's expression basis.

What differs from `dgnerf preprocess`, because a live stream has no future frames: no temporal smoothing
of the poses, and the person's neutral face is the median of the recent frames (or the frame the user marks
with "set neutral") instead of the median of the whole video.

Pose convention: PnP gives the head in the camera, X_cam = R X_face + t (face frame +y up, +z out of the
face). The dataset camera of that frame is c2w = R^T in the face frame; a model's orbit camera is
W Ry(yaw) Rx(pitch) Rz(roll) with W = diag(1, -1, -1) for the face frame (dgnerf.camera.world_frame), so
Ry Rx Rz = W R^T, and yaw/pitch/roll are read off that. Rendering those angles in the model's own world
(view_c2w with its world_frame) shows the tracked head pose whatever frame the model was trained in.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import numpy as np

from dgnerf.apps.viewer.session import orbit_angles
from dgnerf.assets import have, load_face_geometry
from dgnerf.errors import DgnerfError
from dgnerf.face import geometry as G
from dgnerf.preprocess.expression import N_FACE, to_shape_frame
from dgnerf.preprocess.pipeline import load_expression_basis
from dgnerf.preprocess.sources import MediaPipeFaces, TrackSelector

FACE_FRAME = np.diag([1.0, -1.0, -1.0])  # the face frame's W (world_frame of a preprocessed set)
NEUTRAL_WINDOW = 150  # frames whose median is the running neutral (~10-30 s of webcam)
# a warm-started PnP fit with a mean reprojection error below this fraction of the face box diagonal is kept
# (good fits are 1-2 px on a ~120 px face: 1-1.6%; the pipeline drops a frame above 6%); above it the pose is
# also solved from other starts
WARM_OK = 0.03


@dataclass
class Tracked:
    yaw: float
    pitch: float
    roll: float
    expression: np.ndarray | None  # [E] in the model's basis, None without a landmark basis
    reprojection_px: float
    track_ms: float


def head_angles(R: np.ndarray) -> tuple[float, float, float]:
    """The orbit camera (yaw, pitch, roll) in degrees that sees the head as a camera sees a head posed by R."""
    return orbit_angles(FACE_FRAME @ np.asarray(R, np.float64).T)


class LiveTracker:
    """Frames (RGB uint8 [H, W, 3], in order) -> Tracked or None (no face / not tracked), with a reason.

    faces_fn: landmarks per frame (default MediaPipe's face mesh in tracking mode); injectable for tests.
    basis: an expression_basis.safetensors (or its dataset) the model was trained on; None: pose only.
    """

    def __init__(self, basis: str | None = None, faces_fn=None, geometry: dict | None = None, fov_deg: float = 50.0,
                 expression_dim: int | None = None):
        self.geometry = geometry if geometry is not None else load_face_geometry()
        self.vertices = np.asarray(self.geometry["vertices"], np.float64)
        self.faces_fn = faces_fn if faces_fn is not None else MediaPipeFaces(static=False, max_faces=2)
        self.basis = load_expression_basis(basis) if basis else None
        if self.basis is not None and expression_dim is not None and self.basis.dim != expression_dim:
            raise DgnerfError(f"live driving: the expression basis has {self.basis.dim} components, the model "
                              f"expects {expression_dim}")
        self.fov_deg = fov_deg
        self.selector = TrackSelector()
        self.prev = None  # (R, t, (H, W)) warm start of PnP
        self.recent = collections.deque(maxlen=NEUTRAL_WINDOW)
        self.fixed_neutral = None
        self.last_shape = None

    def _frontal_start(self, uv: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A face looking at the camera at the depth its size in the image says, where the landmarks are."""
        span_cm = float(np.linalg.norm(np.ptp(self.vertices[:, :2], 0)))
        span_px = max(float(np.linalg.norm(np.ptp(uv, 0))), 1.0)
        z = K[0, 0] * span_cm / span_px
        c = uv.mean(0)
        t = np.array([(c[0] - K[0, 2]) * z / K[0, 0], (c[1] - K[1, 2]) * z / K[1, 1], z])
        return FACE_FRAME.copy(), t - FACE_FRAME @ self.vertices.mean(0)

    def set_neutral(self) -> bool:
        """Take the last tracked face as the neutral expression; False when no face was tracked yet."""
        if self.last_shape is None:
            return False
        self.fixed_neutral = self.last_shape
        return True

    def reset_neutral(self):
        self.fixed_neutral = None
        self.recent.clear()

    def __call__(self, rgb: np.ndarray) -> tuple[Tracked | None, str | None]:
        t0 = time.perf_counter()
        H, W = rgb.shape[:2]
        lm, why = self.selector.select(self.faces_fn(rgb))
        if why:
            return None, why
        lm = np.asarray(lm, np.float64)
        K = G.default_intrinsics(W, H, self.fov_deg)
        uv = lm[:N_FACE, :2] * np.array([W, H])
        init = self.prev[:2] if self.prev is not None and self.prev[2] == (H, W) else None
        R, t, err = G.solve_pnp(self.vertices, uv, K, init=init)
        face = float(np.linalg.norm(uv.max(0) - uv.min(0)))
        if init is not None and err > WARM_OK * face:
            # a warm start that fits badly (after a jump) must not decide, as in the pipeline. The pipeline
            # re-solves from the linear (DLT) start every frame; that start costs ~15-130 ms (a full SVD of the
            # 936x12 system), so live tracking first tries a frontal start and keeps the DLT for when both fail
            for start in (self._frontal_start(uv, K), None):
                R2, t2, err2 = G.solve_pnp(self.vertices, uv, K, init=start)
                if err2 < err - 1e-6:
                    R, t, err = R2, t2, err2
                if err <= WARM_OK * face:
                    break
        if not (np.isfinite(err) and np.isfinite(t).all() and t[2] > 0) or err > 0.06 * face:
            self.prev = None
            return None, "pose_failed"
        self.prev = (R, t, (H, W))
        yaw, pitch, roll = head_angles(R)
        code = None
        if self.basis is not None:
            shape = to_shape_frame(lm[:N_FACE], W, H)
            aligned = self.basis.align(shape[None])[0]
            self.last_shape = aligned
            self.recent.append(aligned)
            neutral = self.fixed_neutral if self.fixed_neutral is not None else np.median(np.stack(self.recent), 0)
            code = self.basis.project(shape[None], neutral=neutral)[0].astype(np.float32)
        return Tracked(yaw, pitch, roll, code, float(err), (time.perf_counter() - t0) * 1e3), None

    def close(self):
        if hasattr(self.faces_fn, "close"):
            self.faces_fn.close()


def live_available() -> tuple[bool, str]:
    """(True, '') when live driving can run here, else (False, why and how to install)."""
    if not have("face_geometry"):
        return False, "live driving needs the face geometry asset: run `dgnerf assets fetch --only face_geometry`"
    try:
        load_face_geometry()
    except Exception as e:  # noqa: BLE001 - a damaged cache is reported in the page
        return False, f"live driving: the face geometry asset does not load ({type(e).__name__}: {e})"
    try:
        faces = MediaPipeFaces(static=False, max_faces=1)
        faces.close()
    except DgnerfError as e:
        return False, f"live driving needs MediaPipe (the preprocess extra, docs/preprocess.md): {e}"
    except Exception as e:  # noqa: BLE001 - a broken install is reported in the page, never a crash
        return False, f"live driving: MediaPipe failed to start ({type(e).__name__}: {e})"
    return True, ""


__all__ = ["FACE_FRAME", "LiveTracker", "Tracked", "head_angles", "live_available"]
