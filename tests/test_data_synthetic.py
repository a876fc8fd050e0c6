"""The built-in procedural head set: deterministic bytes, split by person, codes as documented."""
import filecmp
import os

import numpy as np
import pytest
import torch

from dgnerf.data import HeadDataset, check_dataset
from dgnerf.data import synthetic as S
from dgnerf.errors import DgnerfError


def _files(root):
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in fs]
    return sorted(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "a"
    info = S.build_synthetic_dataset(root, size="tiny", seed=7, preview=True)
    return root, info


def test_same_seed_same_bytes(tiny, tmp_path):
    root, _ = tiny
    S.build_synthetic_dataset(tmp_path / "b", size="tiny", seed=7, preview=True)
    assert _files(root) == _files(tmp_path / "b")
    for f in _files(root):
        assert filecmp.cmp(root / f, tmp_path / "b" / f, shallow=False), f
    S.build_synthetic_dataset(tmp_path / "c", size="tiny", seed=8)
    assert not filecmp.cmp(root / "images/000000.png", tmp_path / "c" / "images/000000.png", shallow=False)


def test_valid_and_split_by_person(tiny):
    root, info = tiny
    assert check_dataset(root) == []
    assert os.path.isfile(info["preview"])
    tr, te = HeadDataset(root, split="train"), HeadDataset(root, split="test")
    assert len(tr) == 9 and len(te) == 3
    assert set(tr.split_persons).isdisjoint(te.split_persons) and len(te.split_persons) == 1
    train_people = {int(tr[i]["person"]) for i in range(len(tr))}
    assert {int(te[i]["person"]) for i in range(len(te))}.isdisjoint(train_people)


def test_images_masks_and_codes(tiny):
    root, _ = tiny
    ds = HeadDataset(root)
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        m = it["mask"][0]
        assert 0.15 < m.mean() < 0.95  # a head fills a good part of the frame
        assert torch.all(it["image"][:, m == 0] == 1.0)  # white background outside the mask
        assert abs(it["identity"].norm().item() - 1) < 1e-5
        assert it["expression"].shape == (46,) and it["gaze"].shape == (2,)
    by_person = {}
    for it in items:
        by_person.setdefault(int(it["person"]), []).append(it)
    ids = [v[0]["identity"] for v in by_person.values()]
    for v in by_person.values():
        assert all(torch.equal(x["identity"], v[0]["identity"]) for x in v)
    cos = torch.stack(ids) @ torch.stack(ids).T
    assert (cos - torch.eye(len(ids))).abs().max() < 0.9  # different people, different codes
    # the stored basis maps codes back to the expression parameters (orthonormal columns)
    B = ds.expression_basis()["basis"]
    params = torch.stack([it["expression"] for it in items]) @ B
    assert torch.allclose(params @ B.T, torch.stack([it["expression"] for it in items]), atol=1e-5)
    assert torch.allclose(params[:, 6:8], torch.stack([it["gaze"] for it in items]), atol=1e-5)
    assert params[:, 0].min() >= -1e-5 and params[:, 0].max() <= 1 + 1e-5  # jaw opening in [0, 1]


def test_person_identity_independent_of_set_size():
    a = S.identity_code(S.sample_identity(np.random.default_rng([3, 1, 0])))
    b = S.identity_code(S.sample_identity(np.random.default_rng([3, 1, 0])))
    assert np.array_equal(a, b)


def test_expression_changes_the_image():
    p = S.sample_identity(np.random.default_rng(0))
    c2w = S.pose_c2w(0, 0, 0, 4.6)[None]
    K = np.array([[80.0, 80.0, 24.0, 24.0]])
    neutral = np.zeros(len(S.EXPRESSION_PARAMS))
    open_mouth = neutral.copy()
    open_mouth[0] = 1.0
    a, ma = S.render_frames([S.frame_params(p, neutral)], c2w, K, 48, 48)
    b, mb = S.render_frames([S.frame_params(p, open_mouth)], c2w, K, 48, 48)
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 1000


def test_bad_arguments(tmp_path):
    with pytest.raises(DgnerfError, match="size"):
        S.build_synthetic_dataset(tmp_path / "x", size="huge")
    with pytest.raises(DgnerfError, match="test_persons"):
        S.build_synthetic_dataset(tmp_path / "x", size="tiny", test_persons=4)


def test_supersample_gives_soft_mask_edges():
    p = S.sample_identity(np.random.default_rng(1))
    c2w = S.pose_c2w(20, 5, 0, 4.6)[None]
    K = np.array([[60.0, 60.0, 16.0, 16.0]])
    fp = [S.frame_params(p, np.zeros(len(S.EXPRESSION_PARAMS)))]
    _, hard = S.render_frames(fp, c2w, K, 32, 32)
    rgb, soft = S.render_frames(fp, c2w, K, 32, 32, supersample=2)
    assert set(np.unique(hard)) <= {0, 255}
    assert ((soft > 0) & (soft < 255)).sum() > 20 and rgb.shape == (1, 32, 32, 3)
    assert np.abs(soft.astype(int) - hard.astype(int)).mean() < 20


def test_face_crop_camera_levels_the_eyes():
    p = S.sample_identity(np.random.default_rng(2))
    fp = S.frame_params(p, np.zeros(len(S.EXPRESSION_PARAMS)))
    c2w = S.pose_c2w(20, -10, 9, 4.6)
    K = np.array([200.0, 200.0, 32.0, 32.0])
    m, k = S.face_crop_camera(fp, c2w, K, size=160)
    from dgnerf.data import rotation_problem

    assert rotation_problem(m) is None and np.allclose(m[:3, 3], c2w[:3, 3])
    eyes = np.array([fp["eye_c"], fp["eye_c"] * np.array([-1, 1, 1])]) * np.array([1.0, -1.0, -1.0])
    cam = (eyes - m[:3, 3]) @ m[:3, :3]
    uv = np.stack([k[0] * cam[:, 0] / cam[:, 2] + k[2], k[1] * cam[:, 1] / cam[:, 2] + k[3]], -1)
    assert abs(uv[0, 1] - uv[1, 1]) < 1e-6 and ((uv > 20) & (uv < 140)).all()


def _facenet_ready():
    try:
        import cv2  # noqa: F401

        from dgnerf.assets import have

        return have("facenet")
    except Exception:
        return False


@pytest.mark.skipif(not _facenet_ready(), reason="needs opencv-python-headless 5 and the facenet asset")
def test_facenet_identity_codes(tmp_path):
    S.build_synthetic_dataset(tmp_path / "f", size="tiny", seed=0, identity="facenet")
    ds = HeadDataset(tmp_path / "f")
    z = torch.stack([ds[i]["identity"] for i in range(len(ds))])
    person = torch.stack([ds[i]["person"] for i in range(len(ds))])
    cos = z @ z.T
    same = (person[:, None] == person[None]) & ~torch.eye(len(ds), dtype=torch.bool)
    assert cos[same].mean() > cos[person[:, None] != person[None]].mean() + 0.1


def test_cli_build_and_check(tmp_path, capsys):
    from dgnerf.cli import main

    out = tmp_path / "cli"
    assert main(["dataset", "build-synthetic", "--out", str(out), "--size", "tiny", "--seed", "2",
                 "--persons", "3", "--frames-per-person", "2", "--test-persons", "1", "--resolution", "24", "--preview"]) == 0
    assert "6 frames of 3 persons (1 held out for test) at 24px" in capsys.readouterr().out
    assert (out / "preview.png").is_file()
    assert main(["dataset", "check", str(out)]) == 0
    assert main(["dataset", "build-synthetic", "--out", str(out), "--size", "tiny"]) == 2  # not empty, no --overwrite
    assert "not empty" in capsys.readouterr().err
