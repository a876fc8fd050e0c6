"""The real-video check (dgnerf realvideo) on a tiny synthetic stand-in for a preprocessed video: one person,
14 frames at 32 px (no cv2, no carphone needed). Frame split, training on the subset, metrics and files."""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dgnerf.apps.realvideo import parse_frames, select_split
from dgnerf.cli import main
from dgnerf.errors import DgnerfError

from .conftest import TINY_MODEL

N_FRAMES = 14


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("rv") / "clip"
    build_synthetic_dataset(root, size="tiny", seed=5, persons=1, frames_per_person=N_FRAMES, test_persons=0)
    return str(root)


def _args(data, out, *extra):
    return [
        "realvideo", data, "--out", str(out), "--train-frames", "0-9", "--test-frames", "10-13",
        "--model", json.dumps(TINY_MODEL), "--steps", "6", "--batch-size", "4", "--checkpoint-every", "3",
        "--expression-components", "3", "--no-lpips", "--no-progress", "--device", "cpu", "--threads", "1", *extra,
    ]


@pytest.fixture(scope="module")
def checked(video_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("rv") / "check"
    assert main(_args(video_set, out)) == 0
    return out


def test_parse_frames_and_split():
    assert parse_frames("0-99") == list(range(100))
    assert parse_frames("0-2, 7,9-10") == [0, 1, 2, 7, 9, 10]
    tr, te = select_split(120, "0-99", "100-119")
    assert tr == list(range(100)) and te == list(range(100, 120))
    for bad in ("", "a-b", "5-2", "-1", "0-3,2"):
        with pytest.raises(DgnerfError):
            parse_frames(bad)
    with pytest.raises(DgnerfError, match="asks for frame 119 but the person has 110 frames"):
        select_split(110, "0-99", "100-119")
    with pytest.raises(DgnerfError, match="overlap"):
        select_split(120, "0-99", "90-119")


def test_prepared_split_has_the_right_frames_and_codes(video_set, checked):
    from dgnerf.data import HeadDataset

    src = HeadDataset(video_set, split=None, check="none")
    tr = HeadDataset(checked / "data", split="train")  # also checks the prepared set
    te = HeadDataset(checked / "data", split="test")
    idx = lambda ds: [int(f.source.rsplit("frame_index=", 1)[1]) for f in ds.frames]  # noqa: E731
    assert idx(tr) == list(range(10)) and idx(te) == [10, 11, 12, 13]
    # the pixels, masks and cameras are the source frames'
    for ds, k in ((tr, 0), (tr, 9), (te, 0), (te, 3)):
        f = idx(ds)[k]
        assert torch.equal(ds[k]["image"], src[f]["image"]) and torch.equal(ds[k]["mask"], src[f]["mask"])
        assert torch.equal(ds.arrays["c2w"][k], src.arrays["c2w"][f])
    # identity: the training frames' mean for every frame, held-out ones included
    mean = src.arrays["identity"][:10].double().mean(0)
    mean = mean / mean.norm() * src.arrays["identity"][:10].double().norm(dim=1).mean()
    for ds in (tr, te):
        assert torch.allclose(ds.arrays["identity"].double(), mean.expand(len(ds), -1), atol=1e-6)
    # expression: the first 3 components kept, the rest zero
    e = te.arrays["expression"]
    assert torch.equal(e[:, :3], src.arrays["expression"][10:14, :3]) and not e[:, 3:].any()
    assert te.expression_basis() is not None


def test_metrics_and_files(checked):
    rep = json.loads((checked / "metrics.json").read_text())
    assert rep["train_frames"] == list(range(10)) and rep["test_frames"] == [10, 11, 12, 13]
    assert rep["steps"] == 6 and rep["resolution"]["image"] == 32
    assert rep["frame_index"]["heldout"] == [10, 11, 12, 13]
    for k, n in (("heldout", 4), ("train", 10)):
        pf, m = rep["per_frame"][k], rep["metrics"][k]
        assert set(m) == {"l1", "psnr", "ssim"}  # --no-lpips
        for name in m:
            assert len(pf[name]) == n and all(math.isfinite(v) for v in pf[name])
            assert m[name] == pytest.approx(np.mean(pf[name]), rel=1e-9)
        for l1, psnr, ssim in zip(pf["l1"], pf["psnr"], pf["ssim"]):
            # masked MSE >= masked L1^2 (Jensen), so PSNR <= -20 log10 L1
            assert 0 < l1 < 1 and psnr <= -20 * math.log10(l1) + 1e-6 and -1 <= ssim <= 1
    assert [h["step"] for h in rep["history"]] == [3, 6]
    assert rep["ema_decay"] == 0.998  # the default: checkpoints hold the weights' moving average
    assert rep["history"][-1]["heldout"]["psnr"] == pytest.approx(rep["metrics"]["heldout"]["psnr"], rel=1e-6)
    assert rep["training_seconds"] > 0 and len(rep["coverage"]["heldout_nearest_train_expression"]) == 4
    # references: frame 9 (the training frame nearest in time) copied onto frames 10-13; the truth shifted
    ref = rep["references"]
    from dgnerf.data import HeadDataset
    from dgnerf.metrics import masked_psnr

    te = HeadDataset(checked / "data", split="test", check="none")
    truth = torch.stack([te[k]["image"] for k in range(4)])
    mask = torch.stack([te[k]["mask"] for k in range(4)])
    f9 = HeadDataset(checked / "data", split="train", check="none")[9]["image"].expand(4, -1, -1, -1)
    expect = masked_psnr(f9, truth, mask)
    assert ref["copy_nearest_train_frame"]["psnr_per_frame"] == pytest.approx(expect.tolist(), rel=1e-5)
    # the training frame nearest in head pose, copied
    tr = HeadDataset(checked / "data", split="train", check="none")
    from dgnerf.apps.realvideo import _rotation_deg

    near = _rotation_deg(te.arrays["c2w"][:, :3, :3], tr.arrays["c2w"][:, :3, :3]).argmin(1)
    by_pose = masked_psnr(torch.stack([tr[int(j)]["image"] for j in near]), truth, mask)
    assert ref["copy_nearest_train_pose"]["psnr_per_frame"] == pytest.approx(by_pose.tolist(), rel=1e-5)
    assert rep["checkpoint_selection"] == {"by": "last checkpoint"}
    assert rep["camera_correction"] is None  # the default: the tracked poses as they are
    assert rep["background_weight"] == 1.0  # the built-in set records its flat background: it is modelled
    assert ref["truth_shifted_0.5px"]["psnr"] > ref["truth_shifted_1px"]["psnr"]
    assert 0 < ref["truth_shifted_1px"]["ssim"] < ref["truth_shifted_0.5px"]["ssim"] < 1
    md = (checked / "realvideo.md").read_text()
    assert "| held-out 10-13 |" in md and "| train 0-9 |" in md and "32x32 px" in md
    # sheet: 3 rows (truth, render, error) x 4 held-out columns of 32 px tiles scaled x4, 2 px padding
    w, h = Image.open(checked / "heldout.png").size
    assert (w, h) == (4 * (128 + 2) + 2, 3 * (128 + 2) + 2)
    assert Image.open(checked / "train_frames.png").size[0] == 10 * 130 + 2
    assert (checked / "curve.png").stat().st_size > 0
    assert not [p for p in os.listdir(checked) if ".tmp" in p]


def test_validation_frames_choose_the_checkpoint(video_set, tmp_path):
    out = tmp_path / "val"
    args = _args(video_set, out, "--val-frames", "8-9")
    args[args.index("0-9")] = "0-7"
    assert main(args) == 0
    rep = json.loads((out / "metrics.json").read_text())
    sel = rep["checkpoint_selection"]
    scores = {int(k): v for k, v in sel["val_psnr_per_checkpoint"].items()}
    assert sel["by"] == "best validation masked PSNR" and sel["val_frames"] == 2 and set(scores) == {3, 6}
    assert rep["steps"] == sel["step"] == max(scores, key=lambda s: (scores[s], s))
    assert main(_args(video_set, tmp_path / "bad", "--val-frames", "9-10")) == 2  # overlaps train and test


def test_camera_correction_is_reported_and_resume_keeps_it(video_set, tmp_path, capsys):
    out = tmp_path / "cam"
    assert main(_args(video_set, out, "--camera-lr", "1e-2")) == 0
    rep = json.loads((out / "metrics.json").read_text())
    cam = rep["camera_correction"]
    assert cam["lr"] == 1e-2 and cam["reg"] == 0.0
    assert 0 < cam["rotation_deg"]["mean"] <= cam["rotation_deg"]["max"] and cam["translation"]["max"] > 0
    assert "cameras corrected while training (learning rate 0.01" in (out / "realvideo.md").read_text()
    capsys.readouterr()
    assert main(_args(video_set, out, "--resume")) == 2  # the run learned corrections; this one would not
    assert "other settings (camera_lr)" in capsys.readouterr().err
    for v in ("-1", "nan"):
        assert main(_args(video_set, tmp_path / "o", "--camera-lr", v)) == 2
        assert "--camera-lr: expected a finite number >= 0" in capsys.readouterr().err


def test_rerun_needs_resume_and_eval_only_rescores(video_set, checked, capsys):
    assert main(_args(video_set, checked)) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    before = json.loads((checked / "metrics.json").read_text())["metrics"]
    assert main(_args(video_set, checked, "--eval-only")) == 0
    assert json.loads((checked / "metrics.json").read_text())["metrics"] == before  # deterministic scoring
    # another split would not match the trained run
    args = _args(video_set, checked, "--eval-only")
    args[args.index("0-9")] = "0-8"
    assert main(args) == 2
    assert "prepared with other settings (train_frames)" in capsys.readouterr().err


def test_bad_input(video_set, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "is not a directory" in err(_args(str(tmp_path / "missing"), tmp_path / "o1"))
    os.makedirs(tmp_path / "empty")
    assert "holds no manifest.json" in err(_args(str(tmp_path / "empty"), tmp_path / "o2"))
    args = _args(video_set, tmp_path / "o3")
    args[args.index("10-13")] = "10-19"
    assert f"asks for frame 19 but the person has {N_FRAMES} frames" in err(args)
    assert "'nobody' is not in the dataset" in err(_args(video_set, tmp_path / "o4", "--person", "nobody"))
    assert "--expression-components: expected 0 (all)" in err(_args(video_set, tmp_path / "o5", "--expression-components", "99"))
    assert "no checkpoint" in err(_args(video_set, tmp_path / "o6", "--eval-only"))
    for v in ("1", "-0.5", "nan"):
        assert f"--ema-decay: expected a finite number >= 0 and < 1, got {float(v)!r}" in err(
            _args(video_set, tmp_path / "o7", "--ema-decay", v))


def test_several_persons_need_person(tmp_path, capsys):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path / "two"
    build_synthetic_dataset(root, size="tiny", seed=1, persons=2, frames_per_person=3, test_persons=0)
    assert main(_args(str(root), tmp_path / "o", "--train-frames", "0-1", "--test-frames", "2")) == 2
    assert "has 2 persons" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["realvideo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--train-frames" in out and "--test-frames" in out and "--eval-only" in out


def test_gaze_conditioned_model(video_set, tmp_path):
    # the dataset's gaze features reach the model when it is gaze-conditioned (model option gaze_dim)
    args = _args(video_set, tmp_path / "g", "--steps", "2", "--checkpoint-every", "2")
    args[args.index("--model") + 1] = json.dumps({**TINY_MODEL, "gaze_dim": 2})
    assert main(args) == 0
    rep = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert rep["model"]["gaze_dim"] == 2 and math.isfinite(rep["metrics"]["heldout"]["psnr"])
    from dgnerf.apps.realvideo import render_split
    from dgnerf.data import HeadDataset
    from dgnerf.model.checkpoint import load_checkpoint
    from dgnerf.train.trainer import FrameStore

    model = load_checkpoint(os.path.join(rep["checkpoint"], "model.safetensors"))
    store = FrameStore(HeadDataset(tmp_path / "g" / "data", split="test"), 32, 8, 1.0, progress=False)

    class MovedGaze:  # the same frames with another gaze
        def __len__(self):
            return len(store)

        def batch(self, idx, device):
            b = store.batch(idx, device)
            return {**b, "gaze": b["gaze"] + 0.5}

    a, b = render_split(model, store, "cpu")["pred"], render_split(model, MovedGaze(), "cpu")["pred"]
    assert (a - b).abs().max() > 1e-6
    # dgnerf gaze on the prepared set: the preprocessor's gaze names are kept in meta.source_meta there
    from dgnerf.apps.gaze import gaze_figure

    ds = HeadDataset(tmp_path / "g" / "data")
    ds.manifest["meta"]["source_meta"] = {"gaze_names": ["pitch", "yaw"]}
    _, values = gaze_figure(model, ds, ds.persons[0], steps=3)
    assert values[0, 0, 1] < values[0, -1, 1] and values[0, 0, 0] == values[0, -1, 0]  # columns move "yaw"
