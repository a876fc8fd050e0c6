"""The whole preprocess pipeline and the import, with fake detectors (no MediaPipe / OpenCV / assets):
what is kept, what is dropped and why, and that the result is a valid dataset."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from dgnerf.data import HeadDataset, check_dataset
from dgnerf.errors import DgnerfError
from dgnerf.face import geometry as G
from dgnerf.preprocess.pipeline import HEAD_RADIUS, UNIT_CM, Options, run

W, H = 160, 120


def synthetic_geometry():
    r = np.random.default_rng(0)
    th = r.uniform(0.3, math.pi - 0.3, 468)
    ph = r.uniform(0.2, math.pi - 0.2, 468)
    v = np.stack([7.7 * np.cos(ph) * np.sin(th), 9.0 * np.cos(th), 7.5 * np.sin(ph) * np.sin(th) - 1.0], 1)
    ids = np.arange(0, 468, 15)
    return {"vertices": v, "procrustes_ids": ids, "procrustes_weights": np.ones(len(ids)) / len(ids)}


GEO = synthetic_geometry()


def landmarks(yaw_deg, shift=(0.0, 0.0), dist=70.0, hw=(H, W)):
    """478 normalised MediaPipe-style landmarks of the synthetic head at a pose (irises at the eye corners' mean)."""
    h, w = hw
    R = G.rodrigues([0, math.radians(yaw_deg), 0]) @ np.diag([1.0, -1.0, -1.0])
    t = np.array([shift[0], shift[1], dist])
    K = G.default_intrinsics(w, h, 50.0)
    X = GEO["vertices"]
    uv = G.project(X, R, t, K)
    z = (X @ R.T + t)[:, 2]
    lm = np.zeros((478, 3))
    lm[:468, 0] = uv[:, 0] / w
    lm[:468, 1] = uv[:, 1] / h
    lm[:468, 2] = (z - t[2]) * K[0, 0] / t[2] / w
    for k, (a, b) in zip((468, 473), ((33, 133), (362, 263))):
        lm[k : k + 5] = (lm[a] + lm[b]) / 2
    return lm


# what the fake detector sees in frame i (the frame number is written into pixel [0, 0])
SCRIPT = {0: "two", 4: "none", 9: "far"}


def fake_faces(static):
    def detect(rgb):
        i = int(rgb[0, 0, 0]) // 10
        kind = SCRIPT.get(i, "one")
        hw = rgb.shape[:2]
        if kind == "none":
            return []
        if kind == "two":
            return [landmarks(0, (-12, 0), hw=hw), landmarks(0, (12, 0), hw=hw)]
        if kind == "far":
            return [landmarks(0, (-30, -15), dist=150, hw=hw)]
        return [landmarks(2.0 * i - 10, hw=hw)]

    return detect


def fake_segment(rgb):
    return np.ones(rgb.shape[:2], np.float32)


def fake_encoder(rgb, uv):
    v = np.ones(512, np.float32) + np.random.default_rng(int(uv[0, 0] * 10)).normal(0, 0.1, 512).astype(np.float32)
    return v / np.linalg.norm(v)


def write_frames(d, n=12, bad=(7,), size=(W, H)):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = d / f"f{i:03d}.png"
        if i in bad:
            p.write_bytes(b"not a png")
            continue
        a = np.full((size[1], size[0], 3), 90, np.uint8)
        a[0, 0, 0] = 10 * i + 5
        Image.fromarray(a).save(p)
    return d


def run_fake(inputs, out, **kw):
    return run([str(i) for i in inputs], str(out), Options(resolution=64, progress=False, expression_dim=8, **kw),
               faces_fn_factory=fake_faces, segment_fn=fake_segment, encoder=fake_encoder, geometry=GEO, log=lambda *a: None)


def test_pipeline_accounts_for_every_frame_and_writes_a_valid_set(tmp_path):
    clip = write_frames(tmp_path / "clip")
    mixed = tmp_path / "mixed"
    write_frames(mixed, n=2, bad=(), size=(W, H))
    a = np.full((100, 140, 3), 90, np.uint8)
    a[0, 0, 0] = 25
    Image.fromarray(a).save(mixed / "f009.png")  # another size in the same folder
    (tmp_path / "empty").mkdir()
    s = run_fake([clip, mixed, tmp_path / "missing.mp4", tmp_path / "empty"], tmp_path / "set", preview=True, smooth_sigma=0.0)

    rep = {r.name: r for r in s.sources}
    c = rep["clip"]
    assert (c.total, c.kept) == (12, 8)
    assert dict(c.dropped) == {"several_faces": 1, "no_face": 1, "unreadable": 1, "lost_track": 1}
    assert c.examples["unreadable"] == [7] and c.examples["lost_track"] == [9]
    m = rep["mixed"]
    assert m.kept == 2 and dict(m.dropped) == {"several_faces": 1} and any("different sizes" in n for n in m.notes)
    assert len(s.problems) == 2 and any("missing.mp4" in p for p in s.problems) and any("empty" in p for p in s.problems)
    assert s.total == 15 and s.kept == 10 and sum(s.dropped().values()) == 5
    assert s.reproj_raw_px < 1e-3 and s.reproj_px < 1e-3 and s.mask_cover == 1.0
    text = s.format()
    assert "kept 8/12" in text and "several_faces 1" in text and "reprojection error" in text

    out = tmp_path / "set"
    assert check_dataset(out) == []
    man = json.loads((out / "manifest.json").read_text())
    assert man["head_radius"] == HEAD_RADIUS
    from dgnerf.preprocess.features import _ELLIPSOID

    assert np.linalg.norm(_ELLIPSOID, axis=1).max() / UNIT_CM <= HEAD_RADIUS  # the masked head fits the sphere
    assert man["num_frames"] == 10 and man["gaze_dim"] == 6 and man["expression_dim"] == 8
    assert [p["id"] for p in man["persons"]] == ["clip", "mixed"]
    assert man["meta"]["summary"]["frames_kept"] == 10
    ds = HeadDataset(out)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["expression"].shape == (8,)
    # the stored camera sees the head where the landmarks are: project the mesh with c2w^-1 and intrinsics
    from safetensors.numpy import load_file

    arr = load_file(str(out / "frames.safetensors"))
    trk = load_file(str(out / "tracking.safetensors"))
    for i in range(3):
        w2c = np.linalg.inv(arr["c2w"][i].astype(np.float64))
        fx, fy, cx, cy = arr["intrinsics"][i]
        Xc = (GEO["vertices"] / UNIT_CM) @ w2c[:3, :3].T + w2c[:3, 3]
        uv = Xc[:, :2] / Xc[:, 2:] * [fx, fy] + [cx, cy]
        x0, y0, size = trk["crop_box"][i]
        lm = trk["landmarks"][i]
        hw = (H, W) if i < 8 else None
        if hw:
            expect = G.to_crop(lm[:468, :2] * [W, H], x0, y0, size, 64)
            assert np.abs(uv - expect).max() < 1e-3
    assert (out / "preview.png").is_file()


def test_pipeline_with_nothing_usable_is_a_clear_error(tmp_path):
    d = write_frames(tmp_path / "bad", n=3, bad=(0, 1, 2))
    with pytest.raises(DgnerfError, match=r"no frame was kept from any input \(\S*bad: unreadable x3\)"):
        run_fake([d], tmp_path / "out")
    with pytest.raises(DgnerfError, match="no usable input"):
        run_fake([tmp_path / "nope"], tmp_path / "out2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DgnerfError, match="not empty"):
        run_fake([d], tmp_path / "full")


def test_projection_into_an_existing_basis(tmp_path):
    clip = write_frames(tmp_path / "clip", bad=())
    run_fake([clip], tmp_path / "a")
    s = run_fake([clip], tmp_path / "b", expression_basis=str(tmp_path / "a"))
    from safetensors.numpy import load_file

    ea = load_file(str(tmp_path / "a" / "frames.safetensors"))["expression"]
    eb = load_file(str(tmp_path / "b" / "frames.safetensors"))["expression"]
    # the leading components (the rest are float32 noise in this expressionless set) agree
    assert s.kept == len(ea) and np.allclose(ea[:, :4], eb[:, :4], atol=1e-3)
    with pytest.raises(DgnerfError, match="expression-basis"):
        run_fake([clip], tmp_path / "c", expression_basis=str(tmp_path / "nowhere"))


def test_projection_keeps_only_the_components_a_realvideo_model_saw(tmp_path):
    """`dgnerf realvideo` trains on codes whose components K.. are 0; a new video projected into its set's basis
    (dgnerf fit/drive on a raw video) must get 0 there as well, not values the model never saw."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from dgnerf.apps.realvideo import RealVideoConfig, prepare

    clip = write_frames(tmp_path / "clip", bad=())
    run_fake([clip], tmp_path / "a")
    prepare(RealVideoConfig(data=str(tmp_path / "a"), out=str(tmp_path / "rv"), train_frames="0-4", test_frames="5-8",
                            expression_components=3, progress=False), log=lambda *a: None)
    rv = tmp_path / "rv" / "data"
    with safe_open(str(rv / "expression_basis.safetensors"), "np") as f:
        assert f.metadata()["components"] == "3"
    full = load_file(str(tmp_path / "a" / "frames.safetensors"))["expression"]
    for i, basis in enumerate((rv, rv / "expression_basis.safetensors")):
        run_fake([clip], tmp_path / f"b{i}", expression_basis=str(basis))
        e = load_file(str(tmp_path / f"b{i}" / "frames.safetensors"))["expression"]
        assert np.all(e[:, 3:] == 0) and np.allclose(e[:, :3], full[:, :3], atol=1e-3)
    # an older realvideo set (no `components` in the basis file): the manifest says it
    (tmp_path / "old").mkdir()
    for f in ("manifest.json", "frames.safetensors"):
        (tmp_path / "old" / f).write_bytes((rv / f).read_bytes())
    from safetensors.numpy import save_file

    with safe_open(str(rv / "expression_basis.safetensors"), "np") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "components"}
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(tmp_path / "old" / "expression_basis.safetensors"), metadata=meta)
    run_fake([clip], tmp_path / "b2", expression_basis=str(tmp_path / "old"))
    assert np.all(load_file(str(tmp_path / "b2" / "frames.safetensors"))["expression"][:, 3:] == 0)
    # a basis from dgnerf preprocess itself keeps every component
    run_fake([clip], tmp_path / "b3", expression_basis=str(tmp_path / "a"))
    assert np.abs(load_file(str(tmp_path / "b3" / "frames.safetensors"))["expression"][:, 3:]).max() > 0


# ------------------------------------------------------------------------------------------ import


def test_import_tracking_any_expression_length(tmp_path):
    from dgnerf.preprocess.importer import import_tracking

    frames = []
    r = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(r.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        Image.fromarray(np.full((60, 80), 255, np.uint8)).save(tmp_path / f"m{i}.png")
        frames.append({
            "image": f"im{i}.png", "mask": f"m{i}.png",
            "w2c": [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 40.0], [0, 0, 0, 1]],
            "intrinsics": [100, 100, 40, 30], "expression": r.normal(size=17).tolist(),
            "identity": r.normal(size=32).tolist(), "person": "me",
        })
    frames[2]["expression"] = [0.0] * 5  # wrong length: dropped, reported
    track = {"frames": frames, "translation_scale": 0.1, "pixel_centers": "integer"}
    (tmp_path / "t.json").write_text(json.dumps(track))
    res = import_tracking(tmp_path / "t.json", tmp_path / "set", resolution=30, log=lambda *a: None)
    assert res["kept"] == 3 and res["expression_dim"] == 17 and res["dropped"][0][0] == 2
    assert check_dataset(tmp_path / "set") == []
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "set" / "frames.safetensors"))
    # centre square crop of 80x60 is x0=10, then 60 -> 30 px: fx 50, cx (40.5-10)/2
    assert np.allclose(a["intrinsics"][0], [50, 50, 15.25, 15.25])
    assert np.allclose(a["c2w"][0][:3, 3], [0, 0, 4.0])  # inverse of w2c, translations * 0.1


def test_import_opengl_cameras_and_bad_files(tmp_path):
    from dgnerf.preprocess.importer import frame_camera, import_tracking

    gl = np.eye(4)
    gl[2, 3] = 5.0  # an OpenGL camera at z=5 looking down -z at the origin
    c2w, _ = frame_camera({"c2w": gl.tolist(), "intrinsics": [1, 1, 0, 0], "camera": "opengl"})
    assert np.allclose(c2w[:3, 2], [0, 0, -1]) and np.allclose(c2w[:3, 1], [0, -1, 0])
    with pytest.raises(ValueError, match="no pose"):
        frame_camera({"intrinsics": [1, 1, 0, 0]})
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DgnerfError, match="not valid JSON"):
        import_tracking(tmp_path / "bad.json", tmp_path / "o")
    (tmp_path / "nof.json").write_text(json.dumps({"frames": [{"image": "x.png", "expression": [1.0]}]}))
    with pytest.raises(DgnerfError, match="no frame could be imported"):
        import_tracking(tmp_path / "nof.json", tmp_path / "o2", log=lambda *a: None)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from dgnerf.cli import main

    assert main(["preprocess", "import", "--out", str(tmp_path / "o")]) == 2
    assert "--tracking" in capsys.readouterr().err
    assert main(["preprocess", "x.mp4", "--out", str(tmp_path / "o"), "--stride", "0"]) == 2
    assert "--stride" in capsys.readouterr().err
    (tmp_path / "t.json").write_text(json.dumps({"frames": []}))
    assert main(["preprocess", "import", "--tracking", str(tmp_path / "t.json"), "--out", str(tmp_path / "o")]) == 2
    assert "non-empty list 'frames'" in capsys.readouterr().err


def test_video_sources_and_unreadable_files(tmp_path):
    import imageio.v2 as iio

    p = tmp_path / "clip.mp4"
    w = iio.get_writer(str(p), fps=10, codec="libx264", macro_block_size=1, quality=10)
    for i in range(6):
        a = np.full((H, W, 3), 90, np.uint8)
        a[:8, :8] = 10 * (i + 1) + 5  # the frame number survives compression in a flat block
        w.append_data(a)
    w.close()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 20)
    s = run_fake([p, tmp_path / "broken.mp4"], tmp_path / "set", stride=2)
    clip = s.sources[0]
    assert clip.total == 3 and clip.kept == 3  # frames 0, 2, 4 (detector sees 1, 3, 5: one face each)
    assert any("broken.mp4" in q and "cannot open as a video" in q for q in s.problems)
    assert check_dataset(tmp_path / "set") == []
    man = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert [f["source"] for f in man["frames"]] == ["clip.mp4#frame=0", "clip.mp4#frame=2", "clip.mp4#frame=4"]
