"""The paper's fitting protocol on held-out people (its Table 2): for every person of the held-out split,
fit (dgnerf.apps.fit) and report masked L1 / PSNR / SSIM (/ LPIPS) of the encoder-only initialisation
(no fitting: the person's mean identity code, each frame's expression code and tracked pose) and of the
fitted codes, per person and overall (mean over all frames), as Markdown tables, JSON and figures.

Optional ablations (Table 1 form): the same fit with lambda_perceptual = 0 and with the given lambda > 0
(table1_ablation.md); the identity code from the encoder vs from coefficients (dgnerf.apps.ablation,
table1_identity.md).
"""
from __future__ import annotations

import json
import os
import time

from dgnerf.apps.ablation import IdentityVariant, check_same_frames, identity_ablation, identity_kind
from dgnerf.apps.fit import FitConfig, comparison_png, fit_person, metric_changes, summarize, targets_from_dataset
from dgnerf.apps.tables import HIGHER_IS_BETTER, csim_note, header, mean, row
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import grid, save_png, to_uint8
from dgnerf.model.checkpoint import read_checkpoint

PAPER_TABLE2 = {"paper, ours (fitted)": {"l1": 0.038, "psnr": 23.45, "ssim": 0.912},
                "paper, HeadNeRF (fitted)": {"l1": 0.051, "psnr": 21.02, "ssim": 0.885}}


