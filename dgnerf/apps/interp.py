"""Identity and expression interpolation grids: rows are camera views, columns the code moving from
one end to the other (disentanglement: an identity row keeps the expression, and vice versa)."""
from __future__ import annotations

import torch

from dgnerf.camera import view_c2w, world_frame
from dgnerf.errors import DgnerfError
from dgnerf.media import grid, to_uint8


def slerp_norm(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation rescaled to the interpolated norm of the ends (identity codes are
    recognition features: their norm carries little, their direction everything)."""
    z = (1 - t)[:, None] * a + t[:, None] * b
    target = (1 - t) * a.norm() + t * b.norm()
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12) * target[:, None]


@torch.no_grad()
def interpolation_grid(model, z_a, z_b, beta_a, beta_b, yaws=(-25.0, 0.0, 25.0), steps: int = 7,
                       distance: float | None = None, intrinsics=None, batch: int = 8,
                       world: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Images [3,H,W] row by row (one row per yaw): codes go from (z_a, beta_a) to (z_b, beta_b).
    world: the dataset's world_frame (None: the built-in convention)."""
    model.eval()
    dev = next(model.parameters()).device
    t = torch.linspace(0, 1, steps, device=dev)
    zs = slerp_norm(z_a.to(dev).reshape(-1), z_b.to(dev).reshape(-1), t)
    bs = (1 - t)[:, None] * beta_a.to(dev).reshape(1, -1) + t[:, None] * beta_b.to(dev).reshape(1, -1)
    dist = model.cfg.camera_distance if distance is None else distance
    K = model.default_intrinsics(1, device=dev) if intrinsics is None else intrinsics.to(dev).reshape(1, 4)
    images = []
    for yaw in yaws:
        c2w = view_c2w(yaw, 0.0, dist, world, device=dev).expand(steps, 4, 4)
        for i in range(0, steps, batch):
            sl = slice(i, i + batch)
            n = zs[sl].shape[0]
            out = model(zs[sl], bs[sl], c2w[sl], K.expand(n, 4)).image
            images += list(out.float().cpu())
    return images


def person_codes(dataset, person: str):
    """(mean identity [I], expression rows [n,E], c2w rows [n,4,4], intrinsics rows [n,4] in image pixels) of
    one person of a HeadDataset; DgnerfError naming the persons when it is not there."""
    rows = [j for j, f in enumerate(dataset.frames) if f.person == person]
    if not rows:
        have = dataset.persons
        raise DgnerfError(f"person {person!r} is not in {dataset.root} (it has {have[:12]}{'...' if len(have) > 12 else ''})")
    a = dataset.arrays
    return a["identity"][rows].mean(0), a["expression"][rows], a["c2w"][rows], a["intrinsics"][rows]


def interpolation_figure(model, dataset, person_a: str, person_b: str, steps: int = 7, yaws=(-25.0, 0.0, 25.0),
                         scale: int | None = None):
    """One PNG-ready uint8 image: on top the identity grid (A -> B at the set's mean expression, one row per
    yaw), below the expression grid (A's identity between A's two most different expressions).
    The camera is the dataset's typical one (median distance and focal, its world's frontal view: world_frame)."""
    import numpy as np

    za, Ea, _, _ = person_codes(dataset, person_a)
    zb, _, _, _ = person_codes(dataset, person_b)
    dist = float(dataset.arrays["c2w"][:, :3, 3].norm(dim=-1).median())
    fx = float(dataset.arrays["intrinsics"][:, 0].median()) * model.cfg.feature_size / dataset.width
    c = model.cfg.feature_size / 2
    K = torch.tensor([[fx, fx, c, c]])
    beta_mean = dataset.arrays["expression"].mean(0)
    s = scale if scale is not None else max(1, 128 // model.cfg.image_size)
    W = world_frame(dataset.arrays["c2w"])
    ident = interpolation_grid(model, za, zb, beta_mean, beta_mean, yaws=yaws, steps=steps, distance=dist, intrinsics=K,
                               world=W)
    if Ea.shape[0] >= 2:
        i, j = divmod(int(torch.cdist(Ea, Ea).argmax()), Ea.shape[0])
    else:
        i, j = 0, 0
    expr = interpolation_grid(model, za, za, Ea[i], Ea[j], yaws=yaws, steps=steps, distance=dist, intrinsics=K, world=W)
    top = grid([to_uint8(x) for x in ident], cols=steps, scale=s)
    bottom = grid([to_uint8(x) for x in expr], cols=steps, scale=s)
    sep = np.full((6, top.shape[1], 3), 255, np.uint8)
    return np.concatenate([top, sep, bottom], 0)
