"""`dgnerf realvideo DATA --out OUT`: the real-video check (dgnerf.apps.realvideo, docs/realvideo.md).

Train one person on the first frames of a preprocessed video (default 0-99), render the frames that follow
(default 100-119) from their tracked pose and expression, and write OUT/metrics.json, OUT/realvideo.md,
OUT/heldout.png, OUT/train_frames.png and OUT/curve.png (masked L1/PSNR/SSIM/LPIPS)."""
from __future__ import annotations

import json
import os

from dgnerf.apps.realvideo import REALVIDEO_MODEL, RealVideoConfig, parse_frames, run_check
from dgnerf.commands._common import (
    check_model_overrides,
    check_number,
    check_seed,
    flag_named,
    json_object,
    removed_on_error,
    resolve_device,
)
from dgnerf.errors import DgnerfError


def register(sub):
    d = RealVideoConfig(data="", out="")
    p = sub.add_parser("realvideo", help="real-video check: train on a video's first frames, score the frames that follow",
                       description="Train a single-person model on some frames of a preprocessed video (`dgnerf preprocess`), "
                                   "render the held-out frames from their tracked pose and expression code, and report masked "
                                   "L1/PSNR/SSIM/LPIPS (docs/realvideo.md). Stages are resumable: prepare OUT/data, train "
                                   "OUT/run, evaluate.")
    p.add_argument("data", help="a dataset made by `dgnerf preprocess VIDEO --out DATA`")
    p.add_argument("--out", required=True, help="output directory: data/, run/, metrics.json, realvideo.md, heldout.png, ...")
    p.add_argument("--person", default=None, help="person id (default: the dataset's only person)")
    p.add_argument("--train-frames", default=d.train_frames, help=f"frame indices to train on (default {d.train_frames})")
    p.add_argument("--test-frames", default=d.test_frames, help=f"held-out frame indices (default {d.test_frames})")
    p.add_argument("--val-frames", default=d.val_frames,
                   help="frames kept out of training to choose the checkpoint by (best masked PSNR on them); "
                        "default: none, the last checkpoint is scored")
    p.add_argument("--identity", choices=["mean", "frame"], default=d.identity,
                   help="mean: every frame gets the training frames' mean identity code (default); frame: per-frame codes")
    p.add_argument("--expression-components", type=int, default=d.expression_components, metavar="K",
                   help=f"keep the first K expression components, zero the rest (0 = all; default {d.expression_components})")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-final", type=float, default=d.lr_final)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help=f"checkpoints hold a moving average of the weights with this decay per step (0 = the last "
                        f"weights; default {d.ema_decay:g})")
    p.add_argument("--camera-lr", type=float, default=d.camera_lr,
                   help="learn a small correction of each training frame's tracked pose at this learning rate, e.g. "
                        "1e-3 (default 0: the tracked poses); held-out frames always use their tracked poses")
    p.add_argument("--camera-reg", type=float, default=d.camera_reg, help="L2 weight on those corrections (default 0)")
    p.add_argument("--lambda-perceptual", type=float, default=d.lambda_perceptual, help="VGG16 loss weight (default 0)")
    p.add_argument("--background-weight", type=float, default=d.background_weight,
                   help="L2 weight outside the head mask (default: 1 when the dataset records a known background "
                        "colour, else 0: a real background is not modelled)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="all these checkpoints are kept; the report traces held-out error over them")
    p.add_argument("--model", type=json_object, default=None,
                   help=f"HeadConfig fields as JSON (default {json.dumps(REALVIDEO_MODEL)})")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time (checkpointed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (default), cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/run (or just evaluate it when it is done)")
    p.add_argument("--eval-only", action="store_true", help="score the latest checkpoint of OUT/run without training")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (it needs the VGG16 weights in the cache)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


# The check (dgnerf.apps.realvideo) names its settings by their RealVideoConfig fields; the user typed flags.
FIELD_FLAGS = {"train_frames": "--train-frames", "test_frames": "--test-frames", "val_frames": "--val-frames",
               "expression_components":
               "--expression-components", "identity": "--identity", "person": "--person", "out": "--out", "data": "DATA"}


def config_from_args(args):
    for name in ("steps", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise DgnerfError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise DgnerfError(f"--threads: expected an integer >= 1 and <= 1024, got {args.threads}")
    if args.model is not None and not isinstance(args.model, dict):
        raise DgnerfError(f"--model: expected a JSON object of HeadConfig fields, got {args.model!r}")
    for flag, v, lo_open in (("--lr", args.lr, True), ("--lr-final", args.lr_final, True),
                             ("--lambda-perceptual", args.lambda_perceptual, False),
                             ("--background-weight", args.background_weight, False),
                             ("--camera-lr", args.camera_lr, False), ("--camera-reg", args.camera_reg, False)):
        check_number(v, flag, 0, 1e9, lo_open=lo_open)
    check_number(args.max_minutes, "--max-minutes", 0, 1e9, lo_open=True, what="number of minutes")
    check_number(args.ema_decay, "--ema-decay", 0, 1, hi_open=True)
    if args.expression_components < 0:
        raise DgnerfError(f"--expression-components: expected an integer >= 0 (0 = all), got {args.expression_components}")
    check_seed(args.seed)
    resolve_device(args.device)
    parse_frames(args.train_frames, "--train-frames")
    parse_frames(args.test_frames, "--test-frames")
    if args.val_frames.strip():
        parse_frames(args.val_frames, "--val-frames")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    model = dict(REALVIDEO_MODEL)
    model.update(args.model or {})
    check_model_overrides(model, "--model")
    return RealVideoConfig(data=args.data, out=args.out, person=args.person, train_frames=args.train_frames,
                           test_frames=args.test_frames, val_frames=args.val_frames, identity=args.identity,
                           expression_components=args.expression_components, model=model, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, lr_final=args.lr_final, ema_decay=args.ema_decay,
                           camera_lr=args.camera_lr, camera_reg=args.camera_reg, lambda_perceptual=args.lambda_perceptual, background_weight=args.background_weight,
                           checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes, seed=args.seed,
                           device=args.device, lpips=not args.no_lpips, progress=not args.no_progress)


def run(args):
    import torch

    cfg = config_from_args(args)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        with removed_on_error(args.out):
            rep = run_check(cfg, resume=args.resume, eval_only=args.eval_only)
    except DgnerfError as e:
        raise DgnerfError(flag_named(str(e), FIELD_FLAGS)) from None
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) keep their thread count
    m = rep["metrics"]
    for k in ("heldout", "train"):
        print(f"{k}: " + ", ".join(f"{n} {m[k][n]:.4g}" for n in ("l1", "psnr", "ssim", "lpips") if n in m[k]))
    met = rep["target"]["met"]
    print(f"target (held-out PSNR >= 26 dB, SSIM >= 0.92 at {rep['resolution']['image']} px): "
          f"{'met' if all(met.values()) else 'not met'}")
    print(f"wrote {args.out}/metrics.json, realvideo.md, heldout.png, train_frames.png" + (", curve.png" if rep["history"] else ""))
    return 0
