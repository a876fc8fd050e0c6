"""`dgnerf demo`: the paper's whole story on the built-in set, on a CPU, in about ten minutes.

1. builds the small built-in multi-identity head set (procedural heads, held-out people),
2. trains a small config on it for a fixed number of steps (reproducible: on a CPU every op the step uses is
   deterministic for a given thread count, so the same command gives the same numbers and pictures on the same
   machine, only later on a busy one; torch's deterministic mode is not needed and would cost 2.5x per step),
3. writes out/: renders of training and held-out people beside their ground truth, an orbit video of a
   training person, identity and expression interpolation grids, an unseen person fitted from ONE image
   (before / after, and that person's other frames), that person driven by another person's expressions and
   poses (a video), the loss curve, and metrics.json.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from dgnerf.apps.drive import drive_frames, driver_from_dataset
from dgnerf.apps.fit import FitConfig, fit_person, render, targets_from_dataset
from dgnerf.apps.interp import interpolation_grid
from dgnerf.camera import orbit_c2w
from dgnerf.data import HeadDataset, check_dataset
from dgnerf.data import synthetic
from dgnerf.data.synthetic import build_synthetic_dataset
from dgnerf.errors import DgnerfError
from dgnerf.media import grid, loss_curve_png, save_png, to_uint8, write_video
from dgnerf.metrics import masked_l1, masked_psnr
from dgnerf.model.checkpoint import load_checkpoint
from dgnerf.model.config import PRESETS
from dgnerf.train import TrainConfig, train
from dgnerf.train.trainer import FrameStore, training_precision

# Small enough to train on 2 CPU cores in minutes, same structure as the paper's model (docs/convergence.md has
# the study that chose it): a 32x32x64 feature map rendered through one 2x renderer block to 64x64 images, 16
# samples per ray, a 2x64 field MLP fed by an identity-mixed hash-grid position encoding (16 tables of 2^11 rows
# per level, combined per person from the identity code: the same parameters and cost per step as one 2^15 table;
# +1.3 dB on training people after the demo's 2400 steps, -0.3 dB on unseen ones, docs/convergence.md round 3).
# Two hidden layers instead of three: 0.85x the cost of a step, +0.1 dB on training people and +0.85 dB on the
# one-image fit's other frames, -0.35 dB on unseen people from their codes (docs/convergence.md round 6).
DEMO_MODEL = dict(PRESETS["small"], position_encoding="hashgrid", hash_levels=12, hash_table_size=2**11,
                  hash_features=2, hash_base_resolution=8, hash_finest_resolution=256, hash_identity_bases=16,
                  feature_size=32, renderer_channels=(64,), n_samples=16, mlp_depth=2, mlp_width=64, skip_layer=1,
                  dir_width=32)
DEMO_DESCRIPTION = ("identity-mixed hash-grid position encoding (12 levels, 16 tables of 2^11 x 2 mixed per person, "
                    "8..256 cells), 32x32x64 feature map, 2x64 MLP, 16 samples per ray, one renderer block, 64x64 images")
# The demo's training settings (TrainConfig fields; data, out, steps and seed come from run_demo). The grid's
# table learns 10x faster than the rest; Adam with a shorter second-moment memory and a tiny epsilon (the grid's
# rows get small, bursty gradients): +0.24 dB on training and +0.37 dB on held-out people at 1000 steps
# (docs/convergence.md, round 4).
DEMO_TRAIN = dict(batch_size=8, lr=8e-3, lr_final=8e-4, lambda_perceptual=0.0, lr_scale={"encoding": 10.0},
                  adam_beta2=0.99, adam_eps=1e-15)
# The built-in set of the demo: many people with few frames each. Held-out people render from their codes only as
# well as the model learned the mapping from identity code to head, which takes many identities (docs/convergence.md:
# 80 people x 4 frames beat 10 x 20 by 3.6-4 dB on held-out people at the same number of steps).
DEMO_DATA = dict(size="small", persons=84, frames_per_person=4, test_persons=4)
# Training steps: a fixed number, so the result does not depend on the machine's speed. Where training runs in bf16
# (a CPU with bf16 matrix units, or CUDA: dgnerf.train.trainer.training_precision) a step costs 0.77x a float32
# one (docs/performance.md), and the demo trains 3200 steps in about the minutes float32 takes for 2400.
DEMO_STEPS = 2400
DEMO_STEPS_BF16 = 3200
DEMO_MINUTES = 8  # training + outputs on a quiet 2-core machine (measured: README, "Demo results")


def demo_steps() -> int:
    """The demo's number of training steps on this machine: DEMO_STEPS_BF16 where it trains in bf16, else DEMO_STEPS."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return DEMO_STEPS_BF16 if training_precision(True, "fast", device) == "bf16" else DEMO_STEPS


