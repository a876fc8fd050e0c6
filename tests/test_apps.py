"""Applications: fitting unseen people (inversion), Ctrl-C keeps the best codes, driving, interpolation, eval
tables, and one-line errors for bad input. A tiny model trained for a few steps on the tiny built-in set."""
import json
import os

import pytest
import torch

from dgnerf.cli import main
from tests.conftest import TINY_MODEL


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_set, tmp_path_factory):
    """A tiny model trained a few steps on the training people of the tiny set (p0003 is held out)."""
    from dgnerf.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("apps_run")
    cfg = TrainConfig(data=tiny_set, out=str(out), model=dict(TINY_MODEL), batch_size=3, steps=12, lr=3e-3,
                      lr_final=1e-3, lambda_perceptual=0.0, checkpoint_every=1000, sample_every=1000, log_every=100,
                      progress=False, tensorboard=False, seed=1)
    res = Trainer(cfg).fit()
    return os.path.join(res["checkpoint"], "model.safetensors")


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    from dgnerf.model.checkpoint import load_checkpoint

    return load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def heldout(tiny_set, model):
    from dgnerf.apps.fit import targets_from_dataset

    targets = targets_from_dataset(tiny_set, model.cfg, split="test")
    assert [t.person for t in targets] == ["p0003"]
    return targets[0]


def test_pose_correction_is_rigid_and_zero_is_identity():
    from dgnerf.camera import corrected_c2w
    from dgnerf.camera import orbit_c2w

    c2w = orbit_c2w([10.0, -20.0], [5.0, 0.0], 0.0, 4.0)
    assert torch.allclose(corrected_c2w(c2w, torch.zeros(2, 3), torch.zeros(2, 3)), c2w, atol=1e-6)
    out = corrected_c2w(c2w, torch.randn(2, 3) * 0.1, torch.randn(2, 3) * 0.1)
    R = out[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(2, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2), atol=1e-5)


def test_fitting_reduces_the_masked_loss_on_a_heldout_person(model, heldout):
    from dgnerf.apps.fit import FitConfig, fit_person

    res = fit_person(model, heldout, FitConfig(iters=12, lr_identity=1e-2, lr_expression=3e-2), progress=False)
    objs = [o for _, o, _ in res.history]
    assert len(res.history) == 13 and not res.interrupted
    assert min(objs) < objs[0]
    mse = lambda m: float((10 ** (-m["psnr"] / 10)).mean())  # noqa: E731
    assert mse(res.metrics_fit) < 0.97 * mse(res.metrics_init)
    assert float(res.metrics_fit["l1"].mean()) < float(res.metrics_init["l1"].mean())
    assert res.identity.shape == (1, model.cfg.identity_dim) and res.expression.shape == (3, model.cfg.expression_dim)
    R = res.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(3, 3, 3), atol=1e-4)
    # the model itself is untouched and still trainable
    assert all(p.requires_grad for p in model.parameters())


def test_interrupt_keeps_the_best_codes(model, heldout):
    from dgnerf.apps.fit import FitConfig, fit_person

    def stop(step, obj):
        if step == 3:
            raise KeyboardInterrupt

    res = fit_person(model, heldout, FitConfig(iters=50, lr_identity=1e-2, lr_expression=3e-2), progress=False,
                     callback=stop)
    assert res.interrupted and res.steps_done == 4 and len(res.history) == 4  # updates of steps 0..3 were applied
    best = min(range(4), key=lambda i: res.history[i][1])
    assert res.best_step == best
    # the returned codes are those whose objective was the best: their masked L2 is the one recorded then
    mse = float((10 ** (-res.metrics_fit["psnr"] / 10)).mean())
    assert mse == pytest.approx(res.history[best][2], rel=1e-3)


