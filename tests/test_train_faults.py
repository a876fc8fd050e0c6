"""Faults during training (dgnerf.train.trainer): NaN/Inf in the loss or the gradients, a frame that cannot be read
in the middle of an epoch, a disk that fills up while a checkpoint is written, and SIGKILL at random moments
(inside checkpoint writes included) followed by --resume, which must end exactly where an uninterrupted run ends.

The quick slices run in the normal suite; `pytest -m long` adds the 20-kill run (scripts/fuzz.sh runs it)."""
import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from dgnerf.cli import main
from dgnerf.errors import DgnerfError
from dgnerf.model.checkpoint import read_checkpoint
from dgnerf.train import Trainer
from dgnerf.train import trainer as T
from dgnerf.train.trainer import frame_indices
from tests.conftest import TINY_MODEL, tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(data, out, **kw):
    return tiny_train_config(data, out, **{"checkpoint_every": 2, **kw})


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------ NaN / Inf


class NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_a_non_finite_loss_or_gradient_skips_the_step(tiny_set, tmp_path):
    t = Trainer(tiny_cfg(tiny_set, tmp_path / "run"))
    loss_fn = t.loss
    bad = {2: "loss_nan", 4: "loss_inf", 5: "grad"}
    current = {"step": 0}

    def loss(pred, target, mask):
        kind = bad.get(current["step"])
        if kind == "grad":
            pred = NanGradient.apply(pred)
        total, parts = loss_fn(pred, target, mask)
        if kind == "loss_nan":
            total = total * float("nan")
        elif kind == "loss_inf":
            total = total + float("inf")
        return total, parts

    t.loss = loss
    for step in range(7):
        current["step"] = step
        before = params(t.model)
        moments = {k: v.clone() for k, v in t.opt.state_dict()["state"].get(0, {}).items() if torch.is_tensor(v)}
        parts = t.train_step(step)
        after = params(t.model)
        if step in bad:
            assert parts.get("skipped") == 1.0 and same(before, after), step  # no update at all
            now = {k: v for k, v in t.opt.state_dict()["state"].get(0, {}).items() if torch.is_tensor(v)}
            assert all(torch.equal(moments[k], now[k]) for k in moments), step  # nor of Adam's moments
        else:
            assert "skipped" not in parts and not same(before, after), step
    assert t.skipped_steps == 3 and t.bad_in_row == 0


def test_n_non_finite_steps_in_a_row_stop_and_keep_the_last_good_checkpoint(tiny_set, tmp_path):
    cfg = tiny_cfg(tiny_set, tmp_path / "run", steps=20, checkpoint_every=3, max_bad_steps=4)
    t = Trainer(cfg)
    loss_fn = t.loss
    calls = {"n": 0}

    def loss(pred, target, mask):
        total, parts = loss_fn(pred, target, mask)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > 7 else total), parts  # steps 7, 8, 9, 10 are bad

    t.loss = loss
    with pytest.raises(DgnerfError) as e:
        t.fit()
    msg = str(e.value)
    ckpts = sorted(d for d in os.listdir(tmp_path / "run" / "checkpoints") if d.startswith("step_"))
    # steps 7..10 skipped: the checkpoint at step 9 holds the (unchanged) weights of step 7; nothing after the stop
    assert ckpts[-1] == "step_00000009", ckpts
    assert "steps 7..10" in msg and "4 steps in a row" in msg and "step_00000009" in msg and "intact" in msg, msg
    assert "\n" not in msg
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000009"
    _, state, _ = read_checkpoint(str(tmp_path / "run" / "checkpoints" / latest / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in state.values())
    recs = records(tmp_path / "run")
    assert [r["step"] for r in recs if r.get("skipped")] == [8, 9, 10]  # logged steps count completed ones
    assert recs[-1]["skipped_steps"] == 3
    # the run resumes from it
    t2 = Trainer(tiny_cfg(tiny_set, tmp_path / "run", steps=11, checkpoint_every=3))
    assert t2.fit(resume=True)["step"] == 11


def test_non_finite_weights_are_never_checkpointed(tiny_set, tmp_path):
    t = Trainer(tiny_cfg(tiny_set, tmp_path / "run"))
    t.save(2)
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("inf"))
    with pytest.raises(DgnerfError, match=r"weights hold NaN/Inf.*step_00000002 \(step 2\) is intact"):
        t.save(4)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["latest", "step_00000002"]


# ------------------------------------------------------------------------------------------------ bad samples


