"""`dgnerf view` without a browser: the session (checked state, renders, level of detail, code files, expression
components), the pose conversion of live driving, and the server over a WebSocket client (the page's messages,
bad ones included, origin and host checks, static files, webcam frames with an injected tracker)."""
from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dgnerf.apps.viewer.live import FACE_FRAME, LiveTracker, Tracked, head_angles
from dgnerf.apps.viewer.session import (
    ViewerInputError,
    ViewerSession,
    orbit_angles,
    preview_model,
)
from dgnerf.camera import rotation_matrix, view_c2w
from dgnerf.codes import load_code
from dgnerf.model import HeadConfig, HeadModel
from tests.conftest import TINY_MODEL


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HeadModel(HeadConfig(**TINY_MODEL, identity_dim=512, expression_dim=46)).eval()


@pytest.fixture(scope="module")
def session(model, tiny_set):
    return ViewerSession(model, torch.device("cpu"), dataset=tiny_set, components=4, preview_size=4)


def page_state(session, **over):
    st = {"type": "state", "camera": {"yaw": 10.0, "pitch": -5.0, "roll": 0.0, "distance": session.model.cfg.camera_distance},
          "identity": {"a": 0, "b": 1, "t": 0.5}, "expression": [0.0] * len(session.components.labels), "sequence": None,
          "options": {"precision": "fp32", "skip": 0, "ert": 0.0}, "drag": False, "live": False}
    st.update(over)
    return st


