"""The identity ablation of `dgnerf eval` (encoder vs coefficients, Table 1 form): what each dataset's code is,
the same-frames check, training the second model exactly like the first, the table and figure."""
import json
import os
import shutil

import pytest
import torch

from dgnerf.cli import main
from tests.conftest import TINY_MODEL


def other_identity_copy(src, dst, label="FaceNet (stub) feature of each frame's face crop", seed=0):
    """The same frames with other identity codes (random unit vectors per frame), as a second dataset."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    t = load_file(os.path.join(dst, "frames.safetensors"))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t["identity"].shape, generator=g)
    t["identity"] = (z / z.norm(dim=1, keepdim=True)).contiguous()
    save_file(t, os.path.join(dst, "frames.safetensors"))
    with open(os.path.join(dst, "manifest.json")) as f:
        m = json.load(f)
    m["meta"]["identity_code"] = label
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(m, f)
    return str(dst)


@pytest.fixture(scope="module")
def pair(tiny_set, tmp_path_factory):
    """(tiny set = coefficients, its copy with other codes = 'encoder', a checkpoint trained 4 steps on the first)."""
    from dgnerf.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("ablation")
    d2 = other_identity_copy(tiny_set, root / "enc")
    cfg = TrainConfig(data=tiny_set, out=str(root / "run"), model=dict(TINY_MODEL), batch_size=3, steps=10, lr=3e-3,
                      lr_final=1e-3, lambda_perceptual=0.0, checkpoint_every=1000, sample_every=1000, log_every=100,
                      progress=False, tensorboard=False, seed=2, deterministic=True)
    tr = Trainer(cfg)
    for s in range(4):  # 4 of a nominal 10-step schedule, as a run stopped early would be
        tr.train_step(s)
    ckpt = tr.save(4)
    torch.use_deterministic_algorithms(False)
    return tiny_set, d2, ckpt


def test_identity_kind_names_the_code(pair, tmp_path):
    from dgnerf.apps.ablation import identity_kind

    d1, d2, _ = pair
    assert identity_kind(d1).startswith("coefficients (the built-in set's true identity parameters")
    assert identity_kind(d2) == "encoder (FaceNet feature of each frame)"
    d3 = other_identity_copy(d1, tmp_path / "x", label="my tracker")
    assert identity_kind(d3) == "identity codes of x"


def test_same_frames_check_names_the_difference(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    from dgnerf.apps.ablation import check_same_frames
    from dgnerf.errors import DgnerfError

    d1, d2, _ = pair
    check_same_frames(d1, d2, "test")  # fine
    with pytest.raises(DgnerfError, match="identity codes equal .*nothing to compare"):
        check_same_frames(d1, d1, "test")
    bad = other_identity_copy(d1, tmp_path / "bad")
    t = load_file(os.path.join(bad, "frames.safetensors"))
    t["expression"] = (t["expression"] + 0.1).contiguous()
    save_file(t, os.path.join(bad, "frames.safetensors"))
    with pytest.raises(DgnerfError, match=r"--ablation-identity .*bad: its expression differs"):
        check_same_frames(d1, bad, "test")


def test_train_like_repeats_the_training_exactly(pair, tmp_path):
    """Trained on the SAME dataset, train_like gives the very weights of the checkpoint: the second model of
    the ablation differs from the first by its identity codes only."""
    from dgnerf.apps.ablation import run_state, train_like
    from dgnerf.model.checkpoint import read_checkpoint

    d1, _, ckpt = pair
    tc, steps = run_state(ckpt)
    assert steps == 4 and tc["steps"] == 10 and tc["seed"] == 2
    path = train_like(ckpt, d1, str(tmp_path / "again"), progress=False, log=lambda *a: None)
    torch.use_deterministic_algorithms(False)
    _, a, meta = read_checkpoint(os.path.join(ckpt, "model.safetensors"))
    _, b, meta_b = read_checkpoint(os.path.join(path, "model.safetensors"))
    assert meta_b["train_step"] == "4" and set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_writes_the_identity_table_and_figure(pair, tmp_path):
    d1, d2, ckpt = pair
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", ckpt, "--dataset", d1, "--out", str(out), "--iters", "2", "--no-lpips",
                 "--no-csim", "--no-progress", "--ablation-identity", d2, "--ablation-identity-train",
                 "--ablation-identity-steps", "3"]) == 0
    torch.use_deterministic_algorithms(False)
    table = (out / "table1_identity.md").read_text()
    coef = "coefficients (the built-in set's true identity parameters, projected to 512-d)"
    enc = "encoder (FaceNet feature of each frame)"
    assert "| identity code | training steps | method | L1 ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | CSIM ↑ |" in table
    for label, steps in ((coef, 4), (enc, 3)):
        assert f"| {label} | {steps} | start (no fitting) |" in table and f"| {label} | {steps} | fitted |" in table
        assert f"| p0003 | {label} | fitted |" in table
    rep = json.loads((out / "metrics.json").read_text())
    ab = rep["ablation_identity"]
    assert set(ab) == {coef, enc}
    # the main model's rows are the Table 2 numbers (the same fit, not refitted)
    assert ab[coef]["fitted"] == pytest.approx(rep["overall"]["fitted"])
    assert ab[enc]["train_steps"] == 3 and set(ab[enc]["fitted"]) == {"l1", "psnr", "ssim"}
    assert os.path.isfile(os.path.join(out, "ablation_identity_run", "checkpoints", "step_00000003", "model.safetensors"))
    from PIL import Image

    w, h = Image.open(out / "ablation_identity.png").size
    assert w == 2 + 5 * (128 + 2) and h == 2 + 2 * (128 + 2)  # 5 columns; 2 frames of the one held-out person, x4


@pytest.mark.parametrize("extra,expect", [
    (["--ablation-identity", "{d2}"], "give exactly one of --ablation-identity-checkpoint C2"),
    (["--ablation-identity-train"], "give the dataset with the other identity code as --ablation-identity D2"),
    (["--ablation-identity", "{d2}", "--ablation-identity-checkpoint", "{ckpt}", "--ablation-identity-steps", "2"],
     "--ablation-identity-steps: only with --ablation-identity-train"),
    (["--ablation-identity", "{tmp}"], "not a dgnerf dataset"),
    (["--ablation-identity", "{d1}", "--ablation-identity-train"], "nothing to compare"),
    (["--ablation-identity", "{d2}", "--ablation-identity-train", "--checkpoint", "{bare}"],
     "is not a `dgnerf train` checkpoint directory"),
])
def test_bad_identity_ablation_arguments(pair, tmp_path, capsys, extra, expect):
    from dgnerf.model.checkpoint import load_checkpoint, save_checkpoint

    d1, d2, ckpt = pair
    bare = save_checkpoint(str(tmp_path / "bare.safetensors"), load_checkpoint(ckpt))
    fmt = dict(d1=d1, d2=d2, ckpt=ckpt, tmp=tmp_path, bare=bare)
    args = ["eval", "--checkpoint", ckpt, "--dataset", d1, "--out", str(tmp_path / "e"), "--iters", "1", "--no-lpips",
            "--no-csim", "--no-progress"] + [a.format(**fmt) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
