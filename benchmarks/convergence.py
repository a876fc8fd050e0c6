"""Convergence study: quality against training steps and seconds, at the demo's scale (docs/convergence.md).

    python -m benchmarks.convergence --out /tmp/study --runs demo-frequency demo-hashgrid --steps 1500
    python -m benchmarks.convergence --out /tmp/study --table       # the Markdown table of every run so far

Each run is a named variant of the demo's training (RUNS below: model, training and data overrides). It trains
on the built-in set with the demo's trainer, and at the evaluation steps renders (fast path, fp32) a fixed
subset of training frames and every held-out frame from their own codes and cameras; it records masked PSNR of
both, the training seconds so far (evaluation excluded) and the machine's load, one JSON line per evaluation in
<out>/<run>.jsonl, and writes <out>/<run>.png (rows: training truth, training render, held-out truth, held-out
render) at the end. Seconds are only comparable between runs on the same machine under the same load: the
table gives steps first.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from dgnerf import threads
from dgnerf.apps.demo import DEMO_DATA, DEMO_MODEL, DEMO_TRAIN
from dgnerf.apps.fit import render
from dgnerf.data import HeadDataset
from dgnerf.data.synthetic import build_synthetic_dataset
from dgnerf.media import grid, save_png, to_uint8
from dgnerf.metrics import masked_psnr
from dgnerf.model.config import PRESETS
from dgnerf.train import TrainConfig, Trainer
from dgnerf.train.trainer import FrameStore

# A hash grid sized for the demo: 12 levels from 8 to 256 cells across the head's cube, 2^15 rows of 2 features.
HASHGRID = dict(position_encoding="hashgrid", hash_levels=12, hash_table_size=2**15, hash_features=2,
                hash_base_resolution=8, hash_finest_resolution=256)
# Every run starts from the small preset with the paper's frequency encoding and one learning rate (the demo's
# settings before this study); the "demo" row is what the demo uses now.
BASE_MODEL = PRESETS["small"]
BASE_TRAIN = dict(batch_size=8, lr=2e-3, lr_final=2e-4, lambda_perceptual=0.0)
# Many people, few frames each: 320 training frames (the small set: 200) of 8x the identities.
MANY = {"persons": 84, "frames": 4, "test_persons": 4}
# A 3 x 64 field MLP (skip at layer 1) with a 32-wide direction layer.
W64 = dict(mlp_depth=3, mlp_width=64, skip_layer=1, dir_width=32)
# The previous demo's model (one shared 2^15-row table per level): round 3's runs change it one thing at a time.
PLAIN_GRID = {k: v for k, v in dict(DEMO_MODEL, hash_table_size=2**15).items()
              if BASE_MODEL.get(k) != v and k != "hash_identity_bases"}
DEMO_SET = {"persons": DEMO_DATA["persons"], "frames": DEMO_DATA["frames_per_person"],
            "test_persons": DEMO_DATA["test_persons"]}
# The demo's model as overrides of BASE_MODEL.
DEMO_OVERRIDES = {k: v for k, v in DEMO_MODEL.items() if BASE_MODEL.get(k) != v}
# The same model with the paper's frequency encoding in place of the hash grid.
DEMO_FREQUENCY = dict({k: v for k, v in DEMO_OVERRIDES.items() if not k.startswith("hash")},
                      position_encoding="frequency")
# Round 3's training settings (the demo's before round 4 gave Adam its own beta2 and epsilon): its rows keep them.
R3_TRAIN = {k: v for k, v in DEMO_TRAIN.items() if not k.startswith("adam_")}
# name -> (model overrides, train overrides, data overrides, what the row changes)
RUNS = {
    "demo": (DEMO_OVERRIDES, DEMO_TRAIN, DEMO_SET,
             "the demo's settings (dgnerf.apps.demo)"),
    "demo-plain-grid": (PLAIN_GRID, R3_TRAIN, DEMO_SET, "the previous demo: one shared hash-grid table of 2^15 rows per level"),
    "demo-frequency": ({}, {}, {}, "the demo's model: frequency encoding (the paper's), one learning rate"),
    "demo-hashgrid": (HASHGRID, {}, {}, "hash-grid encoding, one learning rate"),
    "demo-frequency-2400": (DEMO_FREQUENCY, R3_TRAIN, DEMO_SET,
                            "the demo with the paper's frequency encoding instead of the hash grid"),
    "hashgrid-lr10": (HASHGRID, {"lr_scale": {"encoding": 10.0}}, {}, "hash grid, table learning rate x10"),
    "hashgrid-lr10-renderer3": (HASHGRID, {"lr_scale": {"encoding": 10.0, "renderer": 3.0}}, {},
                                "hash grid, table x10, renderer x3"),
    "one-person-hashgrid-lr10": (HASHGRID, {"lr_scale": {"encoding": 10.0}}, {"persons": 2, "test_persons": 1},
                                 "diagnostic: ONE training person (20 frames), hash grid, table x10"),
    "one-person-frequency": ({}, {}, {"persons": 2, "test_persons": 1}, "diagnostic: ONE training person, frequency"),
    "one-person-hashgrid-fs32": (dict(HASHGRID, feature_size=32, renderer_channels=(64,)), {"lr_scale": {"encoding": 10.0}},
                                 {"persons": 2, "test_persons": 1},
                                 "diagnostic: ONE person, hash grid, 32x32 feature map, one renderer block"),
    "hashgrid-lr10-fs32-s16": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16),
                               {"lr_scale": {"encoding": 10.0}}, {},
                               "hash grid, table x10, 32x32 feature map, one renderer block, 16 samples per ray"),
    "hashgrid-lr10-fs32-s16-w64": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, mlp_depth=3,
                                        mlp_width=64, skip_layer=1, dir_width=32),
                                   {"lr_scale": {"encoding": 10.0}}, {},
                                   "as fs32-s16 with a 3 x 64 MLP (skip at 1), 32-wide direction layer"),
    "hashgrid-lr10-fs32-s16-b4": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16),
                                  {"lr_scale": {"encoding": 10.0}, "batch_size": 4}, {},
                                  "as fs32-s16, batch 4 (the rays of a step: 1.33x the demo's)"),
    "frequency-fs32-s16-b4": (dict(feature_size=32, renderer_channels=(64,), n_samples=16), {"batch_size": 4}, {},
                              "frequency encoding, 32x32 feature map, one renderer block, 16 samples, batch 4"),
    "one-person-hashgrid-s48": (dict(HASHGRID, n_samples=48), {"lr_scale": {"encoding": 10.0}},
                                {"persons": 2, "test_persons": 1}, "diagnostic: ONE person, hash grid, 48 samples per ray"),
    "one-person-hashgrid-lr5e-3": (HASHGRID, {"lr": 5e-3, "lr_final": 5e-4, "lr_scale": {"encoding": 10.0}},
                                   {"persons": 2, "test_persons": 1}, "diagnostic: ONE person, hash grid, lr 5e-3 -> 5e-4"),
    "hashgrid-lr10-idgain": (dict(HASHGRID, identity_gain=8.0, expression_gain=4.0), {"lr_scale": {"encoding": 10.0}},
                             {}, "hash grid, table x10, codes x8 (identity) / x4 (expression)"),
    "hashgrid-lr10-p80": (HASHGRID, {"lr_scale": {"encoding": 10.0}}, MANY,
                          "hash grid, table x10; data: 80 training people x 4 frames (+4 held out)"),
    "hashgrid-lr10-fs32-s16-w64-p80": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, **W64),
                                       {"lr_scale": {"encoding": 10.0}}, MANY,
                                       "as p80, 32x32 feature map, one renderer block, 16 samples, 3x64 MLP"),
    "hashgrid-lr10-fs32-s16-w64-b8": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, **W64),
                                      {"lr_scale": {"encoding": 10.0}}, {},
                                      "hash grid x10, 32x32 feature map, one renderer block, 16 samples, 3x64 MLP, batch 8"),
    "p80-fs32-hash64": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, hash_levels=8,
                             hash_finest_resolution=64, **W64), {"lr_scale": {"encoding": 10.0}}, MANY,
                        "as fs32-s16-w64-p80, hash grid of 8 levels up to 64 cells (fewer collisions)"),
    "p80-fs32-lr4e-3": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, **W64),
                        {"lr": 4e-3, "lr_final": 4e-4, "lr_scale": {"encoding": 10.0}}, MANY,
                        "as fs32-s16-w64-p80, learning rate 4e-3 -> 4e-4"),
    "p80-fs32-s12-w96": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=12), {"lr_scale": {"encoding": 10.0}},
                         MANY, "as p80, 32x32 feature map, one renderer block, 12 samples, the small preset's 4x96 MLP"),
    "p80-fs32-lr8e-3": (dict(HASHGRID, feature_size=32, renderer_channels=(64,), n_samples=16, **W64),
                        {"lr": 8e-3, "lr_final": 8e-4, "lr_scale": {"encoding": 10.0}}, MANY,
                        "as fs32-s16-w64-p80, learning rate 8e-3 -> 8e-4"),
    "one-person-demo": (PLAIN_GRID, R3_TRAIN, {"persons": 2, "test_persons": 1},
                        "diagnostic: the previous demo's settings on ONE training person (20 frames)"),
    "p20-demo": (PLAIN_GRID, R3_TRAIN, {"persons": 24, "frames": 4, "test_persons": 4},
                 "diagnostic: the previous demo's settings on 20 people x 4 frames"),
    "demo-w128": (dict(PLAIN_GRID, mlp_width=128, dir_width=64), R3_TRAIN, DEMO_SET,
                  "the previous demo with a 3 x 128 MLP (64-wide direction layer)"),
    "demo-idgain4": (dict(PLAIN_GRID, identity_gain=4.0), R3_TRAIN, DEMO_SET,
                     "the previous demo with the identity code x4 (its first-layer weights learn 4x faster)"),
    "demo-idmix4": (dict(PLAIN_GRID, hash_identity_bases=4), R3_TRAIN, DEMO_SET,
                    "identity-mixed grid: 4 tables of 2^15 rows per level (4x the parameters); measured with the mixing layer at the table's 10x"),
    "demo-idmix4-t13": (dict(PLAIN_GRID, hash_identity_bases=4, hash_table_size=2**13), R3_TRAIN, DEMO_SET,
                        "identity-mixed grid: 4 tables of 2^13 rows per level (the previous demo's parameters); measured with the mixing layer at the table's 10x"),
    "demo-idmix8-t12": (dict(PLAIN_GRID, hash_identity_bases=8, hash_table_size=2**12), R3_TRAIN, DEMO_SET,
                        "identity-mixed grid: 8 tables of 2^12 rows per level (the same parameters); measured with the mixing layer at the table's 10x"),
    "demo-idmix16-t11": (dict(PLAIN_GRID, hash_identity_bases=16, hash_table_size=2**11), R3_TRAIN, DEMO_SET,
                         "identity-mixed grid: 16 tables of 2^11 rows per level (the same parameters); measured with the mixing layer "
                         "at the table's 10x (the trainer now gives it the field's rate: rerun, it is the `demo` run)"),
    "hashgrid-lr10-wide": (dict(HASHGRID, mlp_width=128, feature_dim=128, dir_width=64, renderer_channels=(128, 64)),
                           {"lr_scale": {"encoding": 10.0}}, {}, "hash grid, table x10, MLP 128 wide, 128 features, renderer 128-64"),
    # round 4: the demo's settings (Adam beta2 0.99, eps 1e-15) with one change each
    "demo-adam-torch": (DEMO_OVERRIDES, R3_TRAIN, DEMO_SET,
                        "the demo of round 3: Adam at torch's defaults (beta2 0.999, eps 1e-8)"),
    "demo-r3-lr12": (DEMO_OVERRIDES,
                     dict(R3_TRAIN, lr=1.2e-2, lr_final=1.2e-3), DEMO_SET, "round 3's demo with lr 1.2e-2 -> 1.2e-3"),
    "demo-idmix32": (dict(DEMO_OVERRIDES, hash_identity_bases=32),
                     DEMO_TRAIN, DEMO_SET, "32 tables of 2^11 rows per level (2x the parameters)"),
    "demo-finest128": (dict(DEMO_OVERRIDES, hash_finest_resolution=128),
                       DEMO_TRAIN, DEMO_SET, "the grid's finest level 128 cells across the cube instead of 256"),
    "demo-frequency-adam": (DEMO_FREQUENCY, DEMO_TRAIN, DEMO_SET,
                            "the demo's settings (its Adam too) with the paper's frequency encoding instead of the hash grid"),
    # round 6: cheaper steps (the demo's fixed number of steps must fit ten minutes on slower hosts too)
    "demo-s12": (dict(DEMO_OVERRIDES, n_samples=12), DEMO_TRAIN, DEMO_SET, "12 samples per ray instead of 16"),
    "demo-d2": (dict(DEMO_OVERRIDES, mlp_depth=2), DEMO_TRAIN, DEMO_SET, "a 2x64 field MLP instead of 3x64"),
}


def _dataset(root: str, seed: int, size: str = "small", persons: int | None = None, frames: int | None = None,
             test_persons: int | None = None) -> str:
    name = f"{size}-p{persons or 'd'}-f{frames or 'd'}-t{test_persons or 'd'}-s{seed}"
    path = os.path.join(root, "data", name)
    if not os.path.exists(os.path.join(path, "manifest.json")):
        build_synthetic_dataset(path, size=size, seed=seed, persons=persons, frames_per_person=frames,
                                test_persons=test_persons, overwrite=True, progress=False)
    return path


@torch.no_grad()
def _evaluate(model, store, idx: list[int]) -> tuple[float, torch.Tensor, torch.Tensor]:
    b = store.batch(idx, "cpu")
    pred = render(model, b["identity"], b["expression"], b["c2w"], b["intrinsics"])
    return float(masked_psnr(pred, b["image"], b["mask"]).mean()), pred, b["image"]


def run(name: str, out: str, steps: int, evals: list[int], seed: int = 0) -> list[dict]:
    model_o, train_o, data_o, what = RUNS[name]
    data = _dataset(out, seed, **data_o)
    run_dir = os.path.join(out, "runs", name)
    train_kw = dict(BASE_TRAIN, steps=steps, seed=seed, progress=False, tensorboard=False, checkpoint_every=10**9,
                    sample_every=10**9, log_every=10**9)
    train_kw.update(train_o)
    cfg = TrainConfig(data=data, out=run_dir, model=dict(BASE_MODEL, **model_o), **train_kw)
    os.makedirs(run_dir, exist_ok=True)
    tr = Trainer(cfg)
    mcfg = tr.model_cfg
    train_store = tr.frames
    test_store = FrameStore(HeadDataset(data, split="test", check="none"), mcfg.image_size, mcfg.feature_size, 1.0,
                            progress=False)
    train_idx = [int(i) for i in torch.linspace(0, len(train_store) - 1, min(32, len(train_store))).round()]
    test_idx = list(range(len(test_store)))
    rows, seconds = [], 0.0
    log = os.path.join(out, f"{name}.jsonl")
    with open(log, "w") as f:
        for step in range(steps):
            t0 = time.perf_counter()
            tr.train_step(step)
            seconds += time.perf_counter() - t0
            if step + 1 in evals or step + 1 == steps:
                tp, tpred, ttrue = _evaluate(tr.model, train_store, train_idx)
                hp, hpred, htrue = _evaluate(tr.model, test_store, test_idx)
                row = dict(run=name, step=step + 1, seconds=round(seconds, 1), train_psnr=round(tp, 3),
                           heldout_psnr=round(hp, 3), load=round(os.getloadavg()[0], 2), what=what,
                           model=model_o, train=train_o, data=data_o)
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(json.dumps({k: row[k] for k in ("run", "step", "seconds", "train_psnr", "heldout_psnr", "load")}),
                      flush=True)
    n = 8
    pick_t = list(range(0, len(train_idx), max(1, len(train_idx) // n)))[:n]
    pick_h = [int(i) for i in torch.linspace(0, len(test_idx) - 1, n).round()]
    tiles = ([to_uint8(ttrue[i]) for i in pick_t] + [to_uint8(tpred[i]) for i in pick_t] +
             [to_uint8(htrue[i]) for i in pick_h] + [to_uint8(hpred[i]) for i in pick_h])
    save_png(os.path.join(out, f"{name}.png"), grid(tiles, cols=n, scale=2))
    return rows


def table(out: str) -> str:
    lines = ["| run | what changes | steps | seconds | load | train PSNR | held-out PSNR |", "|---|---|---|---|---|---|---|"]
    for fn in sorted(os.listdir(out)):
        if not fn.endswith(".jsonl"):
            continue
        with open(os.path.join(out, fn)) as f:
            for line in f:
                r = json.loads(line)
                lines.append(f"| {r['run']} | {r['what']} | {r['step']} | {r['seconds']} | {r['load']} | "
                             f"{r['train_psnr']:.2f} | {r['heldout_psnr']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    threads.keep_freed_memory()  # as the dgnerf command does: its seconds are the command's
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs="*", default=[], help=f"any of {list(RUNS)}")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--evals", default="250,500,1000,1500,2000,3000")
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    evals = [int(s) for s in args.evals.split(",") if s]
    for name in args.runs:
        if name not in RUNS:
            p.error(f"--runs: unknown run {name!r}; known: {list(RUNS)}")
        run(name, args.out, args.steps, evals)
    if args.table:
        print(table(args.out))


if __name__ == "__main__":
    main()
