"""`dgnerf fit (IMAGES_DIR | VIDEO | DATASET[:person]) --checkpoint C --out DIR`: fit a person the model never
saw (dgnerf.apps.fit). Writes DIR/codes.safetensors, DIR/identity_<person>.safetensors, DIR/fit_<person>.png
(rows: input, encoder-only render, fitted render, error x4), DIR/loss_<person>.png and DIR/metrics.json."""
from __future__ import annotations

import os
import shutil

from dgnerf.apps.fit import (
    FitConfig,
    comparison_png,
    estimate_seconds,
    fit_person,
    is_dataset,
    metric_changes,
    parse_source,
    preprocess_inputs,
    save_codes,
    summarize,
    targets_from_dataset,
)
from dgnerf.codes import save_identity
from dgnerf.commands._common import csim_info, flag_named, load_model, vggs
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import loss_curve_png
from dgnerf.metrics import csim_embedder
from dgnerf.model.checkpoint import save_checkpoint


def add_fit_arguments(p, iters_default: int = 300, max_frames_default: int | None = 8):
    g = p.add_argument_group("fitting (dgnerf.apps.fit.FitConfig)")
    g.add_argument("--iters", type=int, default=iters_default, help=f"optimisation steps per person (default {iters_default})")
    g.add_argument("--lambda-perceptual", type=float, default=0.0,
                   help="weight of the VGG16 perceptual loss (default 0 = masked L2 only; the paper trains with 10)")
    g.add_argument("--lr-identity", type=float, default=3e-3)
    g.add_argument("--lr-expression", type=float, default=1e-2)
    g.add_argument("--lr-rotation", type=float, default=2e-3, help="pose correction, radians")
    g.add_argument("--lr-translation", type=float, default=2e-3, help="pose correction, dataset units")
    g.add_argument("--lr-decay", type=float, default=0.1, help="final/initial learning rate (exponential decay)")
    g.add_argument("--reg-identity", type=float, default=1e-2, help="weight of |identity offset|^2")
    g.add_argument("--reg-expression", type=float, default=1e-3, help="weight of |expression offset|^2 (mean over frames)")
    g.add_argument("--reg-pose", type=float, default=1e-1, help="weight of |rotation|^2 and |translation|^2 of the corrections")
    g.add_argument("--no-pose", action="store_true", help="keep the tracked poses (no camera correction)")
    g.add_argument("--finetune-iters", type=int, default=0, help="afterwards fine-tune the model weights this many steps (default 0)")
    g.add_argument("--finetune-lr", type=float, default=1e-4)
    g.add_argument("--batch", type=int, default=8, help="frames rendered at once (default 8)")
    g.add_argument("--max-frames", type=int, default=max_frames_default,
                   help=f"at most this many (evenly spaced) frames per person (default {max_frames_default or 'all'}; "
                        "0 = all)")
    g.add_argument("--frames", default=None, metavar="I,J,...",
                   help="fit only these frames of each person (positions among its frames, after --max-frames), "
                        "e.g. --frames 0 fits from one image")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--no-lpips", action="store_true", help="skip LPIPS in the metrics (it needs the VGG16 weights)")
    g.add_argument("--no-csim", action="store_true",
                   help="skip CSIM (FaceNet identity cosine) in the metrics; without OpenCV 5 or the FaceNet graph it "
                        "is reported as unavailable")
    g.add_argument("--no-progress", action="store_true")


# FitConfig names its settings by field; the user typed these flags (one flag sets both pose regularisers).
FIT_FLAGS = {"reg_rotation": "--reg-pose", "reg_translation": "--reg-pose"}


def fit_config(args):
    cfg = FitConfig(iters=args.iters, lr_identity=args.lr_identity, lr_expression=args.lr_expression,
                     lr_rotation=args.lr_rotation, lr_translation=args.lr_translation, lr_decay=args.lr_decay,
                     lambda_perceptual=args.lambda_perceptual, reg_identity=args.reg_identity,
                     reg_expression=args.reg_expression, reg_rotation=args.reg_pose, reg_translation=args.reg_pose,
                     fit_pose=not args.no_pose, finetune_iters=args.finetune_iters, finetune_lr=args.finetune_lr,
                     batch=args.batch)
    try:
        return cfg.check()
    except DgnerfError as e:
        fields = [f for f in FitConfig.__dataclass_fields__ if f not in ("path", "fit_identity", "fit_expression", "fit_pose")]
        raise DgnerfError(flag_named(str(e), {f: FIT_FLAGS.get(f, "--" + f.replace("_", "-")) for f in fields})) from None


def _resolve_source(args, cfg, workdir: str):
    """-> (targets, description). Datasets directly; raw videos / image folders through the preprocessor."""
    root, person = parse_source(args.source)
    if not os.path.exists(root):
        raise DgnerfError(f"source {args.source!r}: no such file or directory (expected IMAGES_DIR, VIDEO or DATASET[:person])")
    if not is_dataset(root):
        if person is not None:
            raise DgnerfError(f"source {args.source!r}: ':{person}' selects a person of a dataset, but {root!r} is not a "
                              "dataset (no manifest.json)")
        pre = os.path.join(workdir, "input_dataset")
        preprocess_inputs([root], pre, args.expression_basis, resolution=max(64, cfg.image_size), split="test",
                          max_frames=args.max_frames or None)
        return targets_from_dataset(pre, cfg, max_frames=args.max_frames or None, what="preprocessed input"), pre
    if person is not None:
        return targets_from_dataset(root, cfg, persons=[person], max_frames=args.max_frames or None, what="source"), root
    splits = sorted(set(HeadDataset(root, check="none").person_splits.values()))
    split = args.split
    if split is None:
        split = "test" if "test" in splits else None
    if split is not None and split not in splits:
        raise DgnerfError(f"--split {split!r}: the dataset {root} has splits {splits}")
    return targets_from_dataset(root, cfg, split=split, max_frames=args.max_frames or None, what="source"), root


