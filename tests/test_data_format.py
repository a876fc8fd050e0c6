"""Dataset format: writer/reader round trip, and check_dataset / HeadDataset / `dgnerf dataset check` catch
each kind of defect, naming the file."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from dgnerf.camera import look_at, pixel_rays
from dgnerf.data import DatasetWriter, HeadDataset, check_dataset
from dgnerf.errors import DgnerfError

H, W, E = 12, 16, 46


def _frame(rng, i):
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = (rng.random((H, W)) > 0.4).astype(np.uint8) * 255
    c2w = look_at(rng.normal(size=3) * 0.3 + np.array([0, 0, -4.0]), dtype=torch.float64)[0].numpy()
    K = np.array([20.0 + i, 21.0, W / 2, H / 2])
    return img, mask, c2w, K, rng.normal(size=E).astype(np.float32), rng.normal(size=512).astype(np.float32)


@pytest.fixture
def good_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "good"
    frames = []
    with DatasetWriter(root, (H, W), expression_dim=E, gaze_dim=2, head_radius=1.4, background=[1, 1, 1]) as w:
        w.set_expression_basis({"basis": rng.normal(size=(E, 7)).astype(np.float32)}, {"kind": "test"})
        for i in range(4):
            f = _frame(rng, i)
            person, split = ("alice", "train") if i < 2 else (("bob", "train") if i == 2 else ("carol", "test"))
            gaze = rng.normal(size=2).astype(np.float32)
            w.add_frame(*f, person=person, split=split, gaze=gaze, source=f"clip#{i}")
            frames.append(f + (person, split, gaze))
    return root, frames


def test_round_trip(good_set):
    root, frames = good_set
    assert check_dataset(root) == []
    ds = HeadDataset(root)
    assert len(ds) == 4 and ds.persons == ["alice", "bob", "carol"] and ds.head_radius == 1.4
    for i, (img, mask, c2w, K, e, z, person, split, gaze) in enumerate(frames):
        it = ds[i]
        assert it["image"].shape == (3, H, W) and it["image"].dtype == torch.float32
        assert torch.equal(it["image"], torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        assert torch.equal(it["mask"], torch.from_numpy(mask)[None].float() / 255)
        assert torch.allclose(it["c2w"], torch.from_numpy(c2w).float())
        assert torch.equal(it["intrinsics"], torch.from_numpy(K).float())
        assert torch.equal(it["expression"], torch.from_numpy(e)) and torch.equal(it["identity"], torch.from_numpy(z))
        assert torch.equal(it["gaze"], torch.from_numpy(gaze))
        assert it["person"].item() == ds.persons.index(person) and it["index"].item() == i
    test = HeadDataset(root, split="test")
    assert len(test) == 1 and test[0]["person"].item() == 2 and test.split_persons == ["carol"]
    assert len(HeadDataset(root, split="train")) == 3
    assert ds.expression_basis()["basis"].shape == (E, 7) and ds.expression_basis_metadata() == {"kind": "test"}
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, H, W)


def test_npz_arrays_and_float_inputs(tmp_path):
    rng = np.random.default_rng(1)
    with DatasetWriter(tmp_path / "n", 8, expression_dim=3, arrays="npz") as w:
        w.add_frame(torch.rand(3, 8, 8), torch.ones(8, 8, dtype=torch.bool), torch.eye(4), (5, 5, 4, 4), torch.zeros(3),
                    rng.normal(size=512), person="x")
    assert check_dataset(tmp_path / "n") == []
    it = HeadDataset(tmp_path / "n")[0]
    assert it["mask"].min() == 1 and it["expression"].shape == (3,)


def test_writer_refuses_bad_frames(tmp_path):
    rng = np.random.default_rng(2)
    w = DatasetWriter(tmp_path / "w", (H, W))
    img, mask, c2w, K, e, z = _frame(rng, 0)
    with pytest.raises(DgnerfError, match="expected height x width 12x16"):
        w.add_frame(img[:8], mask, c2w, K, e, z, person="a")
    with pytest.raises(DgnerfError, match="expression: expected shape \\[46\\], got \\[40\\]"):
        w.add_frame(img, mask, c2w, K, e[:40], z, person="a")
    with pytest.raises(DgnerfError, match="NaN"):
        w.add_frame(img, mask, c2w, K, e, np.full(512, np.nan), person="a")
    bad = c2w.copy()
    bad[:3, 0] *= -1
    with pytest.raises(DgnerfError, match="not a rotation"):
        w.add_frame(img, mask, bad, K, e, z, person="a")
    w.add_frame(img, mask, c2w, K, e, z, person="a", split="train")
    with pytest.raises(DgnerfError, match="splits by person"):
        w.add_frame(img, mask, c2w, K, e, z, person="a", split="test")
    w.close()
    with pytest.raises(DgnerfError, match="not empty"):
        DatasetWriter(tmp_path / "w", (H, W))


def _rewrite_arrays(root, fn):
    path = os.path.join(root, "frames.safetensors")
    arrays = dict(load_file(path))
    fn(arrays)
    save_file(arrays, path)


def _break_unreadable(root):
    with open(os.path.join(root, "images/000001.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not a png")
    return "images/000001.png: unreadable image"


def _break_truncated(root):
    p = os.path.join(root, "images/000002.png")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    return "images/000002.png: unreadable image"


def _break_missing_mask(root):
    os.remove(os.path.join(root, "masks/000002.png"))
    return "masks/000002.png: missing mask"


def _break_code_length(root):
    _rewrite_arrays(root, lambda a: a.__setitem__("expression", a["expression"][:, :40].copy()))
    return "wrong expression code length"


def _break_identity_length(root):
    _rewrite_arrays(root, lambda a: a.__setitem__("identity", np.zeros((4, 256), np.float32)))
    return "wrong identity code length"


def _break_nan(root):
    def f(a):
        a["identity"] = a["identity"].copy()
        a["identity"][1, 5] = np.nan
    _rewrite_arrays(root, f)
    return "frame 1 (images/000001.png): identity contains NaN"


def _break_scaled_pose(root):
    def f(a):
        a["c2w"] = a["c2w"].copy()
        a["c2w"][3, :3, :3] *= 1.1
    _rewrite_arrays(root, f)
    return "frame 3 (images/000003.png): c2w: pose is not a rotation: max |R^T R - I|"


def _break_reflection(root):
    def f(a):
        a["c2w"] = a["c2w"].copy()
        a["c2w"][0, :3, 0] *= -1
    _rewrite_arrays(root, f)
    return "frame 0 (images/000000.png): c2w: pose is not a rotation: det R = -1"


def _break_image_size(root):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(os.path.join(root, "images/000003.png"))
    return "images/000003.png: wrong image size: expected 12x16"


def _break_mask_size(root):
    from PIL import Image

    Image.new("L", (W, H + 1)).save(os.path.join(root, "masks/000000.png"))
    return "masks/000000.png: wrong mask size"


def _break_manifest(root):
    p = os.path.join(root, "manifest.json")
    m = json.load(open(p))
    m["frames"][0]["person"] = "nobody"
    json.dump(m, open(p, "w"))
    return "person 'nobody' is not in 'persons'"


def _break_no_manifest(root):
    os.remove(os.path.join(root, "manifest.json"))
    return "manifest.json: missing"


@pytest.mark.parametrize(
    "breaker",
    [_break_unreadable, _break_truncated, _break_missing_mask, _break_code_length, _break_identity_length, _break_nan,
     _break_scaled_pose, _break_reflection, _break_image_size, _break_mask_size, _break_manifest, _break_no_manifest],
    ids=lambda f: f.__name__[7:],
)
def test_check_catches_defect(good_set, tmp_path, breaker, capsys):
    src, _ = good_set
    root = tmp_path / "bad"
    shutil.copytree(src, root)
    expected = breaker(str(root))
    problems = check_dataset(root)
    assert any(expected in p for p in problems), problems
    with pytest.raises(DgnerfError) as ei:
        HeadDataset(root, check="full")
    assert expected in str(ei.value)
    from dgnerf.cli import main

    rc = main(["dataset", "check", str(root)])
    out = capsys.readouterr()
    assert rc == 1 and expected in out.out


def test_header_level_loader_catches_garbage(good_set, tmp_path):
    src, _ = good_set
    root = tmp_path / "bad"
    shutil.copytree(src, root)
    msg = _break_unreadable(str(root))
    with pytest.raises(DgnerfError, match=msg):
        HeadDataset(root)  # default check level opens every image


def test_check_ok_cli(good_set, capsys):
    from dgnerf.cli import main

    root, _ = good_set
    assert main(["dataset", "check", str(root)]) == 0
    assert "ok: 4 frames, 3 persons" in capsys.readouterr().out


def test_pixel_rays_convention():
    c2w = look_at((0.0, 0.0, -4.0), dtype=torch.float64)[0]
    assert torch.allclose(c2w, torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4.0], [0, 0, 0, 1]], dtype=torch.float64))
    K = torch.tensor([10.0, 10.0, 2.0, 2.0], dtype=torch.float64)
    o, d = pixel_rays(c2w, K, 4, 4)
    # pixel centres at half-integers: the 2x2 centre pixels are symmetric about the axis
    assert torch.allclose(d[1, 1, :2], -d[2, 2, :2]) and torch.allclose(d[1, 2, 0], -d[1, 1, 0])
    assert (d[..., 2] > 0).all() and torch.allclose(o[0, 0], torch.tensor([0, 0, -4.0], dtype=torch.float64))
    assert d[0, 3, 0] > 0 and d[3, 0, 1] > 0  # image right = +x, image down = +y
