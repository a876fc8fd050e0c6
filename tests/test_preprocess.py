"""Preprocessing on small synthetic inputs (no MediaPipe, no OpenCV, no assets needed)."""
import math

import numpy as np
import pytest
import torch

from dgnerf.errors import DgnerfError
from dgnerf.face import geometry as G
from dgnerf.face.imaging import crop_square, warp_affine
from dgnerf.preprocess.expression import ExpressionBasis, generalized_procrustes
from dgnerf.preprocess.sources import TrackSelector


def rng(seed=0):
    return np.random.default_rng(seed)


def face_points(r, n=468):
    """A face-like cloud in cm (the canonical mesh's extent): the front of an ellipsoid."""
    th = r.uniform(0.2, math.pi - 0.2, n)
    ph = r.uniform(0.1, math.pi - 0.1, n)
    return np.stack([7.7 * np.cos(ph) * np.sin(th), 9.0 * np.cos(th), 7.5 * np.sin(ph) * np.sin(th) - 1.0], 1)


def random_pose(r, yaw=30, pitch=20, roll=20, dist=60.0):
    a = np.radians([r.uniform(-yaw, yaw), r.uniform(-pitch, pitch), r.uniform(-roll, roll)])
    Ry = G.rodrigues([0, a[0], 0])
    Rx = G.rodrigues([a[1], 0, 0])
    Rz = G.rodrigues([0, 0, a[2]])
    R = Rz @ Rx @ Ry @ np.diag([1.0, -1.0, -1.0])  # frontal head: y up, z towards the camera
    t = np.array([r.uniform(-5, 5), r.uniform(-5, 5), dist + r.uniform(-10, 10)])
    return R, t


# ------------------------------------------------------------------------------------------ PnP


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pnp_recovers_pose_from_projected_landmarks(seed):
    r = rng(seed)
    X = face_points(r)
    R, t = random_pose(r)
    K = G.default_intrinsics(320, 240, 50)
    uv = G.project(X, R, t, K)
    R2, t2, err = G.solve_pnp(X, uv, K)
    assert err < 1e-6
    assert np.abs(R2 - R).max() < 1e-6 and np.abs(t2 - t).max() < 1e-4
    # with pixel noise: error at the noise level, pose close
    uvn = uv + r.normal(0, 0.5, uv.shape)
    R3, t3, err3 = G.solve_pnp(X, uvn, K, init=(R2, t2))
    assert 0.3 < err3 < 0.9
    ang = math.degrees(math.acos(np.clip((np.trace(R3.T @ R) - 1) / 2, -1, 1)))
    assert ang < 1.0


def test_pnp_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=">= 6 points"):
        G.solve_pnp(np.zeros((3, 3)), np.zeros((3, 2)), np.eye(3))
    with pytest.raises(ValueError, match=r"X \[N,3\]"):
        G.solve_pnp(np.zeros((10, 2)), np.zeros((10, 2)), np.eye(3))


def test_smoothing_keeps_a_constant_pose_and_reduces_jitter():
    r = rng(3)
    R, t = random_pose(r)
    n = 40
    Rs = np.stack([R] * n)
    ts = np.stack([t] * n)
    R2, t2 = G.smooth_poses(Rs, ts, np.arange(n), 1.5)
    assert np.abs(R2 - Rs).max() < 1e-9 and np.abs(t2 - ts).max() < 1e-9
    noisy = np.stack([G.rodrigues(r.normal(0, 0.02, 3)) @ R for _ in range(n)])
    tn = ts + r.normal(0, 1.0, ts.shape)
    R3, t3 = G.smooth_poses(noisy, tn, np.arange(n), 1.5)

    def ang(A):
        return np.mean([np.arccos(np.clip((np.trace(a.T @ R) - 1) / 2, -1, 1)) for a in A])

    assert ang(R3) < 0.6 * ang(noisy)
    assert np.abs(t3 - ts).mean() < 0.6 * np.abs(tn - ts).mean()
    for a in R3:
        assert np.allclose(a.T @ a, np.eye(3), atol=1e-9) and np.linalg.det(a) > 0
    # a cut (the head turns 40 degrees between two frames) is not blurred across
    R_other = G.rodrigues([0, math.radians(40), 0]) @ R
    Rc = np.stack([R] * 10 + [R_other] * 10)
    R4, _ = G.smooth_poses(Rc, np.stack([t] * 20), np.arange(20), 2.0)
    assert np.allclose(R4[9], R, atol=1e-9) and np.allclose(R4[10], R_other, atol=1e-9)


