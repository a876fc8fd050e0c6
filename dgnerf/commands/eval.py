"""`dgnerf eval --checkpoint C --dataset D --out DIR`: the paper's fitting protocol on held-out people
(dgnerf.apps.evaluate): DIR/table2.md (encoder-only vs fitted, overall and per person), metrics.json,
eval_overview.png and eval_<person>.png; with --ablation-lambda L also table1_ablation.md (lambda 0 vs L)."""
from __future__ import annotations

import os

from dgnerf.errors import DgnerfError


def run(args):
    from dgnerf.apps.evaluate import evaluate
    from dgnerf.commands.fit import fit_config, load_model, vggs
    from dgnerf.metrics import csim_embedder

    cfg = fit_config(args)
    if not os.path.isfile(os.path.join(args.dataset, "manifest.json")):
        raise DgnerfError(f"--dataset {args.dataset!r}: not a dgnerf dataset (no manifest.json)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    model = load_model(args.checkpoint, args.device)
    vgg, lpips_vgg = vggs(args, cfg.lambda_perceptual > 0 or args.ablation_lambda is not None)
    dev = next(model.parameters()).device
    vgg = vgg.to(dev) if vgg is not None else None
    lpips_vgg = lpips_vgg.to(dev) if lpips_vgg is not None else None
    persons = [p for p in args.persons.split(",") if p] if args.persons else None
    embedder, reason = csim_embedder(not args.no_csim)
    rep = evaluate(model, args.dataset, args.out, split=args.split, persons=persons, cfg=cfg, max_frames=args.max_frames,
                   vgg=vgg, lpips_vgg=lpips_vgg, ablation_lambda=args.ablation_lambda,
                   checkpoint=os.path.abspath(args.checkpoint), progress=not args.no_progress, csim_embedder=embedder,
                   csim_reason=reason)
    a, b = rep["overall"]["encoder_only"], rep["overall"]["fitted"]
    print(f"overall ({rep['frames']} frames): " + ", ".join(f"{k} {a[k]:.4g} -> {b[k]:.4g}" for k in sorted(b)))
    print(f"wrote {args.out}/table2.md, metrics.json, eval_overview.png, eval_<person>.png" +
          (", table1_ablation.md" if "ablation" in rep else ""))
    return 130 if rep["interrupted"] else 0


def register(sub):
    from dgnerf.commands.fit import add_fit_arguments

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
    add_fit_arguments(p)
    p.set_defaults(func=run)
