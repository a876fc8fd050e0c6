"""Optional gaze conditioning (HeadConfig gaze_dim): off by default and then nothing changes; the code joins the
conditioning on every path; the trainer fills its statistics; the built-in set without gaze in the expression;
the gaze-editing grid (`dgnerf gaze`)."""
import json
import os

import numpy as np
import pytest
import torch

from dgnerf.cli import main
from dgnerf.errors import DgnerfError
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from tests.conftest import TINY_MODEL


def gaze_cfg(**kw):
    base = dict(gaze_dim=2, gaze_mean=[0.1, -0.05], gaze_std=[0.3, 0.2])
    base.update(kw)
    return HeadConfig.tiny(**base)


def inputs(cfg, B=2):
    from dgnerf.camera import orbit_c2w

    z = torch.randn(B, cfg.identity_dim)
    beta = torch.randn(B, cfg.expression_dim)
    c2w = orbit_c2w(torch.tensor([10.0, -15.0])[:B], torch.tensor([5.0, 0.0])[:B], 0.0, cfg.camera_distance)
    K = torch.tensor([[cfg.focal, cfg.focal, cfg.feature_size / 2, cfg.feature_size / 2]] * B)
    return z, beta, c2w, K


def test_off_by_default_and_configs_without_gaze_are_unchanged():
    cfg = HeadConfig()
    d = cfg.to_dict()
    assert cfg.gaze_dim == 0 and not any(k.startswith("gaze") for k in d)
    assert cfg.cond_dim == 512 + 46 and cfg.input_dim == 63 + 512 + 46
    m = HeadModel(HeadConfig.tiny())
    assert m.field.trunk[0].weight.shape == (32, 27 + 16 + 6)
    # an old config (no gaze keys) loads as a model without gaze
    assert HeadConfig.from_json(HeadConfig.tiny().to_json()).gaze_dim == 0


def test_config_records_gaze_and_checks_it():
    cfg = gaze_cfg()
    assert cfg.cond_dim == 16 + 6 + 2 and HeadModel(cfg).field.trunk[0].weight.shape == (32, 27 + 16 + 6 + 2)
    back = HeadConfig.from_json(cfg.to_json())
    assert back == cfg and back.gaze_mean == (0.1, -0.05) and json.loads(cfg.to_json())["gaze_std"] == [0.3, 0.2]
    with pytest.raises(DgnerfError, match=r"'gaze_dim' expected an int >= 0 \(0 = no gaze conditioning\), got -1"):
        HeadConfig.tiny(gaze_dim=-1)
    with pytest.raises(DgnerfError, match=r"'gaze_mean' expected an empty list or 2 finite numbers \(gaze_dim\), got \(0\.1,\)"):
        gaze_cfg(gaze_mean=[0.1])
    with pytest.raises(DgnerfError, match=r"'gaze_std' expected positive numbers, got \(0\.3, 0\.0\)"):
        gaze_cfg(gaze_std=[0.3, 0.0])


def test_gaze_conditions_every_path_and_none_is_the_mean():
    torch.manual_seed(0)
    cfg = gaze_cfg()
    m = HeadModel(cfg).eval()
    z, beta, c2w, K = inputs(cfg)
    g = torch.tensor([[0.5, 0.2], [-0.4, -0.3]])
    with torch.no_grad():
        fast = m(z, beta, c2w, K, gaze=g).image
        ref = m(z, beta, c2w, K, gaze=g, options=RenderOptions(path="reference")).image
        mean = m(z, beta, c2w, K, gaze=torch.tensor([[0.1, -0.05]] * 2)).image
        none = m(z, beta, c2w, K).image
        other = m(z, beta, c2w, K, gaze=g.flip(0)).image
    assert fast.shape == (2, 3, 32, 32)
    assert torch.allclose(fast, ref, atol=1e-5)  # the fused path folds the gaze like the other codes
    assert torch.allclose(none, mean, atol=1e-6)  # no gaze = the training mean
    assert (other - fast).abs().max() > 1e-4  # the gaze changes the image
    # the conditioning the MLP sees: [beta, (gaze - mean) / std]
    u = m.field.condition(beta, g)
    assert torch.allclose(u[:, -2:], (g - torch.tensor([0.1, -0.05])) / torch.tensor([0.3, 0.2]))
    assert torch.equal(u[:, :6], beta)
    # gradients reach the gaze code
    gg = g.clone().requires_grad_(True)
    m(z, beta, c2w, K, gaze=gg).image.mean().backward()
    assert gg.grad is not None and gg.grad.abs().sum() > 0