def run(args):
    import json

    cfg = fit_config(args)
    if args.max_frames is not None and args.max_frames < 0:
        raise DgnerfError(f"--max-frames: expected a number of frames >= 1 (0 = all), got {args.max_frames}")
    rows = None if args.frames is None else _frame_list(args.frames)  # reported before anything is loaded
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    model = load_model(args.checkpoint, args.device)
    created = not os.path.exists(args.out)
    os.makedirs(args.out, exist_ok=True)
    try:  # a problem found before fitting starts leaves no --out directory behind
        targets, data_root = _resolve_source(args, model.cfg, args.out)
        if rows is not None:
            targets = [tg.subset(rows) for tg in targets]
        vgg, lpips_vgg = vggs(args, cfg.lambda_perceptual > 0)
    except BaseException:
        if created:
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    dev = next(model.parameters()).device
    if vgg is not None:
        vgg = vgg.to(dev)
    if lpips_vgg is not None:
        lpips_vgg = lpips_vgg.to(dev)
    embedder, csim_reason = csim_embedder(not args.no_csim)
    results, report = [], {"checkpoint": os.path.abspath(args.checkpoint), "source": args.source, "dataset": data_root,
                           "config": cfg.__dict__, "csim": csim_info(embedder, csim_reason), "persons": {}}
    interrupted = False
    for tg in targets:
        est = estimate_seconds(model, tg, cfg)
        steps = f"{cfg.iters} steps" + (f" + {cfg.finetune_iters} fine-tuning steps" if cfg.finetune_iters else "")
        when = f"{est / 60:.1f} min" if est >= 90 else f"{est:.0f} s"
        print(f"fitting {tg.person}: {len(tg)} frame(s), {steps}, about {when} on this machine now", flush=True)
        res = fit_person(model, tg, cfg, vgg=vgg, progress=not args.no_progress, metrics_vgg=lpips_vgg,
                         csim_embedder=embedder)
        results.append(res)
        comparison_png(os.path.join(args.out, f"fit_{tg.person}.png"), tg, res)
        loss_curve_png(os.path.join(args.out, f"loss_{tg.person}.png"),
                       {"objective": [(s, o) for s, o, _ in res.history], "masked L2": [(s, v) for s, _, v in res.history]},
                       title=f"fitting {tg.person} (log scale)")
        save_identity(os.path.join(args.out, f"identity_{tg.person}.safetensors"), res.identity)
        if res.model is not None:
            save_checkpoint(os.path.join(args.out, f"model_finetuned_{tg.person}.safetensors"), res.model,
                            metadata={"note": f"fine-tuned on {tg.person} by dgnerf fit", "finetune_iters": cfg.finetune_iters})
        report["persons"][tg.person] = {
            "frames": len(tg), "frame_index": tg.frame_index, "steps": res.steps_done, "best_step": res.best_step,
            "interrupted": res.interrupted, "seconds": round(res.seconds, 1),
            "encoder_only": summarize(res.metrics_init), "fitted": summarize(res.metrics_fit),
            "per_frame": {"encoder_only": {k: [round(float(x), 5) for x in v] for k, v in res.metrics_init.items()},
                          "fitted": {k: [round(float(x), 5) for x in v] for k, v in res.metrics_fit.items()}}}
        a, b = report["persons"][tg.person]["encoder_only"], report["persons"][tg.person]["fitted"]
        print(f"{tg.person}: {len(tg)} frames, {res.steps_done} steps{' (interrupted)' if res.interrupted else ''}: "
              + metric_changes(a, b))
        if res.interrupted:
            interrupted = True
            print("dgnerf fit: interrupted: kept the best codes so far; the remaining persons are not fitted")
            break
    report["interrupted"] = interrupted
    save_codes(os.path.join(args.out, "codes.safetensors"), targets[:len(results)], results,
               metadata={"checkpoint": os.path.abspath(args.checkpoint), "dataset": data_root})
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}/codes.safetensors, identity_*.safetensors, fit_*.png, loss_*.png, metrics.json")
    return 130 if interrupted else 0


def _frame_list(spec: str) -> list[int]:
    try:
        rows = [int(t) for t in spec.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise DgnerfError(f"--frames: expected comma-separated frame positions such as 0 or 0,3,5, got {spec!r}") from None
    if not rows or any(r < 0 for r in rows) or len(set(rows)) != len(rows):
        raise DgnerfError(f"--frames: expected distinct frame positions >= 0, got {spec!r}")
    return rows


def register(sub):
    p = sub.add_parser("fit", help="fit a person the model never saw (codes + camera) from images, a video or a dataset",
                       description="Inversion: start from the encoders' identity/expression codes and tracked poses, "
                                   "optimise an identity offset (shared by the person's frames), per-frame expression "
                                   "offsets and small pose corrections (masked L2 [+ perceptual], regularisers, "
                                   "learning-rate decay). Ctrl-C stops and keeps the best codes so far.")
    p.add_argument("source", metavar="IMAGES_DIR|VIDEO|DATASET[:person]",
                   help="a dgnerf dataset (all persons of --split, or DATASET:person), or a raw video / image folder "
                        "(needs the preprocess extra and --expression-basis)")
    p.add_argument("--checkpoint", required=True, metavar="C", help="head checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--split", default=None, help="persons of this split of a dataset (default: test when it has one, else all)")
    p.add_argument("--expression-basis", metavar="DATASET_OR_FILE",
                   help="for raw inputs: the training set (or its expression_basis.safetensors) to project expressions into")
    add_fit_arguments(p)
    p.set_defaults(func=run)
