"""Geometry for preprocessing, in plain numpy (no OpenCV needed, so it is tested everywhere).

Conventions (those of docs/dataset.md):
- Image points are continuous coordinates with the top-left image corner at (0, 0) and pixel centres at
  half-integers; MediaPipe's normalised landmarks map to it as (x * W, y * H). Intrinsics K use the same
  convention (a centred principal point is (W/2, H/2)).
- Camera axes are OpenCV's (x right, y down, z forward). A head pose is the head-to-camera transform
  X_cam = R X_head + t; the dataset stores its inverse (c2w).
- The head frame is MediaPipe's canonical metric face frame (cm): +y up the face, +z out of the face,
  +x towards the subject's left ear.
"""
from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------- rotations


def rodrigues(w: np.ndarray) -> np.ndarray:
    """Axis-angle [3] -> rotation matrix [3,3]."""
    w = np.asarray(w, np.float64)
    th = float(np.linalg.norm(w))
    K = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if th < 1e-12:
        return np.eye(3) + K
    K = K / th
    return np.eye(3) + math.sin(th) * K + (1 - math.cos(th)) * (K @ K)


def project_to_so3(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ D @ Vt


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """[3,3] -> unit quaternion (w, x, y, z)."""
    m = np.asarray(R, np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def euler_from_head_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees of a head rotation relative to the frontal pose diag(1,-1,-1)
    (for display and sanity only)."""
    F = np.diag([1.0, -1.0, -1.0])
    M = F @ R  # the rotation in the head's own y-up frame
    yaw = math.degrees(math.atan2(M[0, 2], M[2, 2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -M[1, 2]))))
    roll = math.degrees(math.atan2(M[1, 0], M[1, 1]))
    return yaw, pitch, roll


# ---------------------------------------------------------------------------------------------- PnP


def project(X: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Head points [N,3] -> image points [N,2] (K is 3x3)."""
    Xc = X @ R.T + t
    z = Xc[:, 2:3]
    uv = Xc[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)
    return uv * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _dlt_pose(X: np.ndarray, uv: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear initialisation from >= 6 non-coplanar points: DLT of [R|t] in normalised coordinates."""
    xn = (uv - K[[0, 1], [2, 2]]) / np.array([K[0, 0], K[1, 1]])
    mu = X.mean(0)
    sc = np.sqrt(((X - mu) ** 2).sum(1).mean()) + 1e-12
    Xs = (X - mu) / sc  # conditioning
    n = len(X)
    A = np.zeros((2 * n, 12))
    Xh = np.hstack([Xs, np.ones((n, 1))])
    A[0::2, 0:4] = Xh
    A[0::2, 8:12] = -xn[:, :1] * Xh
    A[1::2, 4:8] = Xh
    A[1::2, 8:12] = -xn[:, 1:2] * Xh
    # The thin SVD (V is all a DLT needs; a full U of 2n x 2n took 15-130 ms for a face mesh), full below 6 points.
    P = np.linalg.svd(A, full_matrices=2 * n < 12)[2][-1].reshape(3, 4)
    # undo conditioning: P [Xs;1] = P [(X-mu)/sc; 1]
    M = P[:, :3] / sc
    p4 = P[:, 3] - M @ mu
    s = np.linalg.svd(M, compute_uv=False).mean()
    if np.linalg.det(M) < 0:
        M, p4 = -M, -p4
    R = project_to_so3(M / s)
    t = p4 / s
    if (X @ R.T + t)[:, 2].mean() < 0:  # the points must lie in front of the camera
        R, t = project_to_so3(-M / s), -p4 / s
    return R, t


def solve_pnp(
    X: np.ndarray,
    uv: np.ndarray,
    K: np.ndarray,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
    iters: int = 30,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Head pose (R, t) minimising the (weighted) squared reprojection error of head points X [N,3] seen
    at uv [N,2] through K [3,3]: DLT (or `init`) then Levenberg-Marquardt on a left rotation increment.
    Returns R [3,3], t [3], mean reprojection error in pixels."""
    X = np.asarray(X, np.float64)
    uv = np.asarray(uv, np.float64)
    if X.ndim != 2 or X.shape[1] != 3 or uv.shape != (X.shape[0], 2):
        raise ValueError(f"solve_pnp: expected X [N,3] and uv [N,2], got {X.shape} and {uv.shape}")
    if len(X) < 6:
        raise ValueError(f"solve_pnp: needs >= 6 points, got {len(X)}")
    w = np.ones(len(X)) if weights is None else np.asarray(weights, np.float64)
    R, t = (np.array(init[0], np.float64), np.array(init[1], np.float64)) if init is not None else _dlt_pose(X, uv, K)
    fx, fy = K[0, 0], K[1, 1]
    sw = np.sqrt(w)[:, None]

    def residual(R, t):
        return ((project(X, R, t, K) - uv) * sw).ravel()

    r = residual(R, t)
    cost = r @ r
    lam = 1e-3
    for _ in range(iters):
        Xc = X @ R.T + t
        x, y, z = Xc[:, 0], Xc[:, 1], np.maximum(Xc[:, 2], 1e-6)
        # d(u,v)/dXc
        Ju = np.stack([fx / z, np.zeros_like(z), -fx * x / z**2], 1)
        Jv = np.stack([np.zeros_like(z), fy / z, -fy * y / z**2], 1)
        # dXc/dw for R <- exp([w]) R is -[R X]_x ; dXc/dt = I
        RX = X @ R.T

        def cross_neg(J):  # J [N,3] @ (-[RX]_x) = RX x J  (row-wise)
            return np.cross(RX, J)

        J = np.zeros((2 * len(X), 6))
        J[0::2, :3] = cross_neg(Ju)
        J[0::2, 3:] = Ju
        J[1::2, :3] = cross_neg(Jv)
        J[1::2, 3:] = Jv
        J *= np.repeat(sw, 2, 0)
        H = J.T @ J
        g = J.T @ r
        improved = False
        for _ in range(8):
            step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-9), g)
            R2 = rodrigues(step[:3]) @ R
            t2 = t + step[3:]
            r2 = residual(R2, t2)
            c2 = r2 @ r2
            if c2 < cost:
                R, t, r, lam = R2, t2, r2, max(lam / 5, 1e-9)
                improved = cost - c2 > 1e-12 * cost
                cost = c2
                break
            lam *= 10
        if not improved:
            break
    err = float(np.linalg.norm(project(X, R, t, K) - uv, axis=1).mean())
    return R, t, err


# ---------------------------------------------------------------------------------------------- smoothing


def smooth_poses(
    Rs: np.ndarray, ts: np.ndarray, times: np.ndarray, sigma: float = 1.0, max_angle_deg: float = 15.0, max_shift: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian temporal smoothing of poses [N,3,3], [N,3] sampled at frame numbers `times` [N]
    (gaps are respected: weights fall off with the frame distance). Rotations are averaged as
    sign-aligned quaternions. A neighbour whose rotation differs by more than `max_angle_deg` or whose
    translation differs by more than `max_shift` of the distance is not averaged in (a cut, or unrelated
    photos in an image folder, is not blurred). sigma <= 0 returns the input."""
    Rs = np.asarray(Rs, np.float64)
    ts = np.asarray(ts, np.float64)
    if sigma <= 0 or len(Rs) < 2:
        return Rs.copy(), ts.copy()
    times = np.asarray(times, np.float64)
    q = np.stack([matrix_to_quat(R) for R in Rs])
    outR, outt = np.empty_like(Rs), np.empty_like(ts)
    rad = 3 * sigma
    for i in range(len(Rs)):
        sel = np.abs(times - times[i]) <= rad
        cosang = np.clip(np.abs(q[sel] @ q[i]), 0.0, 1.0)  # |<q_j, q_i>| = cos(angle / 2)
        similar = (2 * np.degrees(np.arccos(cosang)) <= max_angle_deg) & (
            np.linalg.norm(ts[sel] - ts[i], axis=1) <= max_shift * max(np.linalg.norm(ts[i]), 1e-9)
        )
        sel[np.flatnonzero(sel)[~similar]] = False
        wts = np.exp(-0.5 * ((times[sel] - times[i]) / sigma) ** 2)
        qs = q[sel] * np.sign(q[sel] @ q[i] + 1e-12)[:, None]
        qm = (wts[:, None] * qs).sum(0)
        outR[i] = quat_to_matrix(qm)
        outt[i] = (wts[:, None] * ts[sel]).sum(0) / wts.sum()
    return outR, outt


# ---------------------------------------------------------------------------------------------- Procrustes


def procrustes(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, scale: bool = True):
    """Similarity (s, R, t) minimising sum_i w_i |s R src_i + t - dst_i|^2 (Umeyama; never a reflection).
    src, dst: [N, D]. Returns s, R [D,D], t [D]."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2:
        raise ValueError(f"procrustes: src and dst must both be [N, D], got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    C = (b * w[:, None]).T @ a
    U, S, Vt = np.linalg.svd(C)
    D = np.eye(src.shape[1])
    D[-1, -1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = U @ D @ Vt
    var = (w * (a**2).sum(1)).sum()
    s = float((S * np.diag(D)).sum() / var) if scale else 1.0
    t = md - s * R @ ms
    return s, R, t


def apply_similarity(s, R, t, X):
    return s * X @ R.T + t


# ---------------------------------------------------------------------------------------------- crop


def crop_from_pose(R, t, K, center_head=(0.0, 2.5, -2.0), extent_cm: float = 33.0) -> tuple[float, float, float]:
    """Square crop (x0, y0, size) in source-image coordinates that follows the head: centred on the
    projection of a point of the head frame, `extent_cm` wide at that point's depth."""
    c = R @ np.asarray(center_head, np.float64) + t
    z = max(float(c[2]), 1e-6)
    u = K[0, 0] * c[0] / z + K[0, 2]
    v = K[1, 1] * c[1] / z + K[1, 2]
    size = 0.5 * (K[0, 0] + K[1, 1]) * extent_cm / z
    return u - size / 2, v - size / 2, size


def crop_intrinsics(K: np.ndarray, x0: float, y0: float, size: float, resolution: int) -> np.ndarray:
    """Intrinsics of the square crop [x0, x0+size) x [y0, y0+size) resized to resolution^2 (same
    continuous-coordinate convention: u' = (u - x0) * resolution / size)."""
    s = resolution / size
    return intrinsics_matrix(K[0, 0] * s, K[1, 1] * s, (K[0, 2] - x0) * s, (K[1, 2] - y0) * s)


def to_crop(uv: np.ndarray, x0: float, y0: float, size: float, resolution: int) -> np.ndarray:
    return (np.asarray(uv, np.float64) - np.array([x0, y0])) * (resolution / size)


def default_intrinsics(width: int, height: int, fov_deg: float = 50.0) -> np.ndarray:
    """A pinhole for a video whose camera is unknown: `fov_deg` across the longer side, centred."""
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return intrinsics_matrix(f, f, width / 2, height / 2)


def w2c_to_c2w(R: np.ndarray, t: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Head pose X_cam = R X + t -> camera-to-world 4x4 in the head frame, translations * scale."""
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t * scale
    return c2w
