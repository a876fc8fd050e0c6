"""The world every fuzz case starts from: small, valid inputs of every kind the commands read. Built once per
campaign (a few seconds); cases never write into it (the worker checks that after every case)."""
from __future__ import annotations

import json
import math
import os

import numpy as np

# The tiny model of the tests (tests/conftest.py TINY_MODEL), with the tiny set's code sizes.
TINY = dict(pos_freqs=4, dir_freqs=2, mlp_depth=4, mlp_width=32, skip_layer=2, dir_width=16, feature_dim=24,
            feature_size=8, n_samples=12, renderer_channels=[16, 8], image_size=32)


def fake_geometry() -> dict:
    """A face-shaped mesh that passes dgnerf.assets.check_face_geometry (468 vertices in cm, 898 triangles)."""
    r = np.random.default_rng(0)
    th = r.uniform(0.3, math.pi - 0.3, 468)
    ph = r.uniform(0.2, math.pi - 0.2, 468)
    v = np.stack([7.7 * np.cos(ph) * np.sin(th), 9.0 * np.cos(th), 7.5 * np.sin(ph) * np.sin(th) - 1.0], 1)
    ids = np.arange(0, 468, 15)
    return {"vertices": v.astype(np.float32), "uv": np.zeros((468, 2), np.float32),
            "triangles": r.integers(0, 468, (898, 3)).astype(np.int32), "procrustes_ids": ids.astype(np.int32),
            "procrustes_weights": (np.ones(len(ids)) / len(ids)).astype(np.float32),
            "input_source": np.zeros(1, np.int32)}


def fake_faces(static):
    """A detector that sees one frontal face in every picture (MediaPipe is not needed to test file handling)."""
    from tests.test_preprocess_pipeline import landmarks

    def detect(rgb):
        return [landmarks(0.0, hw=rgb.shape[:2])]
    return detect


def fake_segment(rgb):
    return np.ones(rgb.shape[:2], np.float32)


def fake_encoder(rgb, uv):
    v = np.ones(512, np.float32)
    return v / np.linalg.norm(v)


def build_world(root: str) -> dict:
    """Writes the world into `root` (once: a finished world has world.json) and returns its paths."""
    info_path = os.path.join(root, "world.json")
    if os.path.isfile(info_path):
        with open(info_path) as f:
            return json.load(f)
    import torch
    from PIL import Image

    from dgnerf.data.synthetic import build_synthetic_dataset
    from dgnerf.media import write_video
    from dgnerf.model import HeadConfig, HeadModel
    from dgnerf.model.checkpoint import save_checkpoint
    from dgnerf.model.prior import apply_head_prior
    from dgnerf.train import TrainConfig, Trainer

    os.makedirs(root, exist_ok=True)
    w = {"root": root}
    w["data"] = os.path.join(root, "data")
    build_synthetic_dataset(w["data"], size="tiny", seed=3)
    torch.manual_seed(0)
    model = apply_head_prior(HeadModel(HeadConfig(**dict(TINY, identity_dim=512, expression_dim=46))), n_dirs=32)
    w["ckpt"] = save_checkpoint(os.path.join(root, "ckpt.safetensors"), model)
    gaze = HeadModel(HeadConfig(**dict(TINY, identity_dim=512, expression_dim=46, gaze_dim=2, gaze_mean=[0.0, 0.0],
                                       gaze_std=[1.0, 1.0])))
    w["gaze_ckpt"] = save_checkpoint(os.path.join(root, "gaze.safetensors"), gaze)
    w["run"] = os.path.join(root, "run")
    Trainer(TrainConfig(data=w["data"], out=w["run"], model=dict(TINY), batch_size=2, steps=2, lambda_perceptual=0.0,
                        checkpoint_every=1, sample_every=1000, log_every=1, progress=False, tensorboard=False,
                        device="cpu")).fit()
    w["step"] = os.path.join(w["run"], "checkpoints", "step_00000002")
    w["id_npy"] = os.path.join(root, "id.npy")
    np.save(w["id_npy"], np.random.default_rng(1).normal(size=512).astype(np.float32))
    w["expr_txt"] = os.path.join(root, "expr.txt")
    with open(w["expr_txt"], "w") as f:
        f.write(" ".join(f"{v:.4f}" for v in np.random.default_rng(2).normal(size=46)))
    w["id_st"] = os.path.join(root, "id.safetensors")
    from safetensors.numpy import save_file

    save_file({"identity": np.random.default_rng(3).normal(size=512).astype(np.float32)}, w["id_st"])
    # media for preprocess (the worker puts fake detectors in place of MediaPipe for these)
    img = np.full((120, 160, 3), 90, np.uint8)
    img[40:80, 60:100] = 200
    w["still"] = os.path.join(root, "face.png")
    Image.fromarray(img).save(w["still"])
    w["photos"] = os.path.join(root, "photos")
    os.makedirs(w["photos"])
    for i in range(3):
        Image.fromarray(np.roll(img, i * 3, 1)).save(os.path.join(w["photos"], f"p{i}.png"))
    w["video"] = os.path.join(root, "clip.mp4")
    write_video([np.roll(img, i, 1) for i in range(6)], w["video"], 10.0)
    # the user's own tracking (preprocess import)
    w["track"] = os.path.join(root, "track", "TRACK.json")
    os.makedirs(os.path.dirname(w["track"]))
    frames = []
    for i in range(3):
        Image.fromarray(img).save(os.path.join(root, "track", f"f{i}.png"))
        frames.append({"image": f"f{i}.png", "c2w": np.eye(4).tolist(), "intrinsics": [150.0, 150.0, 80.0, 60.0],
                       "expression": [0.1 * i, 0.0, 0.2], "identity": [1.0] + [0.0] * 15})
    for f in frames:
        f["c2w"][2][3] = -4.0
    with open(w["track"], "w") as f:
        json.dump({"frames": frames}, f)
    # a cache with the face geometry (preprocess) and nothing else (no VGG16: the fresh-cache case)
    w["cache"] = os.path.join(root, "cache")
    os.makedirs(w["cache"])
    np.savez(os.path.join(w["cache"], "face_geometry.npz"), **fake_geometry())
    w["config"] = os.path.join(root, "train_config.json")
    with open(w["config"], "w") as f:
        json.dump({"steps": 1, "batch_size": 2, "lambda_perceptual": 0.0, "model": TINY, "device": "cpu",
                   "progress": False, "tensorboard": False}, f)
    # a preprocessed set (the real pipeline with the fake detectors): an expression basis, a one-person set
    from dgnerf.preprocess.pipeline import Options, run

    w["pre"] = os.path.join(root, "pre")
    run([w["photos"]], w["pre"], Options(resolution=32, progress=False, expression_dim=4), faces_fn_factory=fake_faces,
        segment_fn=fake_segment, encoder=fake_encoder, geometry=fake_geometry(), log=lambda *a: None)
    w["basis"] = os.path.join(w["pre"], "expression_basis.safetensors")
    with open(info_path, "w") as f:
        json.dump(w, f, indent=1)
    return w