# ------------------------------------------------------------------ session
def test_state_round_trip_and_render_sizes(session):
    st = session.parse_state(page_state(session))
    assert (st.yaw, st.pitch, st.identity_t) == (10.0, -5.0, 0.5)
    full, info = session.render(st, "full")
    prev, pinfo = session.render(st, "preview")
    cfg = session.model.cfg
    assert full.shape == (cfg.image_size, cfg.image_size, 3) and full.dtype == np.uint8
    assert prev.shape == (cfg.image_size // 2, cfg.image_size // 2, 3)  # preview_size 4 of feature_size 8
    assert info["quality"] == "full" and pinfo["quality"] == "preview"
    assert set(info["timings"]) >= {"sampling", "mlp", "integration", "renderer"}
    assert info["pose"] == [10.0, -5.0, 0.0]


@pytest.mark.parametrize("path,value,field", [
    (("camera", "yaw"), float("nan"), "camera.yaw"),
    (("camera", "yaw"), 1e9, "camera.yaw"),
    (("camera", "pitch"), 90.0, "camera.pitch"),
    (("camera", "distance"), 0.0, "camera.distance"),
    (("camera", "roll"), "12", "camera.roll"),
    (("camera", "yaw"), True, "camera.yaw"),
    (("identity", "a"), 99, "identity.a"),
    (("identity", "b"), -1, "identity.b"),
    (("identity", "a"), 1.0, "identity.a"),
    (("identity", "t"), 1.5, "identity.t"),
    (("expression",), [0.0], "expression"),
    (("expression",), "smile", "expression"),
    (("options", "precision"), "fp16", "options.precision"),  # CUDA only
    (("options", "skip"), 100, "options.skip"),
    (("options", "ert"), -0.1, "options.ert"),
    (("drag",), "yes", "drag"),
    (("live_quality",), "ultra", "live_quality"),
    (("sequence",), {"person": 0, "frame": 99, "pose": False}, "sequence.frame"),
    (("sequence",), {"person": 0, "frame": 0, "pose": 1}, "sequence.pose"),
    (("sequence",), [0, 1], "sequence"),
    (("camera",), None, "camera"),
    (("surprise",), 1, "unknown field"),
])
def test_bad_state_names_the_field(session, path, value, field):
    st = page_state(session)
    obj = st
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    with pytest.raises(ViewerInputError, match=field.replace(".", r"\.")):
        session.parse_state(st)


def test_expression_components_are_labelled_and_reset_is_neutral(session):
    c = session.components
    assert c.source == "pca" and c.axes.shape == (4, 46)
    assert torch.allclose(c.axes @ c.axes.T, torch.eye(4), atol=1e-5)
    # the built-in set's basis has parameter names: each component says which ones it moves
    names = ("jaw_open", "smile", "brow", "blink", "gaze", "cheek", "mouth", "pucker", "squint")
    assert all(any(n in lab for n in names) for lab in c.labels), c.labels
    st = session.parse_state(page_state(session))
    assert torch.count_nonzero(session.codes(st)[1]) == 0  # sliders at 0: the zero (neutral) code
    st = session.parse_state(page_state(session, expression=[1.0, 0.0, 0.0, 0.0]))
    e = session.codes(st)[1]
    assert torch.allclose(e[0], c.axes[0] * c.scale[0])
    assert session.slider_values(e)[0] == pytest.approx(1.0, abs=1e-4)


def test_sequence_plays_recorded_codes_and_pose(session):
    p = session.persons[0]
    st = session.parse_state(page_state(session, sequence={"person": 0, "frame": 1, "pose": True}))
    assert torch.equal(session.codes(st)[1][0], p.expression[1])
    yaw, pitch, roll = session.pose(st)
    assert (yaw, pitch, roll) == pytest.approx(tuple(float(v) for v in p.yaw_pitch_roll[1]), abs=1e-4)
    _, info = session.render(st, "preview")
    assert len(info["sliders"]) == 4


def test_recorded_pose_reproduces_the_dataset_camera(session, tiny_set):
    """The sequence's yaw/pitch/roll put the orbit camera where the dataset's camera looks from."""
    from dgnerf.data import HeadDataset

    ds = HeadDataset(tiny_set, check="none")
    c2w = ds.arrays["c2w"][0]
    y, p, r = (float(v) for v in session.persons[0].yaw_pitch_roll[0])
    assert torch.allclose(view_c2w(y, p, 1.0, None, roll=r)[0, :3, :3], c2w[:3, :3], atol=1e-4)


def test_preview_model_shares_the_weights(model):
    twin = preview_model(model, 4)
    assert twin.cfg.feature_size == 4 and twin.cfg.image_size == model.cfg.image_size // 2
    assert model.cfg.feature_size == 8  # the original is untouched
    assert all(a is b for a, b in zip(twin.parameters(), model.parameters()))
    assert preview_model(model, model.cfg.feature_size) is model


def test_code_file_reads_in_render_and_drive(session, tmp_path, model):
    st = session.parse_state(page_state(session, expression=[0.5, -0.2, 0.0, 1.0]))
    path = tmp_path / "view.safetensors"
    path.write_bytes(session.code_file_bytes(st))
    z, e = session.codes(st)
    assert torch.equal(load_code(str(path), 512, "identity"), z)
    assert torch.equal(load_code(str(path), 46, "expression"), e)
    from dgnerf.codes import load_identity

    assert torch.equal(load_identity(str(path), 512), z)  # what `dgnerf drive --target` reads
    png = session.png_bytes(st)
    assert Image.open(io.BytesIO(png)).size == (model.cfg.image_size, model.cfg.image_size)


def test_uploaded_code_file_bytes_never_a_path(session):
    n = len(session.persons)
    buf = io.BytesIO()
    np.save(buf, np.ones(512, np.float32))
    k = session.add_code("me.npy", buf.getvalue())
    assert k == n and session.persons[k].name == "me.npy"
    with pytest.raises(ViewerInputError, match="expected a .npy"):
        session.add_code("../../etc/passwd", b"root")
    with pytest.raises(ViewerInputError, match="holds 3 numbers"):
        session.add_code("short.txt", b"1 2 3")
    with pytest.raises(ViewerInputError):
        session.add_code("pickle.npy", b"\x93NUMPY garbage")
    session.persons.pop()
    session.uploads -= 1


def test_session_without_data_offers_random_identities(model):
    s = ViewerSession(model, torch.device("cpu"), components=3)
    assert [p.name for p in s.persons] == ["random:0", "random:1", "random:2", "random:3"]
    assert s.components.source == "code" and s.components.axes.shape == (3, 46)
    img, _ = s.render(s.default_state(), "preview")
    assert img.shape[0] == model.cfg.image_size // 2


# ------------------------------------------------------------------ live driving's pose
@pytest.mark.parametrize("ypr", [(0, 0, 0), (25, -10, 5), (-40, 15, -20)])
def test_orbit_angles_invert_the_rotation(ypr):
    R = rotation_matrix(*ypr)[0].double().numpy()
    assert orbit_angles(R) == pytest.approx(ypr, abs=1e-6)


def test_tracked_head_pose_becomes_the_dataset_camera():
    """A head posed by R (PnP, face frame) rendered at head_angles(R) in the face-frame world (a preprocessed
    set's) has the camera rotation of that frame's dataset camera, R^T; frontal is (0, 0, 0)."""
    assert head_angles(FACE_FRAME) == pytest.approx((0, 0, 0), abs=1e-9)
    R_head = rotation_matrix(20.0, -8.0, 12.0)[0].double().numpy()
    R = FACE_FRAME @ R_head  # a head turned by R_head in front of the camera
    y, p, r = head_angles(R)
    c2w = view_c2w(y, p, 5.0, torch.tensor(FACE_FRAME, dtype=torch.float32), roll=r)
    assert np.allclose(c2w[0, :3, :3].numpy(), R.T, atol=1e-5)


def test_live_tracker_reads_pose_and_expression_from_landmarks(tmp_path):
    """Landmarks projected from a posed face mesh -> the tracker's yaw/pitch/roll; a mouth-opening offset ->
    a non-zero expression code in a basis built from such frames."""
    from dgnerf.face import geometry as G
    from dgnerf.preprocess.expression import N_FACE, ExpressionBasis, to_shape_frame

    rng = np.random.default_rng(0)
    verts = np.stack([rng.uniform(-7, 7, N_FACE), rng.uniform(-9, 8, N_FACE), rng.uniform(-2, 7, N_FACE)], 1)
    geo = {"vertices": verts}
    W, H = 320, 240
    K = G.default_intrinsics(W, H, 50.0)
    mouth = verts[:, 1] < -4

    def landmarks(yaw, open_=0.0):
        X = verts.copy()
        X[mouth, 1] -= open_
        R = FACE_FRAME @ rotation_matrix(yaw, 5.0, -3.0)[0].double().numpy()
        t = np.array([0.0, 0.0, 60.0])
        uv = G.project(X, R, t, K)
        z = (X @ R.T + t)[:, 2:3]
        lm = np.concatenate([uv / [W, H], (z - 60.0) / W], 1)
        return np.concatenate([lm, np.repeat(lm[:1], 10, 0)], 0)  # 478 rows like MediaPipe

    frames = [landmarks(0, o) for o in (0, 0, 0, 1.5, 0, 0.5)]
    shapes = np.stack([to_shape_frame(f[:N_FACE], W, H) for f in frames])
    basis, _ = ExpressionBasis.build({"a": shapes}, 46, None, verts)
    basis.save(tmp_path / "expression_basis.safetensors")
    queue = []
    tr = LiveTracker(str(tmp_path / "expression_basis.safetensors"), faces_fn=lambda rgb: queue.pop(0), geometry=geo,
                     expression_dim=46)
    rgb = np.zeros((H, W, 3), np.uint8)
    for yaw in (0.0, 0.0, 0.0, 0.0):
        queue.append([landmarks(yaw)])
        got, why = tr(rgb)
        assert why is None
    assert got.yaw == pytest.approx(0.0, abs=0.5) and float(np.abs(got.expression).max()) < 1e-3
    queue.append([landmarks(20.0)])
    got, _ = tr(rgb)
    truth = head_angles(FACE_FRAME @ rotation_matrix(20.0, 5.0, -3.0)[0].double().numpy())
    assert (got.yaw, got.pitch, got.roll) == pytest.approx(truth, abs=0.5)
    assert got.yaw == pytest.approx(20.0, abs=1.0)  # a head turned by yaw: the orbit camera's yaw
    queue.append([landmarks(0.0, 1.5)])
    got, _ = tr(rgb)
    assert float(np.abs(got.expression).max()) > 0.5
    queue.append([])  # no face
    assert tr(rgb) == (None, "no_face")


# ------------------------------------------------------------------ the server over a WebSocket
class FakeTracker:
    def __init__(self):
        self.n = 0

    def __call__(self, rgb):
        self.n += 1
        if self.n == 2:
            return None, "no_face"
        return Tracked(15.0, -4.0, 2.0, np.full(46, 0.1, np.float32), 0.5, 1.0), None

    def set_neutral(self):
        return True

    def reset_neutral(self):
        pass

    def close(self):
        pass


@pytest.fixture()
def server(session):
    pytest.importorskip("websockets")
    from dgnerf.apps.viewer.server import ViewerServer

    s = ViewerServer(session, "127.0.0.1", 0, live=(True, "", None), tracker_factory=FakeTracker, log=lambda m: None)
    url = s.start_in_thread()
    yield s, url
    s.stop()


def recv(ws, timeout=60):
    m = ws.recv(timeout=timeout)
    if isinstance(m, str):
        return json.loads(m), None
    n = struct.unpack(">I", m[:4])[0]
    return json.loads(m[4:4 + n]), m[4 + n:]


def recv_until(ws, kind, timeout=60):
    while True:
        h, payload = recv(ws, timeout)
        if h["type"] == kind:
            return h, payload


def connect(url, origin=None):
    from websockets.sync.client import connect as ws_connect

    return ws_connect(url.replace("http://", "ws://") + "ws", origin=origin or url.rstrip("/"), max_size=2**22,
                      open_timeout=30)


def test_server_renders_states_and_survives_bad_messages(server, session):
    from dgnerf.apps.viewer.server import pack

    _, url = server
    with connect(url) as ws:
        hello, _ = recv(ws)
        assert hello["type"] == "hello" and hello["live"]["available"] and len(hello["persons"]) == len(session.persons)
        ws.send(json.dumps(page_state(session, drag=True)))
        h, jpeg = recv_until(ws, "frame")
        assert h["quality"] == "preview" and Image.open(io.BytesIO(jpeg)).format == "JPEG"
        # no new state after a preview: the full frame follows by itself
        h, _ = recv_until(ws, "frame")
        assert h["quality"] == "full"
        for bad in ("{", "[]", '{"type": "rm"}', json.dumps(page_state(session, camera={"yaw": "NaN"})),
                    json.dumps({"type": "neutral", "action": 1}), "x" * 70000, "[" * 30000 + "]" * 30000,
                    json.dumps({"type": "state", "expression": [[[1]]] * 5})):
            ws.send(bad)
            h, _ = recv_until(ws, "error")
            assert h["message"]
        for bad in (b"\x00", b"\x00\x00\x00\x05{}", pack({"type": "camera", "id": -1, "t": 0}, b"x"),
                    pack({"type": "camera", "id": 1, "t": 0}, b"not a jpeg"), pack({"type": "what"}),
                    pack({"type": "upload", "name": "/etc/passwd"}, b"1")):
            ws.send(bad)
            h, _ = recv_until(ws, "error")
            assert h["message"]
        ws.send(json.dumps(page_state(session, camera={"yaw": 30.0, "pitch": 0.0, "roll": 0.0, "distance": 4.0})))
        h, _ = recv_until(ws, "frame")
        assert h["pose"][0] == 30.0
        ws.send(json.dumps({"type": "save_codes"}))
        h, data = recv_until(ws, "codes")
        assert data[:8] and len(data) > 2000


def test_server_live_frames_with_an_injected_tracker(server, session):
    from dgnerf.apps.viewer.server import pack

    _, url = server
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 80, 70)).save(buf, format="JPEG")
    with connect(url) as ws:
        recv(ws)
        ws.send(json.dumps(page_state(session, live=True)))
        recv_until(ws, "frame")
        ws.send(pack({"type": "camera", "id": 7, "t": 123.0}, buf.getvalue()))
        assert recv_until(ws, "live_started")[0]["id"] == 7
        h, _ = recv_until(ws, "frame")
        assert h["live"]["id"] == 7 and h["live"]["t"] == 123.0 and h["pose"] == [15.0, -4.0, 2.0]
        assert len(h["sliders"]) == 4
        ws.send(pack({"type": "camera", "id": 8, "t": 124.0}, buf.getvalue()))
        h, _ = recv_until(ws, "live")
        assert (h["id"], h["ok"], h["reason"]) == (8, False, "no_face")
        ws.send(json.dumps({"type": "neutral", "action": "set"}))
        assert recv_until(ws, "neutral")[0]["ok"] is True