def test_gaze_input_errors_name_the_argument():
    m = HeadModel(gaze_cfg())
    z, beta, c2w, K = inputs(m.cfg)
    with pytest.raises(ValueError, match=r"argument 'gaze' expected shape \[2, 2\] \(gaze code\), got \[2, 3\]"):
        m(z, beta, c2w, K, gaze=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="argument 'gaze' contains NaN"):
        m(z, beta, c2w, K, gaze=torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="argument 'gaze' expected a floating-point torch.Tensor, got list"):
        m(z, beta, c2w, K, gaze=[[0.0, 0.0]] * 2)
    plain = HeadModel(HeadConfig.tiny())
    with pytest.raises(ValueError, match=r"argument 'gaze' given, but this model has no gaze conditioning"):
        plain(*inputs(plain.cfg), gaze=torch.zeros(2, 2))


def test_checkpoint_keeps_the_gaze_config(tmp_path):
    from dgnerf.model.checkpoint import load_checkpoint, save_checkpoint

    m = HeadModel(gaze_cfg()).eval()
    path = save_checkpoint(str(tmp_path / "g.safetensors"), m)
    back = load_checkpoint(path)
    assert back.cfg == m.cfg and back.cfg.gaze_dim == 2
    z, beta, c2w, K = inputs(m.cfg)
    g = torch.randn(2, 2)
    with torch.no_grad():
        assert torch.equal(back(z, beta, c2w, K, gaze=g).image, m(z, beta, c2w, K, gaze=g).image)


@pytest.fixture(scope="module")
def separated_set(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("gz") / "tiny_gaze"
    build_synthetic_dataset(root, size="tiny", seed=3, gaze_in_expression=False)
    return str(root)


def test_builtin_set_with_gaze_only_in_the_gaze_array(separated_set, tiny_set, tmp_path):
    from dgnerf.data import HeadDataset
    from dgnerf.data.synthetic import build_synthetic_dataset, expression_basis

    a, b = HeadDataset(tiny_set), HeadDataset(separated_set)
    assert torch.equal(a.arrays["gaze"], b.arrays["gaze"]) and torch.equal(a.arrays["c2w"], b.arrays["c2w"])
    assert torch.equal(a[4]["image"], b[4]["image"])  # the same pictures
    B = torch.from_numpy(expression_basis())
    pa, pb = a.arrays["expression"] @ B, b.arrays["expression"] @ B  # back to the 12 parameters
    assert torch.allclose(pa[:, 6:8], a.arrays["gaze"], atol=1e-5) and pa[:, 6:8].abs().max() > 0.05
    assert pb[:, 6:8].abs().max() < 1e-5  # no gaze in the expression code
    assert torch.allclose(pa[:, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]], pb[:, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]], atol=1e-5)
    assert b.manifest["meta"]["gaze_names"] == ["yaw", "pitch"] and "gaze_names" not in a.manifest["meta"]
    # deterministic: the same seed gives the same arrays
    build_synthetic_dataset(tmp_path / "again", size="tiny", seed=3, gaze_in_expression=False)
    with open(os.path.join(separated_set, "frames.safetensors"), "rb") as f1, open(tmp_path / "again" / "frames.safetensors", "rb") as f2:
        assert f1.read() == f2.read()


@pytest.fixture(scope="module")
def gaze_ckpt(separated_set, tmp_path_factory):
    from dgnerf.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("gaze_run")
    cfg = TrainConfig(data=separated_set, out=str(out), model=dict(TINY_MODEL, gaze_dim=2), batch_size=3, steps=3,
                      lr=3e-3, lr_final=1e-3, lambda_perceptual=0.0, checkpoint_every=1000, sample_every=1000,
                      log_every=100, progress=False, tensorboard=False, seed=1)
    res = Trainer(cfg).fit()
    return os.path.join(res["checkpoint"], "model.safetensors")