def corrupt_png(path):
    """Keep the PNG header (the dataset's open-only check passes) and cut the image data."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:60])


def copy_set(tiny_set, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(tiny_set, d)
    return str(d)


@pytest.mark.parametrize("preload", [True, False])
def test_a_corrupted_frame_stops_training_naming_the_file(tiny_set, tmp_path, preload):
    data = copy_set(tiny_set, tmp_path)
    cfg = tiny_cfg(data, tmp_path / "run", steps=12, checkpoint_every=100, preload_max_gb=4.0 if preload else 0.0)
    if preload:
        corrupt_png(os.path.join(data, "images", "000005.png"))
        with pytest.raises(T.BadSample) as e:
            Trainer(cfg)
    else:
        t = Trainer(cfg)  # frames are read per step: the file breaks in the middle of the epoch
        corrupt_png(os.path.join(data, "images", "000005.png"))
        with pytest.raises(T.BadSample) as e:
            t.fit()
        assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[-1].startswith("step_")  # the work so far is kept
    msg = str(e.value)
    assert "images/000005.png" in msg and "--bad-samples skip" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("preload", [True, False])
def test_a_corrupted_frame_is_skipped_and_counted(tiny_set, tmp_path, preload):
    data = copy_set(tiny_set, tmp_path)
    cfg = tiny_cfg(data, tmp_path / "run", steps=12, checkpoint_every=100, bad_samples="skip",
                   preload_max_gb=4.0 if preload else 0.0)
    if preload:
        corrupt_png(os.path.join(data, "images", "000005.png"))
    t = Trainer(cfg)
    if not preload:
        corrupt_png(os.path.join(data, "images", "000005.png"))
    res = t.fit()
    j = next(i for i, f in enumerate(t.train_set.frames) if f.index == 5)
    drawn = sum(frame_indices(cfg.seed, s, cfg.batch_size, len(t.train_set)).count(j) for s in range(cfg.steps))
    assert drawn > 0 and res["skipped_samples"] == drawn and res["step"] == 12
    assert list(res["bad_samples"]) == ["images/000005.png"]
    assert records(cfg.out)[-1]["skipped_samples"] == drawn


def test_bad_samples_flag_via_the_cli(tiny_set, tmp_path, capsys):
    data = copy_set(tiny_set, tmp_path)
    corrupt_png(os.path.join(data, "images", "000004.png"))
    args = ["train", data, "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2", "--lambda-perceptual",
            "0", "--no-progress", "--device", "cpu", "--model", json.dumps(TINY_MODEL)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "images/000004.png" in err and "--bad-samples skip" in err, err
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: the run directory goes
    assert main(args + ["--bad-samples", "skip"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 3


# ------------------------------------------------------------------------------------------------ disk full


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny_set, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_set, tmp_path / "run", steps=10, checkpoint_every=2)
    t = Trainer(cfg)
    real = T.save_checkpoint
    n = {"calls": 0}

    def full_disk(path, model, metadata=None):
        n["calls"] += 1
        if n["calls"] == 3:  # the third checkpoint (step 6) meets a full disk half-way
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, model, metadata)

    monkeypatch.setattr(T, "save_checkpoint", full_disk)
    with pytest.raises(DgnerfError) as e:
        t.fit()
    msg = str(e.value)
    assert "could not write checkpoint step_00000006" in msg and "No space left on device" in msg, msg
    assert "step_00000004" in msg and "intact" in msg and "--resume" in msg and "\n" not in msg
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(ck)) == ["latest", "step_00000002", "step_00000004"]  # no temporary left
    assert (ck / "latest").read_text().strip() == "step_00000004"
    assert n["calls"] == 3  # no further write was tried after the failure
    # the previous checkpoint loads, and a render from the run's pointer works
    out = tmp_path / "r.png"
    assert main(["render", "--checkpoint", str(ck / "latest"), "--identity", "zeros", "--out", str(out)]) == 0


def _limit_file_size(limit):
    def pre():
        # what a full disk does to a writer: write() fails with EFBIG instead of the default SIGXFSZ kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def train_cmd(data, run, steps, every=1, extra=()):
    return [sys.executable, "-m", "dgnerf", "train", data, "--out", str(run), "--steps", str(steps), "--batch-size",
            "2", "--lr", "1e-3", "--lr-final", "1e-4", "--lambda-perceptual", "0", "--checkpoint-every", str(every),
            "--sample-every", "1000", "--log-every", "1", "--deterministic", "--no-progress", "--device", "cpu",
            "--seed", "3", "--model", json.dumps(TINY_MODEL), *extra]


def child_env():
    # one thread: the CPU MLP backward sums per-thread partial gradients, so the bits depend on the thread count
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_disk_full_in_a_subprocess_with_a_file_size_limit(tiny_set, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(train_cmd(tiny_set, run, 4, every=2), env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # the model file is ~190 KB: a 100 KB limit lets the logs through and stops the next checkpoint
    r = subprocess.run(train_cmd(tiny_set, run, 8, every=2, extra=["--resume"]), env=child_env(), capture_output=True,
                       text=True, timeout=300, preexec_fn=_limit_file_size(100_000))
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "could not write checkpoint step_00000006" in err and "File too large" in err, err
    assert "step_00000004" in err and "intact" in err
    ck = run / "checkpoints"
    assert sorted(os.listdir(ck)) == ["latest", "step_00000002", "step_00000004"]
    assert (ck / "latest").read_text().strip() == "step_00000004"
    read_checkpoint(str(ck / "step_00000004" / "model.safetensors"))
    # with space again, --resume finishes the run
    r = subprocess.run(train_cmd(tiny_set, run, 8, every=2, extra=["--resume"]), env=child_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "resumed from" in r.stdout and "step_00000004" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ SIGKILL


def losses(run):
    return {r["step"]: r["loss"] for r in records(run)}


def kill_campaign(data, tmp, kills, seed, steps=24):
    """Train `steps` steps (a checkpoint after every step), SIGKILLed `kills` times at random moments (half of them
    the moment a checkpoint's temporary directory appears, i.e. inside a checkpoint write), resumed after each; the
    result must equal an uninterrupted run bit for bit. Returns a report."""
    rng = random.Random(seed)
    ref = tmp / "ref"
    r = subprocess.run(train_cmd(data, ref, steps), env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp / "killed"
    ck = run / "checkpoints"
    rep = {"kills": 0, "inside_checkpoint_write": 0, "resumes": 0, "kill_steps": []}
    while rep["kills"] < kills:
        done = len(losses(run)) if (run / "metrics.jsonl").exists() else 0
        if done >= steps - 1:  # too close to the end to kill again
            raise AssertionError(f"the run got to step {done} before {kills} kills: lengthen it")
        proc = subprocess.Popen(train_cmd(data, run, steps, extra=["--resume"]), env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        in_write = rng.random() < 0.5
        wait_steps = rng.randint(0, 1)  # let a step or two pass so the run moves on
        deadline = time.time() + 120
        target = done + wait_steps
        delay = rng.uniform(0.0, 0.03)  # a step of the tiny model takes a few tens of ms
        killed_in_write = False
        while time.time() < deadline and proc.poll() is None:
            n = sum(1 for _ in open(run / "metrics.jsonl")) if (run / "metrics.jsonl").exists() else 0
            if n > target:
                if in_write:
                    if ck.is_dir() and any(d.startswith(".tmp_") for d in os.listdir(ck)):
                        killed_in_write = True
                        break
                else:
                    time.sleep(delay)
                    break
            time.sleep(0.0005)
        if proc.poll() is not None:
            raise AssertionError("the run ended before it was killed: " + proc.stderr.read().decode()[-2000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        rep["kills"] += 1
        rep["kill_steps"].append(len(losses(run)) if (run / "metrics.jsonl").exists() else 0)
        leftovers = [d for d in os.listdir(ck) if d.startswith(".tmp_")] if ck.is_dir() else []
        if killed_in_write and leftovers:
            rep["inside_checkpoint_write"] += 1
        # the invariant after any kill: `latest` names a complete checkpoint that loads
        if (ck / "latest").exists():
            name = (ck / "latest").read_text().strip()
            read_checkpoint(str(ck / name / "model.safetensors"))
            assert (ck / name / "train_state.json").exists() and (ck / name / "train_state.safetensors").exists()
    r = subprocess.run(train_cmd(data, run, steps, extra=["--resume"]), env=child_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep["resumes"] = rep["kills"]
    a, b = losses(ref), losses(run)
    assert sorted(b) == list(range(1, steps + 1)), sorted(b)
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]
    final_a = read_checkpoint(str(ref / "checkpoints" / f"step_{steps:08d}" / "model.safetensors"))[1]
    final_b = read_checkpoint(str(ck / f"step_{steps:08d}" / "model.safetensors"))[1]
    assert same(final_a, final_b)  # bit for bit
    assert not [d for d in os.listdir(ck) if d.startswith((".tmp_", ".trash_"))]  # leftovers cleared
    rep["final_loss"] = b[steps]
    return rep


def test_three_random_sigkills_resume_to_the_same_result(tiny_set, tmp_path):
    rep = kill_campaign(tiny_set, tmp_path, kills=3, seed=1, steps=12)
    assert rep["kills"] == 3


@pytest.mark.long
def test_twenty_random_sigkills_resume_to_the_same_result(tiny_set, tmp_path):
    rep = kill_campaign(tiny_set, tmp_path, kills=24, seed=2024, steps=120)
    print(f"\nSIGKILL campaign: {rep['kills']} kills ({rep['inside_checkpoint_write']} inside a checkpoint write), "
          f"killed at steps {rep['kill_steps']}, final loss {rep['final_loss']} == uninterrupted run")
    assert rep["kills"] >= 20 and rep["inside_checkpoint_write"] >= 5