def test_fit_command_writes_codes_renders_metrics(tiny_set, tiny_ckpt, tmp_path):
    out = tmp_path / "fit"
    assert main(["fit", tiny_set, "--checkpoint", tiny_ckpt, "--out", str(out), "--iters", "3", "--no-lpips",
                 "--no-csim", "--no-progress"]) == 0
    for name in ("codes.safetensors", "identity_p0003.safetensors", "fit_p0003.png", "loss_p0003.png", "metrics.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "metrics.json").read_text())
    assert set(rep["persons"]["p0003"]["fitted"]) == {"l1", "psnr", "ssim"}
    from safetensors.torch import load_file

    t = load_file(str(out / "codes.safetensors"))
    assert t["identity"].shape == (1, 512) and t["expression"].shape[0] == t["c2w"].shape[0] == 3
    # the identity file is a code `dgnerf render --identity` reads
    from dgnerf.codes import load_code

    assert load_code(str(out / "identity_p0003.safetensors"), 512, "identity").shape == (1, 512)
    # and both drive a head: the fitted identity with another person's poses and expressions
    for target in ("codes.safetensors", "identity_p0003.safetensors"):
        video = tmp_path / f"drive_{target}.gif"
        assert main(["drive", "--target", str(out / target), "--driver", f"{tiny_set}:p0001", "--checkpoint", tiny_ckpt,
                     "--out", str(video), "--max-frames", "2", "--no-progress"]) == 0
        assert video.is_file()


def test_fit_command_ctrl_c_writes_the_best_codes(tiny_set, tiny_ckpt, tmp_path, monkeypatch):
    import dgnerf.apps.fit as fit_mod

    real = fit_mod._lr_factor

    def interrupting(cfg, step, total):
        if step == 2:
            raise KeyboardInterrupt
        return real(cfg, step, total)

    monkeypatch.setattr(fit_mod, "_lr_factor", interrupting)
    out = tmp_path / "fit"
    rc = main(["fit", f"{tiny_set}:p0001", "--checkpoint", tiny_ckpt, "--out", str(out), "--iters", "10", "--no-lpips",
               "--no-progress"])
    assert rc == 130
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["interrupted"] and rep["persons"]["p0001"]["steps"] == 2
    assert (out / "codes.safetensors").is_file() and (out / "identity_p0001.safetensors").is_file()


def test_drive_writes_one_frame_per_driver_frame(tiny_set, tiny_ckpt, tmp_path):
    import imageio.v2 as imageio

    out = tmp_path / "drive.mp4"
    assert main(["drive", "--target", f"{tiny_set}:p0000", "--driver", f"{tiny_set}:p0003", "--checkpoint", tiny_ckpt,
                 "--out", str(out), "--scale", "2", "--no-progress"]) == 0
    path = out if out.exists() else out.with_suffix(".gif")
    reader = imageio.get_reader(str(path), format="FFMPEG" if path.suffix == ".mp4" else None)
    frames = [f for f in reader]  # not list(reader): its length hint is inf for MP4s
    assert len(frames) == 3  # p0003 has 3 frames
    assert frames[0].shape[:2] == (64, 64 + 4 + 64)  # driver | 2 px gap | result, each 32 px scaled by 2


def test_interp_and_eval_write_pictures_and_tables(tiny_set, tiny_ckpt, tmp_path):
    png = tmp_path / "grid.png"
    assert main(["interp", "--checkpoint", tiny_ckpt, "--dataset", tiny_set, "--person-a", "p0000", "--person-b", "p0001",
                 "--out", str(png), "--steps", "3", "--yaws", "0"]) == 0
    from PIL import Image

    assert Image.open(png).size[0] > 3 * 32
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", tiny_ckpt, "--dataset", tiny_set, "--out", str(out), "--iters", "3",
                 "--no-lpips", "--no-csim", "--no-progress"]) == 0
    table = (out / "table2.md").read_text()
    assert "| encoder-only initialisation (no fitting) |" in table and "| fitted (dgnerf fit) |" in table
    assert "| p0003 | 3 | fitted |" in table
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["frames"] == 3 and set(rep["overall"]["fitted"]) == {"l1", "psnr", "ssim"}
    assert (out / "eval_overview.png").is_file() and (out / "eval_p0003.png").is_file()


def test_interp_and_gaze_views_follow_the_datasets_world(tiny_set):
    # interp/gaze orbit about the dataset's frontal view: the built-in set's world is orbit_c2w's own, a
    # preprocessed video's (MediaPipe's face frame: +y up, +z out of the face) is turned by diag(1, -1, -1)
    # (before: carphone's grids showed the back of the head, upside down)
    import torch

    from dgnerf.camera import orbit_c2w, view_c2w, world_frame
    from dgnerf.data import HeadDataset

    c2w = HeadDataset(tiny_set, check="none").arrays["c2w"]
    assert torch.equal(world_frame(c2w), torch.eye(3))
    assert torch.equal(view_c2w(20, 5, 4.0, world_frame(c2w)), orbit_c2w(20.0, 5.0, 0.0, 4.0))
    W = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    video = c2w.clone()
    video[:, :3, :] = W @ c2w[:, :3, :]
    assert torch.equal(world_frame(video), W)
    v = view_c2w(0, 0, 5.0, world_frame(video))
    assert torch.allclose(v[0, :3, :3], W) and torch.allclose(v[0, :3, 3], torch.tensor([0.0, 0.0, 5.0]))
    # the same view of the head in either world
    assert torch.allclose(view_c2w(25, 0, 5.0, W)[0, :3, :], W @ orbit_c2w(25.0, 0.0, 0.0, 5.0)[0, :3, :])