def overview_png(path: str, targets, results, scale: int | None = None) -> str:
    """One row per person (its first frame): input | encoder-only | fitted."""
    tiles = []
    for tg, r in zip(targets, results):
        tiles += [to_uint8(tg.image[0]), to_uint8(r.render_init[0]), to_uint8(r.render_fit[0])]
    s = scale if scale is not None else max(1, 128 // targets[0].image.shape[-1])
    save_png(path, grid(tiles, cols=3, scale=s))
    return path


def _train_steps(checkpoint: str) -> int | None:
    """The training step a `dgnerf train` checkpoint was written at (its metadata), None when unknown."""
    if not checkpoint:
        return None
    try:
        return int(json.loads(read_checkpoint(checkpoint)[2].get("train_step", "null")))
    except Exception:
        return None


def evaluate(model, dataset: str, out: str, split: str = "test", persons: list[str] | None = None, cfg=None,
             max_frames: int | None = None, vgg=None, lpips_vgg=None, ablation_lambda: float | None = None,
             checkpoint: str = "", progress: bool = True, log=print, csim_embedder=None,
             csim_reason: str | None = None, ablation_identity=None) -> dict:
    """Fit every held-out person, write out/{table2.md, metrics.json, eval_overview.png, eval_<person>.png}
    (+ table1_ablation.md when ablation_lambda > 0, + table1_identity.md and ablation_identity.png with
    ablation_identity = dgnerf.apps.ablation.IdentityVariant: the model trained on the same frames with the
    other identity code) and return the report dict.
    csim_embedder: identity encoder for CSIM (dgnerf.metrics.facenet_embedder()); without one the tables
    show n/a and say why (csim_reason)."""
    cfg = (cfg or FitConfig()).check()
    splits = sorted(set(HeadDataset(dataset, check="none").person_splits.values()))
    if split not in splits:
        raise DgnerfError(f"--split {split!r}: the dataset {dataset} has splits {splits}; eval needs held-out people "
                          "(the 'test' split of the built-in set)")
    if ablation_lambda is not None and ablation_lambda <= 0:
        raise DgnerfError(f"--ablation-lambda: expected a number > 0 (the run with perceptual loss), got {ablation_lambda}")
    if ablation_lambda is not None and vgg is None:
        raise DgnerfError("--ablation-lambda needs the VGG16 weights (`dgnerf assets fetch --only vgg16`)")
    if ablation_identity is not None:
        check_same_frames(dataset, ablation_identity.dataset, split)
    targets = targets_from_dataset(dataset, model.cfg, persons=persons, split=split, max_frames=max_frames)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    results, interrupted = [], False
    for tg in targets:
        r = fit_person(model, tg, cfg, vgg=vgg, progress=progress, metrics_vgg=lpips_vgg, csim_embedder=csim_embedder)
        results.append(r)
        comparison_png(os.path.join(out, f"eval_{tg.person}.png"), tg, r)
        log(f"[eval] {tg.person}: {len(tg)} frames, " + metric_changes(summarize(r.metrics_init), summarize(r.metrics_fit)))
        if r.interrupted:
            interrupted = True
            log("[eval] interrupted: the tables cover the persons fitted so far")
            break
    targets = targets[:len(results)]
    overall_init = mean([r.metrics_init for r in results])
    overall_fit = mean([r.metrics_fit for r in results])
    frames = sum(len(t) for t in targets)
    lam = cfg.lambda_perceptual
    lines = ["# Fitting held-out people (Table 2 form)", "",
             f"Checkpoint `{checkpoint}`, dataset `{dataset}` split `{split}`: {len(results)} persons, {frames} frames, "
             f"{model.cfg.image_size}x{model.cfg.image_size} px. Metrics inside the head mask, mean over all frames. "
             f"Fitting: {cfg.iters} steps, lambda_perceptual {lam:g}" +
             (f", fine-tune {cfg.finetune_iters} steps" if cfg.finetune_iters else "") + ".", "",
             header(["method"]),
             row("encoder-only initialisation (no fitting)", overall_init),
             row("fitted (dgnerf fit)", overall_fit), "", csim_note(csim_embedder, csim_reason), "",
             "For reference only (the paper's own data and resolution, not comparable):", "",
             header(["method"])] + [row(k, v) for k, v in PAPER_TABLE2.items()] + [
             "", "## Per person", "", header(["person", "frames", "method"])]
    for tg, r in zip(targets, results):
        lines.append(row(tg.person, summarize(r.metrics_init), [str(len(tg)), "encoder-only"]))
        lines.append(row(tg.person, summarize(r.metrics_fit), [str(len(tg)), "fitted"]))
    wins = {k: (overall_fit[k] > overall_init[k]) if k in HIGHER_IS_BETTER else (overall_fit[k] < overall_init[k])
            for k in overall_fit}
    lines += ["", "Fitted beats the encoder-only initialisation on: " +
              ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in sorted(wins.items())), ""]
    with open(os.path.join(out, "table2.md"), "w") as f:
        f.write("\n".join(lines))
    overview_png(os.path.join(out, "eval_overview.png"), targets, results)
    report = {"checkpoint": checkpoint, "dataset": dataset, "split": split, "frames": frames,
              "image_size": model.cfg.image_size, "config": cfg.__dict__, "interrupted": interrupted,
              "csim": ({"available": True, "embedder": getattr(csim_embedder, "name", "given")} if csim_embedder is not None
                       else {"available": False, "reason": csim_reason or "no identity encoder given"}),
              "overall": {"encoder_only": overall_init, "fitted": overall_fit}, "fitted_beats_init": wins,
              "persons": {tg.person: {"frames": len(tg), "encoder_only": summarize(r.metrics_init),
                                      "fitted": summarize(r.metrics_fit), "steps": r.steps_done,
                                      "seconds": round(r.seconds, 1)} for tg, r in zip(targets, results)}}

    if ablation_lambda is not None and not interrupted:
        from dataclasses import replace

        rows = {}
        for name, lam_ in (("lambda = 0 (masked L2 only)", 0.0), (f"lambda = {ablation_lambda:g} (+ VGG16 perceptual)", ablation_lambda)):
            if lam_ == lam:
                rows[name] = overall_fit
                continue
            rs = []
            for tg in targets:
                rs.append(fit_person(model, tg, replace(cfg, lambda_perceptual=lam_), vgg=vgg, progress=progress,
                                     metrics_vgg=lpips_vgg, csim_embedder=csim_embedder))
                b = summarize(rs[-1].metrics_fit)
                log(f"[eval] ablation {name}, {tg.person}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(b.items())))
                if rs[-1].interrupted:
                    break
            rows[name] = mean([r.metrics_fit for r in rs])
        tab = ["# Ablation: perceptual loss weight in fitting (Table 1 form)", "",
               f"Same persons, frames and schedule as table2.md ({cfg.iters} steps).", "", header(["fitting loss"])]
        tab += [row(k, v) for k, v in rows.items()] + ["", csim_note(csim_embedder, csim_reason), ""]
        with open(os.path.join(out, "table1_ablation.md"), "w") as f:
            f.write("\n".join(tab))
        report["ablation"] = rows
    if ablation_identity is not None and not interrupted:
        main = IdentityVariant(identity_kind(dataset), model, dataset, checkpoint, _train_steps(checkpoint))
        if ablation_identity.label == main.label:
            ablation_identity.label += f" ({os.path.basename(os.path.normpath(ablation_identity.dataset))})"
        report["ablation_identity"] = identity_ablation(
            main, ablation_identity, targets, results, out, cfg, split=split, max_frames=max_frames, lpips_vgg=lpips_vgg,
            csim_embedder=csim_embedder, csim_reason=csim_reason, progress=progress, log=log)
    report["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report