def test_quaternion_roundtrip():
    r = rng(4)
    for _ in range(20):
        R = G.rodrigues(r.normal(0, 1.5, 3))
        assert np.allclose(G.quat_to_matrix(G.matrix_to_quat(R)), R, atol=1e-9)


# ------------------------------------------------------------------------------------------ Procrustes


def test_procrustes_recovers_similarity_and_never_reflects():
    r = rng(5)
    X = r.normal(size=(50, 3))
    R = G.rodrigues(r.normal(size=3))
    Y = 2.5 * X @ R.T + np.array([1.0, -2.0, 3.0])
    s, R2, t2 = G.procrustes(X, Y)
    assert abs(s - 2.5) < 1e-9 and np.allclose(R2, R, atol=1e-9) and np.allclose(t2, [1, -2, 3], atol=1e-9)
    Ym = Y * np.array([-1, 1, 1])  # a mirror image: the best proper rotation, never det -1
    _, R3, _ = G.procrustes(X, Ym)
    assert np.linalg.det(R3) > 0
    w = np.zeros(50)
    w[:10] = 1  # weights: only these points decide
    Y2 = Y.copy()
    Y2[10:] += r.normal(0, 5, (40, 3))
    s4, R4, _ = G.procrustes(X, Y2, w)
    assert abs(s4 - 2.5) < 1e-9 and np.allclose(R4, R, atol=1e-9)


# ------------------------------------------------------------------------------------------ crops


def test_crop_intrinsics_agree_with_cropped_points():
    r = rng(6)
    X = face_points(r)
    R, t = random_pose(r)
    K = G.default_intrinsics(640, 480, 55)
    x0, y0, size = G.crop_from_pose(R, t, K)
    Kc = G.crop_intrinsics(K, x0, y0, size, 256)
    assert np.allclose(G.project(X, R, t, Kc), G.to_crop(G.project(X, R, t, K), x0, y0, size, 256), atol=1e-9)
    # the crop is square and follows the head: its centre is the projected head centre
    c = G.project(np.array([[0.0, 2.5, -2.0]]), R, t, Kc)[0]
    assert np.allclose(c, [128, 128], atol=1e-6)


@pytest.mark.parametrize("x0,y0,size,res", [(10.3, 20.7, 50.0, 128), (-5.0, 3.0, 300.0, 64), (0.0, 0.0, 64.0, 64)])
def test_crop_image_puts_content_where_the_intrinsics_say(x0, y0, size, res):
    H, W = 240, 320
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    p = np.array([x0 + 0.37 * size, y0 + 0.61 * size])  # a blob at a sub-pixel position inside the crop
    sig = max(2.0, size / res * 2)
    img = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * sig**2)).astype(np.float32)
    out = crop_square(img, x0, y0, size, res)
    v, u = np.mgrid[0:res, 0:res] + 0.5
    cen = np.array([(out * u).sum(), (out * v).sum()]) / out.sum()
    assert np.allclose(cen, G.to_crop(p, x0, y0, size, res), atol=0.15)


def test_warp_identity_and_outside_fill():
    img = (np.arange(12 * 16 * 3) % 251).reshape(12, 16, 3).astype(np.uint8)
    assert np.array_equal(warp_affine(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (12, 16)), img)
    out = crop_square(img, -100.0, -100.0, 16.0, 16)
    assert out.max() == 0


def test_default_intrinsics_and_c2w():
    K = G.default_intrinsics(200, 100, 90)
    assert np.isclose(K[0, 0], 100) and np.isclose(K[0, 2], 100) and np.isclose(K[1, 2], 50)
    R = np.diag([1.0, -1.0, -1.0])
    c2w = G.w2c_to_c2w(R, np.array([0, 0, 55.0]), 1 / 11)
    expect = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5.0], [0, 0, 0, 1]])
    assert np.allclose(c2w, expect)  # docs/dataset.md: a frontal camera at distance d


# ------------------------------------------------------------------------------------------ expression basis


