"""Identity and expression interpolation grids: rows are camera views, columns the code moving from
one end to the other (disentanglement: an identity row keeps the expression, and vice versa)."""
from __future__ import annotations

import torch


def slerp_norm(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation rescaled to the interpolated norm of the ends (identity codes are
    recognition features: their norm carries little, their direction everything)."""
    z = (1 - t)[:, None] * a + t[:, None] * b
    target = (1 - t) * a.norm() + t * b.norm()
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12) * target[:, None]


@torch.no_grad()
def interpolation_grid(model, z_a, z_b, beta_a, beta_b, yaws=(-25.0, 0.0, 25.0), steps: int = 7,
                       distance: float | None = None, intrinsics=None, batch: int = 8) -> list[torch.Tensor]:
    """Images [3,H,W] row by row (one row per yaw): codes go from (z_a, beta_a) to (z_b, beta_b)."""
    from dgnerf.camera import orbit_c2w

    model.eval()
    dev = next(model.parameters()).device
    t = torch.linspace(0, 1, steps, device=dev)
    zs = slerp_norm(z_a.to(dev).reshape(-1), z_b.to(dev).reshape(-1), t)
    bs = (1 - t)[:, None] * beta_a.to(dev).reshape(1, -1) + t[:, None] * beta_b.to(dev).reshape(1, -1)
    dist = model.cfg.camera_distance if distance is None else distance
    K = model.default_intrinsics(1, device=dev) if intrinsics is None else intrinsics.to(dev).reshape(1, 4)
    images = []
    for yaw in yaws:
        c2w = orbit_c2w(float(yaw), 0.0, 0.0, dist, device=dev).expand(steps, 4, 4)
        for i in range(0, steps, batch):
            sl = slice(i, i + batch)
            n = zs[sl].shape[0]
            out = model(zs[sl], bs[sl], c2w[sl], K.expand(n, 4), path="fast")["image"]
            images += list(out.float().cpu())
    return images
