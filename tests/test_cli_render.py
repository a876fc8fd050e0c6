"""The render / orbit / init-checkpoint commands (tiny checkpoints so they stay fast)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from dgnerf.cli import main
from dgnerf.model import HeadConfig, HeadModel
from dgnerf.model.checkpoint import save_checkpoint
from dgnerf.model.prior import apply_head_prior


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = HeadConfig.tiny(identity_dim=512, expression_dim=46, mlp_width=80)
    model = apply_head_prior(HeadModel(cfg), n_dirs=32)
    return save_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.safetensors"), model)


def test_render_png_from_code_files(tmp_path, tiny_ckpt):
    from PIL import Image

    np.save(tmp_path / "id.npy", np.random.randn(512).astype(np.float32))
    (tmp_path / "ex.txt").write_text(" ".join(str(v) for v in np.random.randn(46)))
    out = tmp_path / "x.png"
    rc = main(["render", "--checkpoint", tiny_ckpt, "--identity", str(tmp_path / "id.npy"),
               "--expression", str(tmp_path / "ex.txt"), "--yaw", "20", "--pitch", "-5", "--out", str(out),
               "--opacity-out", str(tmp_path / "op.png")])
    assert rc == 0
    op = np.asarray(Image.open(tmp_path / "op.png"))
    assert op.shape == (32, 32) and op.max() > 200 and op.min() < 50  # the head prior's silhouette
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3) and img.std() > 0


def test_render_safetensors_code_and_reference_path(tmp_path, tiny_ckpt):
    from safetensors.numpy import save_file

    save_file({"code": np.random.randn(1, 512).astype(np.float32)}, str(tmp_path / "id.safetensors"))
    out = tmp_path / "r.png"
    assert main(["render", "--checkpoint", tiny_ckpt, "--identity", str(tmp_path / "id.safetensors"),
                 "--path", "reference", "--out", str(out)]) == 0
    assert out.exists()


@pytest.mark.parametrize("make,expect", [
    (lambda d: None, "does not exist"),
    (lambda d: np.save(d / "c.npy", np.zeros(511, np.float32)), "511 numbers, expected 512"),
    (lambda d: np.save(d / "c.npy", np.full(512, np.nan, np.float32)), "NaN"),
    (lambda d: np.save(d / "c.npy", np.array([{"a": 1}], dtype=object)), "could not read"),
])
def test_bad_identity_one_line(tmp_path, tiny_ckpt, capsys, make, expect):
    make(tmp_path)
    rc = main(["render", "--checkpoint", tiny_ckpt, "--identity", str(tmp_path / "c.npy"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err and "Traceback" not in err


def test_bad_checkpoint_and_out(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    assert main(["render", "--checkpoint", str(tmp_path / "bad.safetensors"), "--identity", "random", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["render", "--identity", "random", "--out", str(tmp_path / "x.png")]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert main(["render", "--checkpoint", tiny_ckpt, "--identity", "random", "--out", str(tmp_path / "x.bmp")]) == 2


def test_orbit_gif_and_mp4(tmp_path, tiny_ckpt):
    gif = tmp_path / "o.gif"
    assert main(["orbit", "--checkpoint", tiny_ckpt, "--identity", "random:3", "--frames", "4", "--out", str(gif)]) == 0
    assert gif.stat().st_size > 0
    mp4 = tmp_path / "o.mp4"
    assert main(["orbit", "--checkpoint", tiny_ckpt, "--identity", "random:3", "--frames", "4", "--out", str(mp4)]) == 0
    assert mp4.exists() or (tmp_path / "o.gif").exists()


def test_init_checkpoint_command(tmp_path):
    from dgnerf.model.checkpoint import load_checkpoint

    out = tmp_path / "init.safetensors"
    assert main(["init-checkpoint", str(out)]) == 0
    m = load_checkpoint(out)
    assert m.cfg == HeadConfig()


@pytest.mark.parametrize("cmd", ["render", "orbit", "init-checkpoint"])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "dgnerf", cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout and "--" in r.stdout
