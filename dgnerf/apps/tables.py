"""Markdown tables of image metrics, shared by the evaluation and the ablations."""
from __future__ import annotations

import torch

METRICS = (("l1", "L1 ↓", "{:.4f}"), ("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("lpips", "LPIPS ↓", "{:.3f}"),
           ("csim", "CSIM ↑", "{:.3f}"))
HIGHER_IS_BETTER = ("psnr", "ssim", "csim")


def row(name: str, m: dict, extra: list[str] | None = None) -> str:
    cells = [name] + (extra or []) + [fmt.format(m[k]) if k in m else "n/a" for k, _, fmt in METRICS]
    return "| " + " | ".join(cells) + " |"


def header(first: list[str]) -> str:
    names = first + [title for _, title, _ in METRICS]
    return "| " + " | ".join(names) + " |\n|" + "|".join(["---"] * len(names)) + "|"


def csim_note(embedder, reason) -> str:
    """The line under a table that says how CSIM was computed, or why its column is n/a."""
    if embedder is not None:
        return (f"CSIM: cosine of {getattr(embedder, 'name', 'the identity encoder')} features of render and ground truth "
                "(both white outside the head mask; FaceNet's face crop from the tracked landmarks when the set has "
                "them, else the head mask's box).")
    return f"CSIM: n/a, not computed: {reason or 'no identity encoder given'}."


def mean(per_frame: list[dict]) -> dict:
    """Mean over all frames of a list of {metric: [n] tensor}."""
    keys = set(per_frame[0]).intersection(*per_frame[1:]) if per_frame else set()
    return {k: float(torch.cat([m[k].double() for m in per_frame]).mean()) for k in keys}


__all__ = ["METRICS", "HIGHER_IS_BETTER", "row", "header", "csim_note", "mean"]
