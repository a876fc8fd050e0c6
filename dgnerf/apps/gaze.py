"""Gaze editing (beyond the paper): render one person with the gaze code moved over a grid of directions.

Needs a model trained with gaze conditioning (HeadConfig gaze_dim > 0: `dgnerf train D --model
'{"gaze_dim": G}'` on a dataset whose frames carry gaze). The grid moves the horizontal gaze components
along the columns (image left -> image right) and the vertical ones along the rows (top row = up), each
from -spread to +spread standard deviations of the training set's gaze (the model config's gaze_mean /
gaze_std); the other components stay at the mean (e.g. the eyes' opening).

Which components are horizontal / vertical: a 2-d gaze is (horizontal, vertical), as the built-in set's
(yaw, pitch); the preprocessor's 6 features are named in the dataset's meta.gaze_names ("right_x",
"right_y", "left_x", "left_y", "right_open", "left_open": *_x horizontal, *_y vertical; + = towards
the image's right / up the face, the same signs as the built-in set's yaw / pitch).

    from dgnerf.apps.gaze import gaze_figure
    img, values = gaze_figure(model, HeadDataset("heads"), "p0000", steps=5)
"""
from __future__ import annotations

import torch

from dgnerf.apps.interp import person_codes
from dgnerf.camera import view_c2w, world_frame
from dgnerf.errors import DgnerfError
from dgnerf.media import grid, to_uint8


def gaze_axes(cfg, names=None, x=None, y=None) -> tuple[list[int], list[int]]:
    """(horizontal component indices, vertical ones) of the model's gaze code: given (x, y), else from the
    dataset's gaze names (*_x / *_y), else (0, 1) for a 2-d gaze; DgnerfError naming --x-dims/--y-dims."""
    G = cfg.gaze_dim
    if G == 0:
        raise DgnerfError("--checkpoint: this model has no gaze conditioning (config gaze_dim 0); train one on a dataset "
                          "with gaze: dgnerf train D --model '{\"gaze_dim\": G}' (docs/applications.md)")
    if x is None and y is None:
        if names and len(names) == G:
            x = [i for i, n in enumerate(names) if str(n).endswith("_x") or str(n) in ("yaw", "x")]
            y = [i for i, n in enumerate(names) if str(n).endswith("_y") or str(n) in ("pitch", "y")]
        elif G == 2:
            x, y = [0], [1]
        if not x or not y:
            raise DgnerfError(f"--x-dims/--y-dims: the model's gaze has {G} components"
                              + (f" named {list(names)}" if names else " without names")
                              + "; say which are horizontal and vertical, e.g. --x-dims 0,2 --y-dims 1,3")
    for flag, idx in (("--x-dims", x), ("--y-dims", y)):
        if not idx or any(not (isinstance(i, int) and 0 <= i < G) for i in idx):
            raise DgnerfError(f"{flag}: expected component indices in [0, {G - 1}] (gaze_dim {G}), got {idx}")
    if set(x) & set(y):
        raise DgnerfError(f"--x-dims {x} and --y-dims {y}: a component cannot be both horizontal and vertical")
    return list(x), list(y)


def gaze_values(cfg, x: list[int], y: list[int], steps: int = 5, spread: float = 2.0) -> torch.Tensor:
    """[steps (rows, top = +spread = up), steps (columns, left = -spread), G] gaze codes in the dataset's units:
    the mean, with the x components at mean + c * std and the y components at mean + r * std."""
    if not (isinstance(steps, int) and steps >= 2):
        raise DgnerfError(f"--steps: expected an integer >= 2, got {steps!r}")
    if not (spread > 0):
        raise DgnerfError(f"--spread: expected a number > 0 (standard deviations), got {spread!r}")
    G = cfg.gaze_dim
    mean = torch.tensor(cfg.gaze_mean or [0.0] * G, dtype=torch.float64)
    std = torch.tensor(cfg.gaze_std or [1.0] * G, dtype=torch.float64)
    t = torch.linspace(-spread, spread, steps, dtype=torch.float64)
    v = mean.expand(steps, steps, G).clone()
    for i in x:
        v[:, :, i] = mean[i] + t[None, :] * std[i]
    for i in y:
        v[:, :, i] = mean[i] + t.flip(0)[:, None] * std[i]
    return v.float()


@torch.no_grad()
def gaze_grid(model, z, beta, c2w, intrinsics, values: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    """Images [3,H,W] of one identity z [I] / expression beta [E] / camera c2w [4,4], intrinsics [4] (feature-map
    pixels) for every gaze code of values [R,C,G], row by row."""
    model.eval()
    dev = next(model.parameters()).device
    g = values.reshape(-1, values.shape[-1]).to(dev)
    n = g.shape[0]
    z, beta = z.to(dev).reshape(1, -1), beta.to(dev).reshape(1, -1)
    c2w, K = c2w.to(dev).reshape(1, 4, 4), intrinsics.to(dev).reshape(1, 4)
    images = []
    for i in range(0, n, batch):
        k = g[i:i + batch].shape[0]
        out = model(z.expand(k, -1), beta.expand(k, -1), c2w.expand(k, 4, 4), K.expand(k, 4),
                    gaze=g[i:i + batch]).image
        images += list(out.float().cpu())
    return images


def gaze_figure(model, dataset, person: str, steps: int = 5, spread: float = 2.0, yaw: float = 0.0,
                x=None, y=None, scale: int | None = None):
    """-> (uint8 [H,W,3] grid, values [steps, steps, G]): `person`'s mean identity at the set's mean expression,
    seen by the dataset's typical camera (its world's frontal view) turned by `yaw` degrees, over the gaze grid of
    gaze_values()."""
    cfg = model.cfg
    meta = dataset.manifest.get("meta") or {}
    # a `dgnerf realvideo` set keeps the preprocessor's meta under source_meta
    names = meta.get("gaze_names") or (meta.get("source_meta") or {}).get("gaze_names")
    xs, ys = gaze_axes(cfg, names, x, y)
    values = gaze_values(cfg, xs, ys, steps, spread)
    z, _, _, _ = person_codes(dataset, person)
    beta = dataset.arrays["expression"].mean(0)
    dist = float(dataset.arrays["c2w"][:, :3, 3].norm(dim=-1).median())
    fx = float(dataset.arrays["intrinsics"][:, 0].median()) * cfg.feature_size / dataset.width
    c = cfg.feature_size / 2
    K = torch.tensor([fx, fx, c, c])
    c2w = view_c2w(yaw, 0.0, dist, world_frame(dataset.arrays["c2w"]))
    imgs = gaze_grid(model, z, beta, c2w.reshape(4, 4), K, values)
    s = scale if scale is not None else max(1, 256 // cfg.image_size)
    return grid([to_uint8(im) for im in imgs], cols=steps, scale=s), values


__all__ = ["gaze_axes", "gaze_values", "gaze_grid", "gaze_figure"]