@pytest.mark.parametrize("argv,expect", [
    (["fit", "{root}/nope", "--out", "{tmp}/o"], "no such file or directory"),
    (["fit", "{root}:nobody", "--out", "{tmp}/o"], "source {root}: no person ['nobody']"),
    (["fit", "{root}", "--out", "{tmp}/o", "--iters", "-1"], "--iters: expected an integer in [0, "),
    (["fit", "{root}", "--out", "{tmp}/o", "--split", "val"], "--split 'val'"),
    (["fit", "{tmp}/clip.mp4", "--out", "{tmp}/o"], "raw video/image folder"),
    (["drive", "--target", "{root}:p0000", "--driver", "{root}:p0003", "--out", "{tmp}/d.txt"], "--out: expected a file ending in .mp4 or .gif"),
    (["drive", "--target", "{root}", "--driver", "{root}:p0003", "--out", "{tmp}/d.mp4"], "pick one with DATASET:PERSON"),
    (["drive", "--target", "{tmp}/bad.txt", "--driver", "{root}:p0003", "--out", "{tmp}/d.mp4"], "holds 3 numbers, expected 512"),
    (["drive", "--target", "{root}:p0000", "--driver", "{root}", "--out", "{tmp}/d.mp4"], "pick one with DATASET:PERSON"),
    (["interp", "--dataset", "{root}", "--person-a", "p0000", "--person-b", "zz", "--out", "{tmp}/g.png"], "--person-b 'zz': not a person of"),
    (["gaze", "--dataset", "{root}", "--person", "zz", "--out", "{tmp}/g.png"], "--person 'zz': not a person of"),
    (["gaze", "--dataset", "{root}", "--person", "p0000", "--out", "{tmp}/g.png"], "--checkpoint: this model has no gaze"),
    (["eval", "--dataset", "{root}", "--out", "{tmp}/e", "--split", "val"], "--split 'val'"),
    (["eval", "--dataset", "{tmp}", "--out", "{tmp}/e"], "not a dgnerf dataset"),
])
def test_bad_inputs_give_one_line_errors(tiny_set, tiny_ckpt, tmp_path, capsys, argv, expect):
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    (tmp_path / "bad.txt").write_text("1 2 3")
    args = [a.format(root=tiny_set, tmp=tmp_path) for a in argv] + ["--checkpoint", tiny_ckpt]
    expect = expect.format(root=tiny_set, tmp=tmp_path)
    if args[0] in ("fit", "eval"):
        args.append("--no-progress")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expect in err, err