def test_server_refuses_other_origins_and_hosts(server):
    import urllib.error
    import urllib.request

    from websockets.exceptions import InvalidStatus

    s, url = server
    with pytest.raises(InvalidStatus):
        connect(url, origin="http://evil.example")
    with urllib.request.urlopen(url) as r:
        body = r.read().decode()
        assert "dgnerf view" in body and "default-src 'self'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(url + "viewer.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    for path in ("../setup.py", "static/index.html", "nope"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + path)
        assert e.value.code == 404
    req = urllib.request.Request(url, headers={"Host": f"rebound.example:{s.bound_port}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 403


def test_view_command_refuses_remote_host_without_flag(tmp_path, capsys):
    from dgnerf.cli import main

    ckpt = tmp_path / "none.safetensors"
    assert main(["view", str(ckpt), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["view", str(ckpt), "--port", "70000"]) == 2
    assert main(["view", str(ckpt)]) == 2  # no such checkpoint: one line naming it
    assert "CHECKPOINT" in capsys.readouterr().err
    assert main(["view", str(ckpt), "--data", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def test_warmup_and_cuda_device_code_path(session):
    """warmup renders every quality; on a CUDA machine the session also runs there (skipped on CPU)."""
    session.warmup()
    if not torch.cuda.is_available():
        return
    model = session.model.to("cuda")
    try:
        s = ViewerSession(model, torch.device("cuda"), components=2)
        st = s.default_state()
        st.precision = "fp16"
        img, info = s.render(st, "full")
        assert img.shape[0] == model.cfg.image_size and math.isfinite(info["timings"]["mlp"])
    finally:
        session.model.to("cpu")
