"""`dgnerf eval --checkpoint C --dataset D --out DIR`: the paper's fitting protocol on held-out people
(dgnerf.apps.evaluate): DIR/table2.md (encoder-only vs fitted, overall and per person), metrics.json,
eval_overview.png and eval_<person>.png; with --ablation-lambda L also table1_ablation.md (lambda 0 vs L); with
--ablation-identity D2 also table1_identity.md and ablation_identity.png (identity code from the encoder vs from
coefficients: dgnerf.apps.ablation)."""
from __future__ import annotations

import os

from dgnerf.apps.ablation import IdentityVariant, check_same_frames, identity_kind, run_state, train_like
from dgnerf.apps.evaluate import _train_steps, evaluate
from dgnerf.commands._common import (
    check_dataset_dir,
    removed_on_error,
    check_int,
    check_number,
    load_model,
    resolve_device,
    vgg_missing,
    vggs,
)
from dgnerf.commands.fit import add_fit_arguments, fit_config
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.metrics import csim_embedder


def check_split(args) -> list[str] | None:
    """--split and --persons against the dataset, before anything is loaded or printed (-> the persons or None)."""
    try:
        ds = HeadDataset(args.dataset, check="none")
    except DgnerfError as e:
        raise DgnerfError(f"--dataset {args.dataset!r}: {e}") from None
    splits = sorted(set(ds.person_splits.values()))
    if args.split not in splits:
        raise DgnerfError(f"--split {args.split!r}: the dataset {args.dataset} has splits {splits}; eval needs held-out "
                          "people (the 'test' split of the built-in set)")
    if args.persons is None:
        return None
    persons = [p for p in args.persons.split(",") if p]
    have = [p for p in ds.persons if ds.person_splits[p] == args.split]
    if not persons:
        raise DgnerfError(f"--persons {args.persons!r}: expected comma-separated person ids of split {args.split!r}")
    missing = [p for p in persons if p not in have]
    if missing:
        raise DgnerfError(f"--persons: {missing} not in split {args.split!r} of {args.dataset} (it has "
                          f"{have[:12]}{'...' if len(have) > 12 else ''})")
    return persons


def run(args):
    # every flag before the model, the VGG and the face encoder are loaded (they print what they skip)
    cfg = fit_config(args)  # the fitting flags, checked and named as typed (shared with `dgnerf fit`)
    check_int(args.max_frames, "--max-frames", 0, what="0 = all")
    check_number(args.ablation_lambda, "--ablation-lambda", 0, lo_open=True, what="perceptual weight")
    check_int(args.ablation_identity_steps, "--ablation-identity-steps", 1)
    check_dataset_dir(args.dataset)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    persons = check_split(args)
    resolve_device(args.device)
    need_vgg = cfg.lambda_perceptual > 0 or args.ablation_lambda is not None
    if need_vgg:
        flag = "--lambda-perceptual" if cfg.lambda_perceptual > 0 else "--ablation-lambda"
        msg = vgg_missing(flag)
        if msg:
            raise DgnerfError(msg)
    model = load_model(args.checkpoint, args.device)
    vgg, lpips_vgg = vggs(args, need_vgg)
    dev = next(model.parameters()).device
    vgg = vgg.to(dev) if vgg is not None else None
    lpips_vgg = lpips_vgg.to(dev) if lpips_vgg is not None else None
    with removed_on_error(args.out):  # a failed evaluation leaves no half-written --out it created
        other = identity_variant(args, dev)
        embedder, reason = csim_embedder(not args.no_csim)
        rep = evaluate(model, args.dataset, args.out, split=args.split, persons=persons, cfg=cfg,
                       max_frames=args.max_frames or None, vgg=vgg, lpips_vgg=lpips_vgg,
                       ablation_lambda=args.ablation_lambda, checkpoint=os.path.abspath(args.checkpoint),
                       progress=not args.no_progress, csim_embedder=embedder, csim_reason=reason,
                       ablation_identity=other)
    a, b = rep["overall"]["encoder_only"], rep["overall"]["fitted"]
    print(f"overall ({rep['frames']} frames): " + ", ".join(f"{k} {a[k]:.4g} -> {b[k]:.4g}" for k in sorted(b)))
    print(f"wrote {args.out}/table2.md, metrics.json, eval_overview.png, eval_<person>.png" +
          (", table1_ablation.md" if "ablation" in rep else "") +
          (", table1_identity.md, ablation_identity.png" if "ablation_identity" in rep else ""))
    return 130 if rep["interrupted"] else 0