# Fitting ONE image of an unseen person: its identity and expression codes and camera (200 steps), then a copy of
# the model fine-tuned on that image with the fitted codes (100 steps). Codes alone stop improving within 100 steps
# at this model size; the fine-tuning step brings the image's detail and also improves the person's other frames
# (docs/convergence.md, "Fitting one image").
DEMO_FIT = FitConfig(iters=200, finetune_iters=100, batch=1)


def make_outputs(run_dir: str, data_dir: str, out_dir: str, log=print) -> dict:
    """Pictures and numbers of a trained run (the demo's out/)."""
    ckpt = os.path.join(run_dir, "checkpoints")
    with open(os.path.join(ckpt, "latest")) as f:
        latest = os.path.join(ckpt, f.read().strip())
    model = load_checkpoint(os.path.join(latest, "model.safetensors"))
    cfg = model.cfg
    train_set = HeadDataset(data_dir, split="train", check="none")
    test_set = HeadDataset(data_dir, split="test", check="none")
    scale = max(1, 128 // cfg.image_size)
    results = {"checkpoint": latest}

    # 1. held-out people: render their frames from their own codes and cameras (no fitting)
    store = FrameStore(test_set, cfg.image_size, cfg.feature_size, 1.0, progress=False)
    b = store.batch(list(range(len(store))), "cpu")
    with torch.no_grad():
        pred = render(model, b["identity"], b["expression"], b["c2w"], b["intrinsics"])
    psnr = masked_psnr(pred, b["image"], b["mask"])
    l1 = masked_l1(pred, b["image"], b["mask"])
    results["heldout"] = {"frames": len(store), "persons": test_set.split_persons,
                          "masked_psnr_db": round(float(psnr.mean()), 3), "masked_l1": round(float(l1.mean()), 4)}
    n = min(8, len(store))
    pick = [int(i) for i in torch.linspace(0, len(store) - 1, n).round()]
    tiles = [to_uint8(b["image"][i]) for i in pick] + [to_uint8(pred[i]) for i in pick]
    save_png(os.path.join(out_dir, "heldout_renders.png"), grid(tiles, cols=n, scale=scale))

    # the same on training frames, for comparison
    tstore = FrameStore(train_set, cfg.image_size, cfg.feature_size, 1.0, progress=False)
    idx = [int(i) for i in torch.linspace(0, len(tstore) - 1, min(48, len(tstore))).round()]
    tb = tstore.batch(idx, "cpu")
    with torch.no_grad():
        tpred = render(model, tb["identity"], tb["expression"], tb["c2w"], tb["intrinsics"])
    results["train"] = {"frames": len(idx), "masked_psnr_db": round(float(masked_psnr(tpred, tb["image"], tb["mask"]).mean()), 3)}
    pick = list(range(0, len(idx), max(1, len(idx) // 8)))[:8]
    tiles = [to_uint8(tb["image"][i]) for i in pick] + [to_uint8(tpred[i]) for i in pick]
    save_png(os.path.join(out_dir, "train_renders.png"), grid(tiles, cols=len(pick), scale=scale))

    # cameras for novel views: the training cameras' median distance and focal

    dist = float(tstore.cache["c2w"][:, :3, 3].norm(dim=-1).median()) if tstore.cache is not None else cfg.camera_distance
    K1 = tb["intrinsics"][:1]

    def views(yaws, pitches):
        return torch.cat([orbit_c2w(float(y), float(p), 0.0, dist) for y, p in zip(yaws, pitches)])

    # 2. orbit video of a training person
    p0 = 0
    sel = [j for j, f in enumerate(train_set.frames) if f.person_index == train_set.frames[p0].person_index]
    z0 = train_set.arrays["identity"][sel[0]:sel[0] + 1]
    beta0 = train_set.arrays["expression"][sel].mean(0, keepdim=True)  # an average expression of that person
    n_frames = 48
    t = torch.arange(n_frames) / n_frames * 2 * math.pi
    cams = views(30 * torch.sin(t), 10 * torch.sin(2 * t))
    with torch.no_grad():
        img = render(model, z0.expand(n_frames, -1), beta0.expand(n_frames, -1), cams, K1.expand(n_frames, -1))
    frames = [to_uint8(x).repeat(scale, 0).repeat(scale, 1) for x in img]
    results["orbit"] = os.path.basename(write_video(frames, os.path.join(out_dir, "orbit_train_person.mp4"), 15.0))

    # 3. identity interpolation: two training people, 7 steps, 3 views (rows), the set's mean expression

    persons = sorted({f.person_index for f in train_set.frames})
    first = {}
    for j, f in enumerate(train_set.frames):
        first.setdefault(f.person_index, j)
    za = train_set.arrays["identity"][first[persons[0]]]
    zb = train_set.arrays["identity"][first[persons[min(len(persons) - 1, 3)]]]
    beta_n = train_set.arrays["expression"].mean(0)
    imgs = interpolation_grid(model, za, zb, beta_n, beta_n, distance=dist, intrinsics=K1)
    save_png(os.path.join(out_dir, "identity_interpolation.png"), grid([to_uint8(x) for x in imgs], cols=7, scale=scale))

    # 4. expression interpolation: one person, from its most closed to its most open mouth when the set's
    # expression basis names the parameters (the built-in set's does), else its two most different codes
    E = train_set.arrays["expression"][sel]
    names = train_set.manifest.get("meta", {}).get("expression_params") or []
    basis = train_set.expression_basis()
    if "jaw_open" in names and basis is not None and basis["basis"].shape == (E.shape[1], len(names)):
        jaw = (E @ basis["basis"])[:, names.index("jaw_open")]
        i, j = int(jaw.argmin()), int(jaw.argmax())
    else:
        i, j = divmod(int(torch.cdist(E, E).argmax()), E.shape[0])
    imgs = interpolation_grid(model, z0, z0, E[i], E[j], yaws=(-20.0, 0.0, 20.0), distance=dist, intrinsics=K1)
    # A fourth row makes small changes visible: |frontal render - its first column| x 4 (black = no change).
    front = imgs[7:14]
    diff = [((x - front[0]).abs() * 4).clamp(0, 1) for x in front]
    # how much the expression moves the frontal image: mean |last - first| over the pixels (0..1 scale)
    results["expression_mean_change"] = round(float((front[-1] - front[0]).abs().mean()), 5)
    truth = _truth_expression_change(train_set, basis, train_set.frames[p0].person_index, E[i], E[j], dist, K1, cfg)
    if truth is not None:  # the same change in the generator's own renders: what a perfect model would show
        results["expression_truth_change"] = round(truth, 5)
    save_png(os.path.join(out_dir, "expression_interpolation.png"),
             grid([to_uint8(x) for x in imgs + diff], cols=7, scale=scale))

    # 5. an unseen person fitted from ONE image, then driven by a training person's expressions and poses
    results["fitted"] = fit_one_image(model, data_dir, out_dir, scale, log=log)

    # 6. loss curve
    series = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            for k in ("loss", "l2", "perceptual"):
                if k in r:
                    series.setdefault(k, []).append((r["step"], r[k]))
    loss_curve_png(os.path.join(out_dir, "loss_curve.png"), series, title="training loss (log scale)")
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def _truth_expression_change(dataset, basis, person_index: int, code_a, code_b, distance: float, intrinsics,
                             cfg) -> float | None:
    """Mean |difference| between the built-in generator's own frontal renders of a person with two expression codes
    (the expression grid's ends), at the model's image size and camera; None for a dataset the generator did not make.
    basis: the dataset's expression basis (dataset.expression_basis(), already read by the caller)."""
    meta = dataset.manifest.get("meta", {})
    if meta.get("generator") != "dgnerf.data.synthetic" or basis is None or "seed" not in meta:
        return None
    params = synthetic.person_parameters(int(meta["seed"]), int(person_index))
    B = basis["basis"].double()
    K = intrinsics[0].double() * (cfg.image_size / cfg.feature_size)  # feature-map pixels -> image pixels
    c2w = orbit_c2w(0.0, 0.0, 0.0, distance).double().numpy()
    imgs = []
    for code in (code_a, code_b):
        e = (code.double() @ B).numpy()
        rgb, _ = synthetic.render_frames([synthetic.frame_params(params, e)], c2w, K[None].numpy(), cfg.image_size,
                                         cfg.image_size, supersample=2)
        imgs.append(torch.from_numpy(rgb[0]).double() / 255)
    return float((imgs[1] - imgs[0]).abs().mean())


def fit_one_image(model, data_dir: str, out_dir: str, scale: int, log=print) -> dict:
    """The paper's fitting from a single image: the first held-out person's most frontal frame. Its identity
    and expression codes and camera are fitted (then, with DEMO_FIT.finetune_iters, a copy of the model); the
    person's other frames are rendered with the fitted identity and their own expression codes and cameras.
    Writes fit_one_image.png and drive_fitted_person.mp4 (a training person drives the fitted one)."""
    cfg = model.cfg
    target = targets_from_dataset(data_dir, cfg, split="test")[0]
    yaw = torch.atan2(target.c2w[:, 0, 2], target.c2w[:, 2, 2]).abs()  # 0 = looking straight at the face
    first = int(yaw.argmin())
    others = [r for r in range(len(target)) if r != first]
    one = target.subset([first])
    res = fit_person(model, one, DEMO_FIT, progress=True)
    fitted = res.model if res.model is not None else model
    rest = target.subset(others)
    with torch.no_grad():
        init_rest = render(model, rest.identity, rest.expression, rest.c2w, rest.intrinsics)
        fit_rest = render(fitted, res.identity.expand(len(rest), -1), rest.expression, rest.c2w, rest.intrinsics)
    psnr_init_rest = masked_psnr(init_rest, rest.image, rest.mask)
    psnr_rest = masked_psnr(fit_rest, rest.image, rest.mask)
    out = {
        "person": target.person, "frame": one.frame_index[0], "seconds": round(res.seconds, 1),
        "iters": DEMO_FIT.iters, "finetune_iters": DEMO_FIT.finetune_iters,
        "encoder_psnr_db": round(float(res.metrics_init["psnr"].mean()), 3),
        "masked_psnr_db": round(float(res.metrics_fit["psnr"].mean()), 3),
        "other_frames": len(rest),
        "other_frames_encoder_psnr_db": round(float(psnr_init_rest.mean()), 3),
        "other_frames_psnr_db": round(float(psnr_rest.mean()), 3),
    }
    log(f"[demo] fitted {target.person} from one image in {res.seconds:.1f} s: {out['encoder_psnr_db']:.2f} -> "
        f"{out['masked_psnr_db']:.2f} dB on it, other frames {out['other_frames_encoder_psnr_db']:.2f} -> "
        f"{out['other_frames_psnr_db']:.2f} dB")
    # Rows: the image (truth, encoder codes, fitted), then the other frames: truth / encoder codes / fitted identity.
    n = min(6, len(rest))
    cols = max(n, 3)
    blank = to_uint8(torch.ones_like(one.image[0]))
    pick = [int(i) for i in torch.linspace(0, len(rest) - 1, n).round()] if n else []
    tiles = [to_uint8(one.image[0]), to_uint8(res.render_init[0]), to_uint8(res.render_fit[0])] + [blank] * (cols - 3)
    for row in (rest.image, init_rest, fit_rest):
        tiles += [to_uint8(row[i]) for i in pick] + [blank] * (cols - n)
    save_png(os.path.join(out_dir, "fit_one_image.png"), grid(tiles, cols=cols, scale=scale))
    # the fitted person driven by a training person's expressions and poses
    train_persons = HeadDataset(data_dir, split="train", check="none").split_persons
    driver = driver_from_dataset(data_dir, cfg, person=train_persons[0], split="train")
    frames = drive_frames(fitted, res.identity, driver, scale=scale)
    out["drive_video"] = os.path.basename(write_video(frames, os.path.join(out_dir, "drive_fitted_person.mp4"), 8.0))
    out["driver"] = driver.person
    return out


def _same_set(data: str, spec: dict) -> bool:
    """A complete built-in set made with these settings is already in `data` (an older demo's set is rebuilt)."""
    path = os.path.join(data, "manifest.json")
    if not os.path.exists(path) or check_dataset(data, level="header"):
        return False
    with open(path) as f:
        meta = json.load(f).get("meta", {})
    return all(meta.get(k) == v for k, v in (("size", spec["size"]), ("seed", spec["seed"]), ("persons", spec["persons"]),
                                             ("frames_per_person", spec["frames_per_person"]),
                                             ("test_persons", spec["test_persons"])))


def run_demo(out: str = "out", steps: int | None = None, size: str = "small", seed: int = 0,
             lambda_perceptual: float = 0.0, minutes: float | None = None, log=print) -> dict:
    """Build the built-in set, train DEMO_MODEL for `steps` (default `demo_steps()`) and write out/. `minutes`
    optionally caps the training time (then the result depends on the machine's speed)."""
    steps = demo_steps() if steps is None else steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        raise DgnerfError(f"--steps: expected a positive number of training steps, got {steps!r}")
    if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise DgnerfError(f"--minutes: expected a positive number of minutes (or none: no time cap), got {minutes!r}")
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "data")
    spec = dict(DEMO_DATA, size=size, seed=seed)
    if _same_set(data, spec):
        log(f"[demo] 1/3 using the built-in head set already in {data}")
    else:
        log(f"[demo] 1/3 building the built-in head set ({spec['persons']} people x {spec['frames_per_person']} frames, "
            f"{spec['test_persons']} held out) in {data}")
        build_synthetic_dataset(data, **spec, overwrite=True, progress=True)
    run_dir = os.path.join(out, "run")
    log(f"[demo] 2/3 training {steps} steps on {torch.get_num_threads()} CPU threads -> {run_dir} "
        f"(model: {DEMO_DESCRIPTION}; about {DEMO_MINUTES} minutes on a quiet 2-core machine)")
    cfg = TrainConfig(data=data, out=run_dir, model=dict(DEMO_MODEL), **dict(DEMO_TRAIN, lambda_perceptual=lambda_perceptual),
                      steps=steps, checkpoint_every=250, sample_every=500, log_every=10, seed=seed, max_minutes=minutes)
    result = train(cfg)
    log(f"[demo] trained {result['step']} steps in {result['precision']}, last loss "
        f"{result['last'].get('loss', float('nan')):.4f}")
    log(f"[demo] 3/3 writing pictures and metrics to {out}")
    res = make_outputs(run_dir, data, out, log=log)
    res["train_steps"] = result["step"]
    res["model"] = DEMO_DESCRIPTION
    res["precision"] = result["precision"]  # bf16 where the CPU has bf16 matrix units (dgnerf.threads.cpu_bf16_fast)
    res["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(res, f, indent=1)
    log(f"[demo] done in {res['seconds']:.0f} s: training people {res['train']['masked_psnr_db']:.2f} dB, held-out "
        f"{res['heldout']['masked_psnr_db']:.2f} dB (encoder codes), fitted from one image "
        f"{res['fitted']['masked_psnr_db']:.2f} dB (other frames {res['fitted']['other_frames_psnr_db']:.2f} dB); "
        f"see {out}/")
    return res