def synthetic_people(r, n_people=3, frames=60, n=60, modes=4):
    base = r.normal(size=(n, 3)) * 5
    # orthonormal true modes [modes, D] that leave the first 20 (rigid) points alone, like a face's
    # forehead and nose bridge, on which the alignment is weighted
    A = r.normal(size=(n, 3, modes))
    A[:20] = 0
    M = np.linalg.qr(A.reshape(n * 3, modes))[0].T
    people, coeffs = {}, {}
    for p in range(n_people):
        ident = base + r.normal(size=(n, 3)) * 0.5
        c = r.normal(size=(frames, modes)) * np.array([3.0, 2.0, 1.5, 1.0])[:modes]
        c[: frames // 2] = 0.0  # half the frames neutral, so the median is the neutral face
        shapes = []
        for f in range(frames):
            s = ident + (c[f] @ M).reshape(n, 3)
            R = G.rodrigues(r.normal(0, 0.3, 3))
            shapes.append(1.7 * s @ R.T + r.normal(0, 3, 3))  # a random similarity on top
        people[f"p{p}"] = np.stack(shapes)
        coeffs[f"p{p}"] = c
    return people, coeffs, M, base


def test_expression_basis_finds_the_true_modes_and_codes_reconstruct():
    r = rng(7)
    people, coeffs, M, base = synthetic_people(r)
    w = np.zeros(60)
    w[:20] = 1.0
    basis, codes = ExpressionBasis.build(people, dim=6, weights=w, reference=base)
    assert basis.basis.shape == (6, M.shape[1]) and basis.rank == 6
    # the first 4 principal axes span the true modes
    P = basis.basis[:4]
    s = np.linalg.svd(P @ M.T, compute_uv=False)
    assert s.min() > 0.999
    assert np.allclose(basis.basis[:4] @ basis.basis[:4].T, np.eye(4), atol=1e-9)
    # codes are unit-spread and zero for the neutral frames
    allc = np.concatenate(list(codes.values()))
    assert np.allclose(np.sqrt((allc[:, :4] ** 2).mean(0)), 1.0, atol=1e-6)
    assert np.abs(codes["p0"][:30, :4]).max() < 0.05
    # projecting the same frames into the stored basis gives the same codes
    assert np.allclose(basis.project(people["p1"]), codes["p1"], atol=1e-6)


def test_expression_basis_pads_to_dim_and_roundtrips(tmp_path):
    r = rng(8)
    people, _, _, base = synthetic_people(r, n_people=1, frames=8, modes=2)
    basis, codes = ExpressionBasis.build(people, dim=46, reference=base)
    assert codes["p0"].shape == (8, 46)
    assert basis.rank <= 7 and np.all(codes["p0"][:, basis.rank :] == 0)
    basis.save(tmp_path / "b.safetensors")
    b2 = ExpressionBasis.load(tmp_path / "b.safetensors")
    assert np.allclose(b2.project(people["p0"]), basis.project(people["p0"]), atol=1e-5)
    with pytest.raises(DgnerfError, match="not a readable safetensors"):
        (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
        ExpressionBasis.load(tmp_path / "bad.safetensors")


def test_generalized_procrustes_removes_pose():
    r = rng(9)
    S = r.normal(size=(30, 3))
    shapes = np.stack([2.0 * S @ G.rodrigues(r.normal(size=3)).T + r.normal(size=3) for _ in range(5)])
    aligned, ref = generalized_procrustes(shapes)
    assert np.abs(aligned - aligned[0]).max() < 1e-9


# ------------------------------------------------------------------------------------------ tracking choice


def face_at(cx, cy, s):
    pts = np.zeros((478, 3))
    pts[:, 0] = cx + np.linspace(-s, s, 478)
    pts[:, 1] = cy + np.linspace(-s, s, 478)[::-1]
    return pts


def test_track_selector_reasons():
    sel = TrackSelector()
    assert sel.select([]) == (None, "no_face")
    f, why = sel.select([face_at(0.3, 0.5, 0.1), face_at(0.7, 0.5, 0.095)])
    assert f is None and why == "several_faces"
    f, why = sel.select([face_at(0.3, 0.5, 0.1), face_at(0.7, 0.5, 0.05)])
    assert why is None and np.isclose(f[:, 0].mean(), 0.3)  # the largest
    f, why = sel.select([face_at(0.7, 0.5, 0.12), face_at(0.31, 0.5, 0.1)])
    assert why is None and np.isclose(f[:, 0].mean(), 0.31)  # the tracked one, not the larger
    f, why = sel.select([face_at(0.8, 0.2, 0.1)])
    assert why == "lost_track"
    # two similar faces for ever: after `reacquire_after` frames the largest is taken, and that is counted
    sel = TrackSelector(reacquire_after=3)
    two = [face_at(0.3, 0.5, 0.1), face_at(0.7, 0.5, 0.098)]
    assert [sel.select(two)[1] for _ in range(3)] == ["several_faces"] * 3
    f, why = sel.select(two)
    assert why is None and np.isclose(f[:, 0].mean(), 0.3) and sel.forced_starts == 1
    # the track then follows that face, even when the other one becomes larger
    f, why = sel.select([face_at(0.7, 0.5, 0.15), face_at(0.31, 0.5, 0.1)])
    assert why is None and np.isclose(f[:, 0].mean(), 0.31)


# ------------------------------------------------------------------------------------------ AdaFace loader


def tiny_ir(prefix="model."):
    from dgnerf.face.recognition import IRNet

    net = IRNet(units=(1, 2, 1, 1), widths=(8, 16, 24, 32), embedding=24, input_size=32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    net.eval()
    sd = {prefix + k: v.contiguous() for k, v in net.state_dict().items()}
    return net, sd


def test_adaface_loads_a_self_written_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from dgnerf.face.recognition import AdaFace

    net, sd = tiny_ir()
    p = tmp_path / "ada.safetensors"
    save_file(sd, str(p))
    enc = AdaFace(p)
    assert enc.config == {"units": (1, 2, 1, 1), "widths": (8, 16, 24, 32), "embedding": 24, "input_size": 32}
    crops = (np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3))).astype(np.uint8)
    f = enc.embed_crops(crops)
    x = torch.from_numpy(crops[..., ::-1].astype(np.float32).copy()).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        ref, _ = net(x)
    assert np.allclose(f, ref.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    # on a frame with landmarks: the 5-point alignment runs end to end
    lm = face_at(60, 50, 20)[:, :2]
    v = enc(np.zeros((100, 120, 3), np.uint8) + 100, lm)
    assert v.shape == (24,) and np.isfinite(v).all()


def test_ir101_architecture_is_inferred():
    from dgnerf.face.recognition import IRNet, ir_config_from_state_dict

    sd = {k: v for k, v in IRNet().state_dict().items()}
    cfg = ir_config_from_state_dict(sd)
    assert cfg == {"units": (3, 13, 30, 3), "widths": (64, 128, 256, 512), "embedding": 512, "input_size": 112}


def test_adaface_refuses_pickles_and_mismatched_files(tmp_path):
    from safetensors.torch import save_file

    from dgnerf.face.recognition import AdaFace

    (tmp_path / "x.ckpt").write_bytes(b"\x80\x04not read")
    with pytest.raises(DgnerfError, match="never unpickles"):
        AdaFace(tmp_path / "x.ckpt")
    with pytest.raises(DgnerfError, match="no such file"):
        AdaFace(tmp_path / "missing.safetensors")
    _, sd = tiny_ir()
    sd.pop("model.body.1.res_layer.4.weight")
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(DgnerfError, match="missing"):
        AdaFace(tmp_path / "broken.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DgnerfError, match="input_layer"):
        AdaFace(tmp_path / "other.safetensors")


# ------------------------------------------------------------------------------------------ gaze


def test_gaze_features_follow_the_iris():
    from dgnerf.preprocess.features import EYES, gaze_features

    S = np.zeros((478, 3))
    for eye, sgn in (("right", -1), ("left", 1)):
        e = EYES[eye]
        S[e["corners"][0], :2] = [sgn * 3 - 1.5 * (1 if eye == "right" else -1), 0]
        S[e["corners"][1], :2] = [sgn * 3 + 1.5 * (1 if eye == "right" else -1), 0]
        S[e["lids"][0], :2] = [sgn * 3, 0.5]
        S[e["lids"][1], :2] = [sgn * 3, -0.5]
        S[e["iris"], :2] = [sgn * 3 + 0.3, 0.15]  # looking right and a little up
    g = gaze_features(S)
    assert np.allclose(g[:4], [0.1, 0.05, 0.1, 0.05], atol=1e-6)
    assert np.allclose(g[4:], [1 / 3, 1 / 3], atol=1e-6)
