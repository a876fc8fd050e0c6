"""CSIM (identity similarity, FaceNet cosine): the crops, the cosine, its plumbing into fit/eval with a stub
embedder, 'unavailable' reported (never a silent zero), and the real FaceNet when cv2 5 + the graph are here."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgnerf import metrics
from tests.conftest import TINY_MODEL


def stub_embedder(crops):
    """Features of a crop: mean colour of each 40x40 cell (4x4 cells x RGB = 48-d). Records what it saw."""
    c = np.asarray(crops, np.float64)
    stub_embedder.seen.append(c.shape)
    return c.reshape(c.shape[0], 4, 40, 4, 40, 3).mean(axis=(2, 4)).reshape(c.shape[0], -1) - 127.5


stub_embedder.seen = []
stub_embedder.name = "stub"


def images(b=3, h=32, w=32):
    x = torch.rand(b, 3, h // 4, w // 4)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def test_mask_box_crop_maps_the_head_box_onto_the_crop():
    mask = torch.zeros(2, 1, 32, 40)
    mask[0, :, 10:30, 8:28] = 1  # a 20 x 20 box
    A = metrics.face_crop_affines((32, 40), mask=mask)
    assert A.shape == (2, 2, 3)
    # the box corners (8, 10) and (28, 30) go to the crop corners (0, 0) and (160, 160)
    assert np.allclose(A[0] @ np.array([8, 10, 1.0]), [0, 0]) and np.allclose(A[0] @ np.array([28, 30, 1.0]), [160, 160])
    # an empty mask crops the whole image (its longer side)
    assert np.allclose(A[1] @ np.array([20, 16, 1.0]), [80, 80]) and np.isclose(A[1][0, 0], 160 / 40)
    crops = metrics.face_crops(images(2, 32, 40), A)
    assert crops.shape == (2, 160, 160, 3) and crops.dtype == np.float32
    assert 0 <= crops.min() and crops.max() <= 255


def test_landmark_crop_is_the_preprocessors_facenet_crop():
    from dgnerf.face.recognition import facenet_affine

    lm = torch.rand(2, 478, 2) * 20 + 6
    A = metrics.face_crop_affines((32, 32), landmarks=lm)
    assert np.allclose(A[1], facenet_affine(lm[1].double().numpy(), 160, 44 / 160))
    with pytest.raises(ValueError, match=r"'landmarks' must be \[B, >=468, 2\].*got \[2, 10, 2\]"):
        metrics.face_crop_affines((32, 32), landmarks=torch.rand(2, 10, 2))
    with pytest.raises(ValueError, match="give 'mask'"):
        metrics.face_crop_affines((32, 32))


def test_csim_values_with_a_stub_embedder():
    a = images()
    mask = torch.ones(3, 1, 32, 32)
    same = metrics.csim(a, a, mask, embedder=stub_embedder)
    assert same.shape == (3,) and torch.allclose(same, torch.ones(3), atol=1e-6)
    other = metrics.csim(a, a.flip(0), mask, embedder=stub_embedder)
    assert float(other[0]) < 0.99 and float(other[1]) == pytest.approx(1.0, abs=1e-6)  # row 1 is itself
    # only the head counts: differences outside the mask change nothing
    mask[:, :, :, :8] = 0
    b = a.clone()
    b[:, :, :, :8] = 1 - b[:, :, :, :8]
    assert torch.allclose(metrics.csim(b, a, mask, embedder=stub_embedder), torch.ones(3), atol=1e-6)
    # the cosine is that of the features of the two crops
    A = metrics.face_crop_affines((32, 32), mask=mask)
    fa = stub_embedder(metrics.face_crops(b * mask + (1 - mask), A))
    fb = stub_embedder(metrics.face_crops(a.flip(0) * mask + (1 - mask), A))
    cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    assert np.allclose(metrics.csim(b, a.flip(0), mask, embedder=stub_embedder).numpy(), cos, atol=1e-5)


def test_csim_bad_input_names_the_argument():
    a = images()
    with pytest.raises(ValueError, match=r"'mask' must be \[B,1,H,W\]"):
        metrics.csim(a, a, torch.ones(3, 1, 16, 16), embedder=stub_embedder)
    with pytest.raises(ValueError, match=r"embedder must return \[B, D\] features for B = 3 crops, got \[2, 48\]"):
        metrics.csim(a, a, embedder=lambda c: stub_embedder(c)[:2])
    with pytest.raises(ValueError, match=r"'landmarks' must have one row per image \(3\), got 2"):
        metrics.csim(a, a, landmarks=torch.rand(2, 478, 2) * 30, embedder=stub_embedder)


def test_masked_metrics_add_csim_only_with_an_embedder():
    a, b = images(), images()
    m = torch.ones(3, 1, 32, 32)
    assert set(metrics.masked_metrics(a, b, m)) == {"l1", "psnr", "ssim"}
    out = metrics.masked_metrics(a, b, m, embedder=stub_embedder)
    assert set(out) == {"l1", "psnr", "ssim", "csim"} and out["csim"].shape == (3,)
    assert torch.all(out["csim"] < 1)


def test_unavailable_is_reported_not_zero(monkeypatch, tmp_path):
    emb, reason = metrics.csim_embedder(enabled=False, log=lambda *a: None)
    assert emb is None and "--no-csim" in reason
    # no FaceNet graph in the cache (and/or no cv2): a CsimUnavailable that says what is missing
    monkeypatch.setenv("DGNERF_CACHE", str(tmp_path))
    monkeypatch.setattr(metrics, "_EMBEDDERS", {})
    with pytest.raises(metrics.CsimUnavailable, match="opencv-python-headless|assets fetch --only facenet"):
        metrics.facenet_embedder()
    lines = []
    emb, reason = metrics.csim_embedder(log=lines.append)
    assert emb is None and reason and len(lines) == 1 and "CSIM unavailable" in lines[0]
    with pytest.raises(metrics.CsimUnavailable):
        metrics.csim(images(), images())  # no embedder given and none loadable: an error, never a number


@pytest.fixture(scope="module")
def tiny_model(tiny_set):
    from dgnerf.data import HeadDataset
    from dgnerf.model import HeadModel
    from dgnerf.train.trainer import model_config_for

    torch.manual_seed(0)
    return HeadModel(model_config_for(HeadDataset(tiny_set, split="train"), dict(TINY_MODEL))).eval()


def test_fit_and_eval_report_csim_with_an_injected_embedder(tiny_model, tiny_set, tmp_path):
    from dgnerf.apps.evaluate import evaluate
    from dgnerf.apps.fit import FitConfig, fit_person, targets_from_dataset

    tg = targets_from_dataset(tiny_set, tiny_model.cfg, split="test")[0]
    assert tg.landmarks is None  # the built-in set has no tracking: CSIM crops the head mask's box
    stub_embedder.seen.clear()
    res = fit_person(tiny_model, tg, FitConfig(iters=1), progress=False, csim_embedder=stub_embedder)
    assert res.metrics_init["csim"].shape == (3,) and res.metrics_fit["csim"].shape == (3,)
    assert all(s == (3, 160, 160, 3) for s in stub_embedder.seen) and len(stub_embedder.seen) == 4
    assert torch.all(res.metrics_fit["csim"] <= 1 + 1e-6) and torch.all(res.metrics_fit["csim"] > -1 - 1e-6)

    rep = evaluate(tiny_model, tiny_set, str(tmp_path / "with"), cfg=FitConfig(iters=1), progress=False,
                   log=lambda *a: None, csim_embedder=stub_embedder)
    table = (tmp_path / "with" / "table2.md").read_text()
    assert "| method | L1 ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | CSIM ↑ |" in table and "CSIM: cosine of stub features" in table
    row = next(line for line in table.splitlines() if line.startswith("| fitted (dgnerf fit) |"))
    assert row.split("|")[-2].strip() == f"{rep['overall']['fitted']['csim']:.3f}"
    assert rep["csim"] == {"available": True, "embedder": "stub"} and "csim" in rep["fitted_beats_init"]

    rep = evaluate(tiny_model, tiny_set, str(tmp_path / "without"), cfg=FitConfig(iters=1), progress=False,
                   log=lambda *a: None, csim_reason="cv2 is not installed")
    table = (tmp_path / "without" / "table2.md").read_text()
    assert "CSIM: n/a, not computed: cv2 is not installed." in table
    row = next(line for line in table.splitlines() if line.startswith("| fitted (dgnerf fit) |"))
    assert row.split("|")[-2].strip() == "n/a"
    saved = json.loads((tmp_path / "without" / "metrics.json").read_text())
    assert saved["csim"] == {"available": False, "reason": "cv2 is not installed"}
    assert "csim" not in saved["overall"]["fitted"]


def test_tracked_landmarks_map_source_points_into_the_model_image(tmp_path):
    from safetensors.numpy import save_file

    from dgnerf.apps.fit import tracked_landmarks

    N = 2
    lm = np.random.default_rng(0).uniform(0.2, 0.8, (N, 478, 3)).astype(np.float32)
    box = np.array([[10, 20, 100], [0, 5, 120]], np.float32)  # x0, y0, size (source pixels)
    K = np.array([[150, 150, 88, 72]] * N, np.float32)  # a 176 x 144 source (centred principal point)
    save_file({"landmarks": lm, "crop_box": box, "source_intrinsics": K}, str(tmp_path / "tracking.safetensors"))
    out = tracked_landmarks(str(tmp_path), resolution=256, image_size=64, num_frames=N)
    assert out.shape == (N, 478, 2)
    u = (lm[1, 7, 0] * 176 - 0) * 256 / 120 * 64 / 256
    v = (lm[1, 7, 1] * 144 - 5) * 256 / 120 * 64 / 256
    assert np.allclose(out[1, 7].numpy(), [u, v], atol=1e-4)
    assert tracked_landmarks(str(tmp_path), 256, 64, num_frames=3) is None  # does not fit the set: not used
    assert tracked_landmarks(str(tmp_path / "nope"), 256, 64, num_frames=N) is None


def test_eval_command_no_csim_is_said(tiny_model, tiny_set, tmp_path):
    from dgnerf.cli import main
    from dgnerf.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(str(tmp_path / "m.safetensors"), tiny_model)
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", ckpt, "--dataset", tiny_set, "--out", str(out), "--iters", "1", "--no-lpips",
                 "--no-csim", "--no-progress"]) == 0
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["csim"] == {"available": False, "reason": "CSIM off (--no-csim)"}
    assert "CSIM: n/a, not computed: CSIM off (--no-csim)." in (out / "table2.md").read_text()


def _facenet_here() -> bool:
    try:
        metrics.facenet_embedder()
        return True
    except metrics.CsimUnavailable:
        return False


@pytest.mark.skipif(not _facenet_here(), reason="CSIM's FaceNet needs opencv-python-headless 5.0.0.93 and "
                                                "`dgnerf assets fetch --only facenet` (the preprocess extra)")
def test_real_facenet_csim_on_the_builtin_heads(tiny_set):
    from dgnerf.data import HeadDataset

    ds = HeadDataset(tiny_set)
    it = [ds[i] for i in (0, 1, 9)]  # p0000 frames 0 and 1, p0003 frame 0
    img = torch.stack([x["image"] for x in it])
    msk = torch.stack([x["mask"] for x in it])
    emb = metrics.facenet_embedder()
    assert "FaceNet" in emb.name
    same = metrics.csim(img, img, msk, embedder=emb)
    assert torch.allclose(same, torch.ones(3), atol=1e-4)
    # another person in the same crop window: less similar than the identical image
    other = metrics.csim(img[[2, 2]], img[[0, 1]], msk[[0, 1]], embedder=emb)
    assert torch.all(other < 0.99) and torch.all(other > -1)