def test_trainer_fills_the_gaze_statistics_and_trains_with_gaze(gaze_ckpt, separated_set):
    from dgnerf.data import HeadDataset
    from dgnerf.model.checkpoint import load_checkpoint

    m = load_checkpoint(gaze_ckpt)
    g = HeadDataset(separated_set, split="train").arrays["gaze"].double()
    assert m.cfg.gaze_dim == 2
    assert np.allclose(m.cfg.gaze_mean, g.mean(0).numpy(), atol=1e-6) and np.allclose(m.cfg.gaze_std, g.std(0).numpy(), atol=1e-6)
    # the gaze columns of the first layer were trained: Adam moved them from their initial values
    w = m.field.trunk[0].weight
    assert w.shape[1] == 27 + 512 + 46 + 2
    torch.manual_seed(1)  # the trainer's seed: the same initial weights
    w0 = HeadModel(m.cfg).field.trunk[0].weight
    assert w0.shape == w.shape and not torch.equal(w[:, -2:], w0[:, -2:])
    assert (w[:, -2:] - w0[:, -2:]).abs().max() > 1e-4


def test_trainer_refuses_a_gaze_length_the_data_lacks(separated_set, tmp_path):
    from dgnerf.train import TrainConfig, Trainer

    cfg = TrainConfig(data=separated_set, out=str(tmp_path), model=dict(TINY_MODEL, gaze_dim=6), steps=1, progress=False,
                      tensorboard=False, lambda_perceptual=0.0)
    with pytest.raises(DgnerfError, match=r"model gaze_dim 6: the dataset .* has gaze of length 2"):
        Trainer(cfg)


def test_fit_uses_each_frames_gaze(gaze_ckpt, separated_set):
    from dgnerf.apps.fit import FitConfig, fit_person, targets_from_dataset
    from dgnerf.model.checkpoint import load_checkpoint

    m = load_checkpoint(gaze_ckpt)
    tg = targets_from_dataset(separated_set, m.cfg, split="test")[0]
    assert tg.gaze is not None and tg.gaze.shape == (3, 2)
    res = fit_person(m, tg, FitConfig(iters=1), progress=False)
    with torch.no_grad():
        z = tg.identity.mean(0, keepdim=True).expand(3, -1)
        direct = m(z, tg.expression, tg.c2w, tg.intrinsics, gaze=tg.gaze).image
    assert torch.allclose(res.render_init, direct, atol=1e-6)


def test_gaze_grid_values_and_axes():
    from dgnerf.apps.gaze import gaze_axes, gaze_values

    cfg = gaze_cfg()
    assert gaze_axes(cfg) == ([0], [1])
    six = HeadConfig.tiny(gaze_dim=6)
    names = ["right_x", "right_y", "left_x", "left_y", "right_open", "left_open"]
    assert gaze_axes(six, names) == ([0, 2], [1, 3])
    v = gaze_values(cfg, [0], [1], steps=3, spread=2.0)
    assert v.shape == (3, 3, 2)
    assert torch.allclose(v[0, 0], torch.tensor([0.1 - 0.6, -0.05 + 0.4]))  # top left: image left, up
    assert torch.allclose(v[2, 2], torch.tensor([0.1 + 0.6, -0.05 - 0.4]))  # bottom right
    assert torch.allclose(v[1, 1], torch.tensor([0.1, -0.05]))  # the centre is the mean
    v6 = gaze_values(HeadConfig.tiny(gaze_dim=6), [0, 2], [1, 3], steps=2)
    assert torch.equal(v6[..., 4:], torch.zeros(2, 2, 2))  # the opening stays at the mean (0 / 1 without stats)
    with pytest.raises(DgnerfError, match="no gaze conditioning"):
        gaze_axes(HeadConfig.tiny())
    with pytest.raises(DgnerfError, match=r"--x-dims/--y-dims: the model's gaze has 6 components without names"):
        gaze_axes(six)
    with pytest.raises(DgnerfError, match=r"--x-dims: expected component indices in \[0, 1\] \(gaze_dim 2\), got \[2\]"):
        gaze_axes(cfg, x=[2], y=[1])
    with pytest.raises(DgnerfError, match="--steps: expected an integer >= 2, got 1"):
        gaze_values(cfg, [0], [1], steps=1)


