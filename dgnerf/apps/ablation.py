"""The paper's second ablation (Table 1 form): the identity code from the face-recognition encoder vs from
(3DMM-like) coefficients.

Two models that differ only in where their identity code comes from are trained on the same frames (same
images, cameras, expression codes, same training settings and data order) and evaluated with the same
fitting protocol on the same held-out people:

- encoder: the paper's code, a face-recognition feature of each frame (FaceNet here; AdaFace in the paper);
- coefficients: a parametric face model's identity coefficients (HeadNeRF's choice, 3DMM shape/texture).

Which data can give both? The built-in set knows the parameters it generated every head from: its default
identity code is those identity parameters (skull, face, nose, eyes, hair, skin, ... 49 numbers, normalised)
through a fixed random projection to 512-d, i.e. exactly "identity from coefficients" with an ideal tracker
(the coefficients of a held-out person are its true ones: an upper bound for a real 3DMM fit), while
`--identity facenet` gives the encoder's code of the very same frames. A real preprocessed set has only the
encoder's code: no 3DMM ships in a registry package here (docs/preprocess.md), so the "coefficients"
side needs a second dataset of the same frames whose identity array holds your own tracker's coefficients
(`dgnerf preprocess import`, docs/preprocess.md).

    dgnerf eval --checkpoint C --dataset D --out DIR --ablation-identity D2 (--ablation-identity-checkpoint C2 | --ablation-identity-train)

writes DIR/table1_identity.md and DIR/ablation_identity.png (and `ablation_identity` in metrics.json).
`--ablation-identity-train` trains C2 on D2 exactly as C was trained (C's train_state.json: its TrainConfig
and step count; the same seed gives the same frame order), into DIR/ablation_identity_run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from dgnerf.apps.fit import fit_person, metric_changes, summarize, targets_from_dataset
from dgnerf.apps.tables import csim_note, header, mean, row
from dgnerf.data import HeadDataset
from dgnerf.data.format import read_manifest
from dgnerf.errors import DgnerfError
from dgnerf.media import grid, save_png, to_uint8
from dgnerf.train import TrainConfig, Trainer


@dataclass
class IdentityVariant:
    """One side of the ablation: a model, the dataset it was trained on, and what its identity code is."""
    label: str
    model: object
    dataset: str
    checkpoint: str = ""
    train_steps: int | None = None


def identity_kind(dataset: str) -> str:
    """Where a dataset's identity codes come from, in words (from its manifest's meta)."""
    meta = read_manifest(dataset).get("meta") or {}
    code = str(meta.get("identity_code", ""))
    if code.startswith("seeded random projection of the ground-truth identity parameters"):
        return "coefficients (the built-in set's true identity parameters, projected to 512-d)"
    if "FaceNet" in code:
        return "encoder (FaceNet feature of each frame)"
    ident = str(meta.get("identity", ""))
    if ident == "facenet":
        return "encoder (FaceNet feature of each frame)"
    if ident.startswith("adaface"):
        return "encoder (AdaFace feature of each frame)"
    return f"identity codes of {os.path.basename(os.path.normpath(dataset))}"


def check_same_frames(main: str, other: str, split: str, what: str = "--ablation-identity") -> None:
    """The two datasets must hold the same frames (persons, splits, cameras, expression codes, images of the
    evaluated split) and differ in their identity codes; DgnerfError naming the first difference otherwise."""
    a, b = HeadDataset(main, check="none"), HeadDataset(other, check="header")
    if (a.height, a.width) != (b.height, b.width):
        raise DgnerfError(f"{what} {other}: frames are {b.height}x{b.width}, the evaluated dataset's {a.height}x{a.width}; "
                          "the ablation needs the same frames with another identity code")
    if a.person_splits != b.person_splits:
        raise DgnerfError(f"{what} {other}: its persons/splits {b.person_splits} differ from {main}'s {a.person_splits}")
    if [f.person for f in a.frames] != [f.person for f in b.frames]:
        raise DgnerfError(f"{what} {other}: {len(b.frames)} frames in another order than {main}'s {len(a.frames)}")
    for key in ("c2w", "intrinsics", "expression"):
        x, y = a.arrays[key], b.arrays[key]
        if x.shape != y.shape or not torch.allclose(x, y, atol=1e-4, rtol=1e-4):
            raise DgnerfError(f"{what} {other}: its {key} differs from {main}'s (expected the same frames, only the "
                              "identity code differing)")
    if a.arrays["identity"].shape == b.arrays["identity"].shape and torch.allclose(a.arrays["identity"], b.arrays["identity"]):
        raise DgnerfError(f"{what} {other}: its identity codes equal {main}'s: nothing to compare")
    for j, f in enumerate(a.frames):
        if f.split != split:
            continue
        x, y = a[j]["image"], b[j]["image"]
        if float((x - y).abs().max()) > 1.5 / 255:
            raise DgnerfError(f"{what} {other}: image of frame {f.index} ({f.image}) differs from {main}'s")


def run_state(checkpoint: str) -> tuple[dict, int]:
    """(TrainConfig dict, steps trained) of a `dgnerf train` checkpoint (its step directory's train_state.json)."""
    path = os.fspath(checkpoint)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    state = os.path.join(path, "train_state.json")
    if not os.path.isfile(state):
        raise DgnerfError(f"--ablation-identity-train: {checkpoint!r} is not a `dgnerf train` checkpoint directory (no "
                          "train_state.json beside its model.safetensors), so how it was trained is unknown; train a "
                          "model on the other dataset yourself and pass it as --ablation-identity-checkpoint")
    with open(state) as f:
        st = json.load(f)
    return dict(st["train_config"]), int(st["step"])


def train_like(checkpoint: str, dataset: str, out: str, steps: int | None = None, progress: bool = True,
               log=print) -> str:
    """Train a model on `dataset` exactly as `checkpoint` was trained (its TrainConfig: model overrides,
    batch, learning-rate schedule over its nominal steps, loss, seed) for as many steps as it had (or
    `steps`), into `out`; returns the checkpoint directory. The identity code length comes from `dataset`."""
    from tqdm import tqdm

    tc, done = run_state(checkpoint)
    n = done if steps is None else int(steps)
    if n < 1:
        raise DgnerfError(f"--ablation-identity-steps: expected an integer >= 1, got {n}")
    known = set(TrainConfig.__dataclass_fields__)
    tc = {k: v for k, v in tc.items() if k in known}
    tc.update(data=dataset, out=out, max_minutes=None, progress=False, tensorboard=False,
              checkpoint_every=max(n, 1), sample_every=max(n, 1))
    # A deterministic run switches torch's process-wide deterministic mode on: restore it afterwards.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        trainer = Trainer(TrainConfig(**tc))
        os.makedirs(out, exist_ok=True)
        log(f"[eval] training the identity-ablation model on {dataset}: {n} steps like {checkpoint} "
            f"(batch {tc['batch_size']}, lr {tc['lr']:g} -> {tc['lr_final']:g} over {tc['steps']} steps, "
            f"seed {tc['seed']})")
        last = {}
        for step in tqdm(range(n), desc="training (identity ablation)", unit="step", disable=not progress,
                         leave=False):
            last = trainer.train_step(step)
        path = trainer.save(n)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
    log(f"[eval] identity-ablation model: {n} steps, last loss {last.get('loss', float('nan')):.4f} -> {path}")
    return path


def identity_ablation_png(path: str, targets, results_a, results_b, max_frames: int = 2, scale: int | None = None) -> str:
    """Rows: up to `max_frames` frames per person; columns: input | A encoder-only | A fitted | B encoder-only | B fitted."""
    tiles = []
    for tg, ra, rb in zip(targets, results_a, results_b):
        for i in range(min(max_frames, len(tg))):
            tiles += [to_uint8(tg.image[i]), to_uint8(ra.render_init[i]), to_uint8(ra.render_fit[i]),
                      to_uint8(rb.render_init[i]), to_uint8(rb.render_fit[i])]
    s = scale if scale is not None else max(1, 128 // targets[0].image.shape[-1])
    save_png(path, grid(tiles, cols=5, scale=s))
    return path


def identity_ablation(main: IdentityVariant, other: IdentityVariant, main_targets, main_results, out: str, cfg,
                      split: str = "test", max_frames: int | None = None, lpips_vgg=None, csim_embedder=None,
                      csim_reason: str | None = None, progress: bool = True, log=print) -> dict:
    """Fit the held-out people with `other` as `main` was fitted (main_results: evaluate()'s), write
    out/table1_identity.md and out/ablation_identity.png; return {label: {"encoder_only", "fitted", ...}}."""
    persons = [t.person for t in main_targets]
    targets = targets_from_dataset(other.dataset, other.model.cfg, persons=persons, split=split, max_frames=max_frames,
                                   what="--ablation-identity")
    if [t.frame_index for t in targets] != [t.frame_index for t in main_targets]:
        raise DgnerfError("--ablation-identity: the held-out frames differ between the two datasets")
    results = []
    for tg in targets:
        r = fit_person(other.model, tg, cfg, progress=progress, metrics_vgg=lpips_vgg, csim_embedder=csim_embedder)
        results.append(r)
        log(f"[eval] identity ablation, {other.label}, {tg.person}: " +
            metric_changes(summarize(r.metrics_init), summarize(r.metrics_fit)))
        if r.interrupted:
            break
    n = len(results)
    rows = {}
    for v, rs in ((main, main_results[:n]), (other, results)):
        rows[v.label] = {"encoder_only": mean([r.metrics_init for r in rs]), "fitted": mean([r.metrics_fit for r in rs]),
                         "checkpoint": v.checkpoint, "dataset": v.dataset, "train_steps": v.train_steps,
                         "persons": {r.person: {"encoder_only": summarize(r.metrics_init), "fitted": summarize(r.metrics_fit)}
                                     for r in rs}}
    frames = sum(len(t) for t in targets[:n])
    steps = lambda v: "?" if v.train_steps is None else str(v.train_steps)  # noqa: E731
    lines = ["# Ablation: identity code from the encoder vs from coefficients (Table 1 form)", "",
             f"Held-out split `{split}`: {n} persons, {frames} frames, {main.model.cfg.image_size}x{main.model.cfg.image_size} px; "
             f"the same fitting as table2.md ({cfg.iters} steps, lambda_perceptual {cfg.lambda_perceptual:g}). Metrics "
             "inside the head mask, mean over all frames. \"start\" = the identity code the dataset gives the person "
             "(mean over its frames), each frame's expression code and tracked pose, no fitting.", "",
             header(["identity code", "training steps", "method"])]
    for v in (main, other):
        r = rows[v.label]
        lines.append(row(v.label, r["encoder_only"], [steps(v), "start (no fitting)"]))
        lines.append(row(v.label, r["fitted"], [steps(v), "fitted"]))
    lines += ["", "## Per person", "", header(["person", "identity code", "method"])]
    for p in [t.person for t in targets[:n]]:
        for v in (main, other):
            r = rows[v.label]["persons"][p]
            lines.append(row(p, r["encoder_only"], [v.label, "start"]))
            lines.append(row(p, r["fitted"], [v.label, "fitted"]))
    lines += ["", csim_note(csim_embedder, csim_reason), "",
              f"Models: {main.label}: `{main.checkpoint}` on `{main.dataset}`; {other.label}: `{other.checkpoint}` on "
              f"`{other.dataset}` (same frames, cameras and expression codes; only the identity code differs).", "",
              "On the built-in set the coefficients are the true parameters of each head (an ideal 3DMM tracker), "
              "also for held-out people; a real set has no 3DMM coefficients here unless you import your own tracker's "
              "(`dgnerf preprocess import`).", ""]
    with open(os.path.join(out, "table1_identity.md"), "w") as f:
        f.write("\n".join(lines))
    identity_ablation_png(os.path.join(out, "ablation_identity.png"), main_targets[:n], main_results[:n], results)
    return rows
