"""Trainer: deterministic data order, exact resume after SIGKILL, DDP (2 gloo processes) == 1 process."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dgnerf.errors import DgnerfError
from dgnerf.train import Trainer
from dgnerf.train.trainer import frame_indices, step_seed
from tests.conftest import TINY_MODEL, tiny_train_config


def tiny_cfg(data, out, **kw):
    return tiny_train_config(data, out, **kw)


def read_losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_frame_order_is_a_pure_function_of_seed_and_step():
    n = 7
    a = [frame_indices(5, s, 3, n) for s in range(10)]
    b = [frame_indices(5, s, 3, n) for s in range(10)]
    assert a == b
    flat = sum(a, [])
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))  # every epoch is a permutation
    assert frame_indices(6, 0, 3, n) != a[0] or frame_indices(6, 1, 3, n) != a[1]


def test_training_reduces_loss_and_writes_outputs(tiny_set, tmp_path):
    import importlib.util

    # (an `import torch.utils.tensorboard` here would make `torch` a local name of this test)
    with_tb = importlib.util.find_spec("torch.utils.tensorboard") is not None
    if with_tb:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            with_tb = False
    cfg = tiny_cfg(tiny_set, tmp_path / "run", steps=60, lr=3e-3, sample_every=60, log_every=1, batch_size=4,
                   tensorboard=with_tb)
    res = Trainer(cfg).fit()
    losses = read_losses(cfg.out)
    first = sum(losses[s] for s in range(1, 11)) / 10
    last = sum(losses[s] for s in range(51, 61)) / 10
    assert res["step"] == 60 and last < 0.8 * first, (first, last)
    assert os.path.exists(os.path.join(cfg.out, "samples", "step_00000060.png"))
    tb = os.path.join(cfg.out, "tensorboard")
    if cfg.tensorboard:
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb))
    from dgnerf.model.checkpoint import load_checkpoint

    model = load_checkpoint(os.path.join(res["checkpoint"], "model.safetensors"))
    assert model.cfg.feature_size == 8 and model.cfg.identity_dim == 512
    assert torch.equal(model.cfg.world_rotation, torch.eye(3))  # the built-in set's world, recorded by the trainer


def test_training_precision_follows_amp_the_device_and_the_cpu(monkeypatch):
    from dgnerf.train.trainer import training_precision

    cpu = torch.device("cpu")
    monkeypatch.setenv("DGNERF_CPU_BF16", "1")  # as on a CPU with AMX
    assert training_precision(True, "fast", cpu) == "bf16"
    assert training_precision(False, "fast", cpu) == "fp32"
    assert training_precision(True, "reference", cpu) == "fp32"
    assert training_precision(True, "fast", torch.device("cuda")) == "bf16"
    monkeypatch.setenv("DGNERF_CPU_BF16", "0")  # as on a CPU without bf16 matrix units
    assert training_precision(True, "fast", cpu) == "fp32"


def test_cpu_bf16_training_learns_like_float32(tiny_set, tmp_path, monkeypatch):
    """Training in bf16 on the CPU (the default where the CPU has AMX): the same schedule reduces the loss as in
    float32, deterministically, and the run says which arithmetic it used."""
    kw = dict(steps=60, lr=3e-3, log_every=1, batch_size=4, checkpoint_every=60)
    monkeypatch.setenv("DGNERF_CPU_BF16", "1")
    res = Trainer(tiny_cfg(tiny_set, tmp_path / "bf16", **kw)).fit()
    Trainer(tiny_cfg(tiny_set, tmp_path / "bf16b", **kw)).fit()  # the same run again
    monkeypatch.setenv("DGNERF_CPU_BF16", "0")
    ref = Trainer(tiny_cfg(tiny_set, tmp_path / "fp32", **kw)).fit()
    assert res["precision"] == "bf16" and ref["precision"] == "fp32"
    lb, lb2, lf = (read_losses(tmp_path / n) for n in ("bf16", "bf16b", "fp32"))
    assert lb == lb2  # deterministic
    first, last = (sum(lb[s] for s in r) / 10 for r in (range(1, 11), range(51, 61)))
    first_f, last_f = (sum(lf[s] for s in r) / 10 for r in (range(1, 11), range(51, 61)))
    assert last < 0.8 * first, (first, last, first_f, last_f)
    assert abs(last - last_f) <= 0.1 * last_f, (last, last_f)


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_set, tmp_path):
    steps, every = 24, 4
    # uninterrupted, in process
    ref_cfg = tiny_cfg(tiny_set, tmp_path / "ref", steps=steps, checkpoint_every=every)
    Trainer(ref_cfg).fit()
    ref = read_losses(ref_cfg.out)
    # killed with SIGKILL mid-run, then resumed
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dgnerf", "train", tiny_set, "--out", str(run), "--steps", str(steps),
           "--batch-size", "2", "--lr", "1e-3", "--lr-final", "1e-4", "--lambda-perceptual", "0",
           "--checkpoint-every", str(every), "--sample-every", "1000", "--log-every", "1", "--deterministic",
           "--no-progress", "--model", json.dumps(TINY_MODEL)]
    # Slow the steps so the kill lands mid-run. The same thread count as the in-process reference: the CPU
    # MLP backward sums per-thread partial weight gradients, so the bits depend on it (1e-7 relative).
    env = dict(os.environ, DGNERF_TRAIN_STEP_DELAY="0.3", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step_00000008":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_losses(run)
    killed_at = max(before)
    resumed_from = int(latest.read_text().strip().split("_")[1])
    assert killed_at - resumed_from <= every  # at most one checkpoint interval is lost
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    after = read_losses(run)
    assert sorted(after) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])  # bit-exact in deterministic mode


def _ddp_worker(rank, world, init_file, data, out, result_file):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = tiny_cfg(data, out, steps=3, batch_size=4, checkpoint_every=100)
        t = Trainer(cfg)
        t.fit()
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in t.model.state_dict().items()}, result_file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tiny_set, tmp_path):
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    one = Trainer(tiny_cfg(tiny_set, tmp_path / "one", steps=3, batch_size=4, checkpoint_every=100))
    one.fit()
    result_file = str(tmp_path / "ddp_state.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), tiny_set, str(tmp_path / "two"), result_file), nprocs=2, join=True)
    two = torch.load(result_file)  # written by this test's own worker just above
    for k, v in one.model.state_dict().items():
        err = float((two[k] - v).norm() / v.norm().clamp_min(1e-12))
        assert err < 1e-4, (k, err)
    l1, l2 = read_losses(tmp_path / "one"), read_losses(tmp_path / "two")
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-5 * max(1.0, abs(l1[s])), (s, l1[s], l2[s])


def test_loss_curve_draws_a_single_point(tmp_path):
    # A series with one point (e.g. one evaluated checkpoint) must still be visible.
    from PIL import Image

    from dgnerf.media import loss_curve_png

    loss_curve_png(str(tmp_path / "a.png"), {"held-out": [(100, 0.05)]})
    loss_curve_png(str(tmp_path / "b.png"), {"held-out": []})
    a = Image.open(tmp_path / "a.png").convert("RGB")
    b = Image.open(tmp_path / "b.png").convert("RGB")
    # the series colour in the plot area (legend excluded) only where a marker or line was drawn
    inside = lambda im: [px for px in im.crop((60, 60, 540, 380)).getdata() if px == (31, 119, 180)]  # noqa: E731
    assert len(inside(a)) > 10 and len(inside(b)) == 0


def test_demo_outputs_from_a_short_run(tiny_set, tmp_path):
    # The demo's picture writer on a 2-step run: every file, a 4-row expression grid, finite metrics.
    from PIL import Image

    from dgnerf.apps.demo import make_outputs

    cfg = tiny_cfg(tiny_set, tmp_path / "run", steps=2, checkpoint_every=2)
    Trainer(cfg).fit()
    out = tmp_path / "out"
    out.mkdir()
    res = make_outputs(cfg.out, tiny_set, str(out), log=lambda *a: None)
    for name in ("expression_interpolation.png", "identity_interpolation.png", "heldout_renders.png",
                 "train_renders.png", "loss_curve.png", "orbit_train_person.mp4", "fit_one_image.png",
                 "drive_fitted_person.mp4", "metrics.json"):
        if name.endswith(".mp4") and not (out / name).exists():
            name = name.replace(".mp4", ".gif")  # no video encoder: the GIF fallback
        assert (out / name).exists(), name
    grid_img = Image.open(out / "expression_interpolation.png")
    ident = Image.open(out / "identity_interpolation.png")
    assert grid_img.size[0] == ident.size[0] and grid_img.size[1] > ident.size[1] * 1.2  # 4 rows vs 3
    assert 0.0 <= res["expression_mean_change"] <= 1.0
    # the built-in set: the same change in the generator's own renders of that person, for comparison
    assert 0.0 < res["expression_truth_change"] < 0.5
    assert math.isfinite(res["heldout"]["masked_psnr_db"])
    fitted = res["fitted"]  # the unseen person fitted from one image, its other frames with the fitted identity
    assert fitted["other_frames"] == 2 and all(math.isfinite(fitted[k]) for k in (
        "masked_psnr_db", "encoder_psnr_db", "other_frames_psnr_db", "other_frames_encoder_psnr_db", "seconds"))


def test_demo_rejects_non_positive_steps_and_minutes(tmp_path, capsys):
    from dgnerf.cli import main

    for argv in (["--steps", "0"], ["--steps", "-5"], ["--minutes", "0"], ["--minutes", "-1"]):
        assert main(["demo", "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert argv[0] in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()


def test_demo_reuses_its_own_set_only(tiny_set):
    # an out/ from an older demo holds a set made with other settings: the demo rebuilds it rather than train on it
    from dgnerf.apps.demo import _same_set

    spec = dict(size="tiny", seed=3, persons=4, frames_per_person=3, test_persons=1)  # what tiny_set was built with
    assert _same_set(tiny_set, spec)
    assert not _same_set(tiny_set, dict(spec, persons=84))
    assert not _same_set(tiny_set, dict(spec, seed=0))
    assert not _same_set(tiny_set + "-missing", spec)


def test_demo_trains_more_steps_where_it_trains_in_bf16(monkeypatch):
    # a fixed number of steps per arithmetic: bf16 steps cost 0.77x, so the demo takes about the same minutes
    from dgnerf.apps import demo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DGNERF_CPU_BF16", "1")
    assert demo.demo_steps() == demo.DEMO_STEPS_BF16 > demo.DEMO_STEPS
    monkeypatch.setenv("DGNERF_CPU_BF16", "0")
    assert demo.demo_steps() == demo.DEMO_STEPS


def test_demo_description_names_its_model():
    # the description the demo prints and writes to metrics.json["model"] is written by hand: it must say what runs
    from dgnerf.apps.demo import DEMO_DESCRIPTION, DEMO_MODEL

    m = DEMO_MODEL
    for text in (f"{m['mlp_depth']}x{m['mlp_width']} MLP", f"{m['n_samples']} samples per ray",
                 f"{m['feature_size']}x{m['feature_size']}x{m['feature_dim']} feature map",
                 f"{m['hash_levels']} levels", f"{m['hash_identity_bases']} tables of 2^{m['hash_table_size'].bit_length() - 1}",
                 f"{m['hash_base_resolution']}..{m['hash_finest_resolution']} cells", f"{m['image_size']}x{m['image_size']} images"):
        assert text in DEMO_DESCRIPTION, (text, DEMO_DESCRIPTION)
    assert len(m["renderer_channels"]) == 1 and "one renderer block" in DEMO_DESCRIPTION


def test_param_groups_per_part():
    from dgnerf.model import HeadConfig, HeadModel
    from dgnerf.train.trainer import param_groups, part_of

    cfg = HeadConfig.tiny(position_encoding="hashgrid", hash_levels=2, hash_table_size=64, hash_base_resolution=2,
                          hash_finest_resolution=4, hash_identity_bases=2)
    model = HeadModel(cfg)
    assert part_of("field.encoding.table") == "encoding"
    assert part_of("field.encoding.mix.weight") == "field"  # the mixing layer learns with the MLP, not the table
    assert part_of("renderer.blocks.0.weight") == "renderer" and part_of("background") == "background"
    one = param_groups(model, {})
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))
    groups = {g["part"]: g for g in param_groups(model, {"encoding": 10.0})}
    assert groups["encoding"]["lr_scale"] == 10.0 and groups["field"]["lr_scale"] == 1.0
    assert [id(p) for p in groups["encoding"]["params"]] == [id(model.field.encoding.table)]
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    with pytest.raises(DgnerfError, match="unknown part"):
        param_groups(model, {"mlp": 2.0})
    with pytest.raises(DgnerfError, match="'encoding' expected a finite number > 0"):
        param_groups(model, {"encoding": 0.0})


def test_adam_beta2_and_eps_reach_the_optimizer_and_bad_values_are_named(tiny_set, tmp_path, capsys):
    from dgnerf.cli import main

    tr = Trainer(tiny_cfg(tiny_set, tmp_path / "a", steps=1, adam_beta2=0.99, adam_eps=1e-15))
    assert all(g["betas"] == (0.9, 0.99) and g["eps"] == 1e-15 for g in tr.opt.param_groups)
    default = Trainer(tiny_cfg(tiny_set, tmp_path / "b", steps=1))
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in default.opt.param_groups)
    for kw, msg in ((dict(adam_beta2=1.0), "adam_beta2: expected a number in \\[0, 1\\), got 1.0"),
                    (dict(adam_eps=0.0), "adam_eps: expected a finite number > 0, got 0.0"),
                    (dict(adam_eps=float("nan")), "adam_eps: expected a finite number > 0, got nan")):
        with pytest.raises(DgnerfError, match=msg):
            Trainer(tiny_cfg(tiny_set, tmp_path / "c", steps=1, **kw))
    for flag, value in (("--adam-beta2", "1.5"), ("--adam-beta2", "1.0"), ("--adam-eps", "0")):
        rc = main(["train", tiny_set, "--out", str(tmp_path / "d"), "--lambda-perceptual", "0", flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and flag in err and value in err, err
        assert not os.path.exists(tmp_path / "d")
    # The CLI takes what the Trainer takes: beta2 just below 1 is accepted (the same bound, open at 1).
    from dgnerf.commands.train import _check_value
    _check_value("adam_beta2", 0.9999999, "--adam-beta2")
    with pytest.raises(DgnerfError, match="--adam-beta2: expected a finite number >= 0 and < 1, got 1.0"):
        _check_value("adam_beta2", 1.0, "--adam-beta2")


def test_weight_average_is_what_checkpoints_hold_and_resume_continues_it_exactly(tiny_set, tmp_path, capsys):
    """ema_decay d: model.safetensors = sum_i (1-d) d^(n-i) w_i / (1 - d^n) over the weights after each step;
    train_state keeps the raw weights; a resumed run writes the same bits as an uninterrupted one."""
    import shutil

    from safetensors.torch import load_file

    from dgnerf.cli import main
    from dgnerf.model.checkpoint import read_checkpoint

    d = 0.7
    cfg = tiny_cfg(tiny_set, tmp_path / "a", steps=8, checkpoint_every=4, ema_decay=d)
    tr = Trainer(cfg)
    names = [n for n, _ in tr.model.named_parameters()]
    seen = []
    orig = tr.train_step

    def step_and_record(s):
        out = orig(s)
        seen.append({n: p.detach().clone() for n, p in tr.model.named_parameters()})
        return out

    tr.train_step = step_and_record
    tr.fit()
    ck = tmp_path / "a" / "checkpoints" / "step_00000008"
    _, avg, _ = read_checkpoint(str(ck / "model.safetensors"))
    state = load_file(str(ck / "train_state.safetensors"))
    n = len(seen)
    assert n == 8 and int(state["ema_updates"]) == 8
    for name in names:
        want = sum((1 - d) * d ** (n - 1 - i) * seen[i][name].double() for i in range(n)) / (1 - d ** n)
        torch.testing.assert_close(avg[name].double(), want, rtol=1e-5, atol=1e-7)
        assert torch.equal(state[f"raw.{name}"], seen[-1][name])
    assert any(not torch.equal(avg[k], seen[-1][k]) for k in names)  # the average is not the last weights
    # resume from step 4 in another run directory: the step-8 checkpoint is the same bits
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000008")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step_00000004\n")
    Trainer(tiny_cfg(tiny_set, tmp_path / "b", steps=8, checkpoint_every=4, ema_decay=d)).fit(resume=True)
    _, avg_b, _ = read_checkpoint(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "model.safetensors"))
    state_b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "train_state.safetensors"))
    for name in names:
        assert torch.equal(avg_b[name], avg[name]) and torch.equal(state_b[f"raw.{name}"], state[f"raw.{name}"])
    # a run without the average continues from the raw weights of such a checkpoint
    plain = Trainer(tiny_cfg(tiny_set, tmp_path / "c", steps=8))
    plain.load(str(ck))
    assert all(torch.equal(p, seen[-1][k]) for k, p in plain.model.named_parameters())
    # bad values are named, by the Trainer and by the CLI
    for bad in (1.0, -0.1, True, float("nan")):
        with pytest.raises(DgnerfError, match="ema_decay: expected a number in \\[0, 1\\)"):
            Trainer(tiny_cfg(tiny_set, tmp_path / "d", ema_decay=bad))
    rc = main(["train", tiny_set, "--out", str(tmp_path / "e"), "--lambda-perceptual", "0", "--ema-decay", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--ema-decay" in err and "< 1" in err, err


def test_camera_correction_moves_the_training_cameras_only_and_resumes_exactly(tiny_set, tmp_path, capsys):
    """camera_lr > 0: each training frame's camera is c2w @ [exp([w]x) | t] with w, t learned (zero mean over the
    frames), kept in train_state.safetensors; renders use the data's cameras; --resume continues bit for bit."""
    import shutil

    from safetensors.torch import load_file

    from dgnerf.camera import corrected_c2w
    from dgnerf.cli import main
    from dgnerf.model import RenderOptions
    from dgnerf.model.checkpoint import read_checkpoint

    kw = dict(steps=8, checkpoint_every=4, camera_lr=1e-2, camera_reg=1e-3)
    tr = Trainer(tiny_cfg(tiny_set, tmp_path / "a", **kw))
    n = len(tr.train_set)
    tr.fit()
    ck = tmp_path / "a" / "checkpoints" / "step_00000008"
    state = load_file(str(ck / "train_state.safetensors"))
    rot, trans = state["camera.rotation"], state["camera.translation"]
    assert rot.shape == (n, 3) and trans.shape == (n, 3)
    assert float(rot.abs().max()) > 1e-4 and float(trans.abs().max()) > 1e-4  # they learned
    torch.testing.assert_close(rot.mean(0), torch.zeros(3), atol=1e-6, rtol=0)  # zero mean over the frames
    torch.testing.assert_close(trans.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(tr.camera_corrections()[0], rot)
    logged = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert logged[-1]["camera_deg_max"] == pytest.approx(float(rot.norm(dim=-1).max()) * 180 / math.pi, rel=1e-5)
    # a training step renders frame i through its corrected camera; a render outside training uses the data's
    b = tr.frames.batch([0, 1], tr.device, count=False)
    with torch.no_grad():
        got = tr.forward_batch(b, 3).image
        opts = RenderOptions(path="fast", precision="fp32", stratified=True, seed=step_seed(tr.cfg.seed, 3))
        want = tr.model(b["identity"], b["expression"], corrected_c2w(b["c2w"], rot[:2], trans[:2]), b["intrinsics"],
                        options=opts).image
        plain = tr.model(b["identity"], b["expression"], b["c2w"], b["intrinsics"], options=opts).image
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-6)
    # model.safetensors holds no camera tensors: it is a normal head checkpoint
    _, weights, _ = read_checkpoint(str(ck / "model.safetensors"))
    assert not any(k.startswith("camera") for k in weights)
    # resume from step 4 elsewhere: the same bits at step 8, weights and corrections
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000008")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step_00000004\n")
    Trainer(tiny_cfg(tiny_set, tmp_path / "b", **kw)).fit(resume=True)
    state_b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "train_state.safetensors"))
    assert set(state_b) == set(state) and all(torch.equal(state_b[k], state[k]) for k in state if k != "rng.torch")
    # a run without corrections loads such a checkpoint; a run with them starts them at zero from one without
    plain_run = Trainer(tiny_cfg(tiny_set, tmp_path / "c", steps=8))
    plain_run.load(str(ck))
    assert plain_run.camera_corrections() is None
    Trainer(tiny_cfg(tiny_set, tmp_path / "d", steps=4, checkpoint_every=4)).fit()
    again = Trainer(tiny_cfg(tiny_set, tmp_path / "d", **kw))
    capsys.readouterr()
    assert again.load(str(tmp_path / "d" / "checkpoints" / "step_00000004")) == 4
    assert "no camera corrections" in capsys.readouterr().out
    assert float(again.camera_corrections()[0].abs().max()) == 0.0
    # bad values are named, by the Trainer and by the CLI
    for name in ("camera_lr", "camera_reg"):
        for bad in (-1e-3, float("nan"), True, "1"):
            with pytest.raises(DgnerfError, match=f"{name}: expected a finite number >= 0"):
                Trainer(tiny_cfg(tiny_set, tmp_path / "e", **{name: bad}))
    rc = main(["train", tiny_set, "--out", str(tmp_path / "f"), "--lambda-perceptual", "0", "--camera-lr", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--camera-lr" in err and ">= 0" in err, err