@pytest.mark.parametrize("cmd", ["fit", "drive", "interp", "eval", "gaze"])
def test_a_bad_checkpoint_is_named(tiny_set, tmp_path, capsys, cmd):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    args = {"fit": [f"{tiny_set}:p0003", "--out", str(tmp_path / "o"), "--no-progress"],
            "drive": ["--target", f"{tiny_set}:p0000", "--driver", f"{tiny_set}:p0003", "--out", str(tmp_path / "d.mp4")],
            "interp": ["--dataset", tiny_set, "--person-a", "p0000", "--person-b", "p0001", "--out", str(tmp_path / "g.png")],
            "eval": ["--dataset", tiny_set, "--out", str(tmp_path / "e"), "--no-progress"],
            "gaze": ["--dataset", tiny_set, "--person", "p0000", "--out", str(tmp_path / "g.png")]}[cmd]
    for ckpt, expect in ((tmp_path / "nope", "does not exist"), (tmp_path / "junk.safetensors", "not a safetensors file"),
                         (tiny_set, "has no model.safetensors")):
        assert main([cmd, *args, "--checkpoint", str(ckpt)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"dgnerf {cmd}: error: --checkpoint: " in err and expect in err, err


def test_raw_video_without_the_preprocess_extra_says_how_to_get_it(tiny_set, tiny_ckpt, tmp_path, capsys):
    try:
        import cv2  # noqa: F401
        import mediapipe  # noqa: F401

        pytest.skip("the preprocess extra is installed")
    except ImportError:
        pass
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    for argv in (["drive", "--target", str(tmp_path / "clip.mp4"), "--driver", f"{tiny_set}:p0003"],
                 ["drive", "--target", f"{tiny_set}:p0000", "--driver", str(tmp_path / "clip.mp4")],
                 ["fit", str(tmp_path / "clip.mp4")]):
        out = ["--out", str(tmp_path / ("d.mp4" if argv[0] == "drive" else "o")), "--checkpoint", tiny_ckpt]
        assert main(argv + out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs the preprocess extra" in err and "docs/preprocess.md" in err, err
        flag = "source" if argv[0] == "fit" else argv[argv.index(str(tmp_path / "clip.mp4")) - 1]
        assert err.startswith(f"dgnerf {argv[0]}: error: {flag} "), err


def test_perceptual_fit_and_finetune_leave_the_model_untouched(model, heldout):
    from dgnerf.apps.fit import FitConfig, fit_person
    from dgnerf.losses import VGG16Features

    before = {k: v.clone() for k, v in model.state_dict().items()}
    vgg = VGG16Features(width_scale=1 / 16)  # a narrow random VGG: the code path, not the weights
    res = fit_person(model, heldout, FitConfig(iters=3, lambda_perceptual=1.0, finetune_iters=2), vgg=vgg,
                     progress=False)
    assert len(res.history) == 3 + 1 + 2 and res.steps_done == 5 and res.best_step == 5
    assert all(torch.isfinite(torch.tensor([o for _, o, _ in res.history])))
    assert res.model is not None and res.model is not model
    changed = [k for k, v in res.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the fine-tuned copy moved
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model did not
    with pytest.raises(Exception, match="VGG16"):
        fit_person(model, heldout, FitConfig(iters=1, lambda_perceptual=1.0), vgg=None, progress=False)


def test_eval_ablation_writes_table1(model, tiny_set, tmp_path):
    from dgnerf.apps.evaluate import evaluate
    from dgnerf.apps.fit import FitConfig
    from dgnerf.losses import VGG16Features

    vgg = VGG16Features(width_scale=1 / 16)
    rep = evaluate(model, tiny_set, str(tmp_path), cfg=FitConfig(iters=2), vgg=vgg, ablation_lambda=1.0, progress=False,
                   log=lambda *a: None)
    table = (tmp_path / "table1_ablation.md").read_text()
    assert "| lambda = 0 (masked L2 only) |" in table and "| lambda = 1 (+ VGG16 perceptual) |" in table
    assert set(rep["ablation"]) == {"lambda = 0 (masked L2 only)", "lambda = 1 (+ VGG16 perceptual)"}


def test_fit_one_image_prints_its_expected_time(tiny_set, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "fit1"
    assert main(["fit", tiny_set, "--checkpoint", tiny_ckpt, "--out", str(out), "--iters", "2", "--frames", "0",
                 "--no-lpips", "--no-csim", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fitting p0003: 1 frame(s), 2 steps, about" in printed
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["persons"]["p0003"]["frames"] == 1
    for bad in ("x", "-1", "0,0", "7"):
        assert main(["fit", tiny_set, "--checkpoint", tiny_ckpt, "--out", str(tmp_path / f"bad{bad}"), "--iters", "1",
                     "--frames", bad, "--no-lpips", "--no-csim", "--no-progress"]) == 2
        assert "--frames" in capsys.readouterr().err


def test_fit_config_from_python_names_its_fields():
    from dgnerf.apps.fit import FitConfig
    from dgnerf.errors import DgnerfError

    for kw, text in ((dict(iters=-1), "iters: expected an integer"), (dict(reg_rotation=-1.0), "reg_rotation: expected"),
                     (dict(lr_identity="x"), "lr_identity: expected a finite number >= 0, got 'x'"),
                     (dict(lr_decay=float("nan")), "lr_decay: expected a number in (0, 1]"),
                     (dict(iters=0), "iters and finetune_iters: both are 0"), (dict(batch=True), "batch: expected"),
                     (dict(fit_pose=1), "fit_pose: expected true or false")):
        with pytest.raises(DgnerfError) as e:
            FitConfig(**kw).check()
        assert str(e.value).startswith(text) and "--" not in str(e.value), (kw, str(e.value))


def test_fit_names_its_flags_and_leaves_no_empty_out(tiny_set, tiny_ckpt, tmp_path, capsys):
    for argv, flag in ((["--reg-pose", "-1"], "--reg-pose"), (["--iters", str(10**12)], "--iters"),
                       (["--frames", "9"], "--frames"), (["--iters", "0"], "--iters and --finetune-iters: both are 0"),
                       (["--lr-decay", "2"], "--lr-decay: expected a number in (0, 1]")):
        out = tmp_path / f"o{flag}"
        assert main(["fit", tiny_set, "--checkpoint", tiny_ckpt, "--out", str(out), "--no-lpips", "--no-csim",
                     "--no-progress", *argv]) == 2
        assert flag in capsys.readouterr().err and not out.exists()