def test_gaze_command_writes_the_grid(gaze_ckpt, separated_set, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "gaze.png"
    assert main(["gaze", "--checkpoint", gaze_ckpt, "--dataset", separated_set, "--person", "p0001", "--out", str(out),
                 "--steps", "3"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (2 + 3 * (256 + 2), 2 + 3 * (256 + 2), 3)  # 3x3 tiles of 32 px, scaled x8
    tiles = [img[2 + r * 258:2 + r * 258 + 256, 2 + c * 258:2 + c * 258 + 256].astype(int) for r in range(3) for c in range(3)]
    assert max(np.abs(t - tiles[4]).max() for t in tiles) > 0  # the gaze changes the picture
    assert "columns = horizontal gaze" in capsys.readouterr().out


@pytest.mark.parametrize("extra,expect", [
    (["--x-dims", "0"], "give both"),
    (["--x-dims", "a", "--y-dims", "1"], "--x-dims: expected comma-separated component indices"),
    (["--steps", "1"], "--steps: expected an integer >= 2"),
    (["--person", "nobody"], "--person 'nobody': not a person of"),
])
def test_gaze_command_bad_input(gaze_ckpt, separated_set, tmp_path, capsys, extra, expect):
    args = ["gaze", "--checkpoint", gaze_ckpt, "--dataset", separated_set, "--person", "p0001", "--out",
            str(tmp_path / "g.png")] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


def test_gaze_command_on_a_model_without_gaze(tiny_set, tmp_path, capsys):
    from dgnerf.data import HeadDataset
    from dgnerf.model.checkpoint import save_checkpoint
    from dgnerf.train.trainer import model_config_for

    ckpt = save_checkpoint(str(tmp_path / "m.safetensors"),
                           HeadModel(model_config_for(HeadDataset(tiny_set, split="train"), dict(TINY_MODEL))))
    assert main(["gaze", "--checkpoint", ckpt, "--dataset", tiny_set, "--person", "p0000", "--out",
                 str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "this model has no gaze conditioning (config gaze_dim 0)" in err and "gaze_dim" in err


def test_drive_uses_the_drivers_gaze(gaze_ckpt, separated_set):
    from dgnerf.apps.drive import drive_frames, driver_from_dataset
    from dgnerf.media import to_uint8
    from dgnerf.model.checkpoint import load_checkpoint

    m = load_checkpoint(gaze_ckpt)
    drv = driver_from_dataset(separated_set, m.cfg, person="p0003")
    assert drv.gaze is not None and drv.gaze.shape == (3, 2)
    z = torch.randn(1, 512)
    frames = drive_frames(m, z, drv)
    with torch.no_grad():
        want = m(z.expand(3, -1), drv.expression, drv.c2w, drv.intrinsics, gaze=drv.gaze).image
    W = want.shape[-1]
    assert np.array_equal(frames[1][:, -W:], to_uint8(want[1]))


def test_cli_builds_the_set_with_gaze_separate(tmp_path):
    from dgnerf.data import HeadDataset
    from dgnerf.data.synthetic import expression_basis

    out = tmp_path / "g"
    assert main(["dataset", "build-synthetic", "--out", str(out), "--size", "tiny", "--persons", "2",
                 "--frames-per-person", "2", "--test-persons", "1", "--gaze-separate"]) == 0
    ds = HeadDataset(str(out))
    assert ds.manifest["meta"]["gaze_in_expression"] is False and ds.gaze_dim == 2
    params = ds.arrays["expression"] @ torch.from_numpy(expression_basis())
    assert params[:, 6:8].abs().max() < 1e-5 and ds.arrays["gaze"].abs().max() > 0.01