def identity_variant(args, device):
    """The other side of the identity ablation (--ablation-identity D2 with a checkpoint, or trained here), or None."""
    if args.ablation_identity is None:
        if args.ablation_identity_checkpoint or args.ablation_identity_train or args.ablation_identity_steps is not None:
            raise DgnerfError("--ablation-identity-checkpoint/-train/-steps: give the dataset with the other identity code "
                              "as --ablation-identity D2")
        return None

    d2 = args.ablation_identity
    if not os.path.isfile(os.path.join(d2, "manifest.json")):
        raise DgnerfError(f"--ablation-identity {d2!r}: not a dgnerf dataset (no manifest.json)")
    if bool(args.ablation_identity_checkpoint) == bool(args.ablation_identity_train):
        raise DgnerfError("--ablation-identity: give exactly one of --ablation-identity-checkpoint C2 (a model trained on "
                          f"{d2}) and --ablation-identity-train (train one here like --checkpoint)")
    if args.ablation_identity_steps is not None and not args.ablation_identity_train:
        raise DgnerfError("--ablation-identity-steps: only with --ablation-identity-train")
    check_same_frames(args.dataset, d2, args.split)
    if args.ablation_identity_train:
        run_state(args.checkpoint)  # fails early when --checkpoint does not say how it was trained
        ckpt = train_like(args.checkpoint, d2, os.path.join(args.out, "ablation_identity_run"),
                          steps=args.ablation_identity_steps, progress=not args.no_progress)
        ckpt = os.path.join(ckpt, "model.safetensors")
    else:
        ckpt = args.ablation_identity_checkpoint
    model = load_model(ckpt, str(device), flag="--ablation-identity-" + ("train" if args.ablation_identity_train else "checkpoint"))

    return IdentityVariant(identity_kind(d2), model, d2, os.path.abspath(ckpt), _train_steps(ckpt))


def register(sub):
    p = sub.add_parser("eval", help="the paper's fitting metrics on held-out people (Markdown tables + figures)",
                       description="Fit every person of the held-out split and report masked L1/PSNR/SSIM/LPIPS of the "
                                   "encoder-only initialisation and of the fitted codes (Table 2 form).")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--dataset", required=True, metavar="D")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--split", default="test", help="held-out split (default test)")
    p.add_argument("--persons", default=None, help="comma-separated person ids (default: all of --split)")
    p.add_argument("--ablation-lambda", type=float, default=None, metavar="L",
                   help="also fit with lambda_perceptual 0 and L and write table1_ablation.md (needs VGG16)")
    p.add_argument("--ablation-identity", default=None, metavar="D2",
                   help="identity ablation (encoder vs coefficients): D2 = the same frames with the other identity code "
                        "(e.g. the built-in set built with and without --identity facenet); writes table1_identity.md")
    p.add_argument("--ablation-identity-checkpoint", default=None, metavar="C2", help="the model trained on D2")
    p.add_argument("--ablation-identity-train", action="store_true",
                   help="train the model on D2 here, exactly as --checkpoint was trained (its train_state.json)")
    p.add_argument("--ablation-identity-steps", type=int, default=None, metavar="N",
                   help="with --ablation-identity-train: train N steps (default: as many as --checkpoint had)")
    add_fit_arguments(p, max_frames_default=None)  # the paper's protocol: every frame
    p.set_defaults(func=run)
