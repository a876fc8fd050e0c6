"""A head-shaped density prior for untrained models (a geometric initialisation, no training).

A randomly initialised field has a diffuse density everywhere (softplus of noise): it renders as fog,
and early ray termination or empty-space skipping have nothing to exploit. `apply_head_prior` sets the
weights of K dedicated trunk units (K = n_dirs, default 64 of 256) so that the density is a solid
ellipsoid around the origin, the head's rough volume, independent of the codes:

    layer 0, unit k:      a_k = relu(n_k . (x / radii))         n_k: K directions on the unit sphere
    layers 1..D-1:        unit k copies a_k (weight 1 from unit k, 0 from everything else; a_k >= 0
                          so the ReLU passes it unchanged)
    sigma head:           sigma_raw = slope * (1 - (4 / K) sum_k a_k)

Since the mean over directions of relu(n . y) is |y| / 4, sigma_raw ~ slope * (1 - r) with r the
ellipsoid radius of x: strongly positive inside, strongly negative (density ~0 after softplus)
outside. The other units keep their random weights, so features and colours stay random but every
unit still reads the dedicated ones (the shape shows in the features). Gradients flow through all of
it; training reshapes it freely.
"""
from __future__ import annotations

import math

import torch


def sphere_directions(n: int, dtype=torch.float32) -> torch.Tensor:
    """n nearly uniform unit vectors (Fibonacci sphere) -> [n, 3]."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1).to(dtype)


@torch.no_grad()
def apply_head_prior(model, radii=(0.75, 0.95, 0.85), slope: float = 40.0, n_dirs: int | None = None):
    """Make the model's density a solid ellipsoid with semi-axes `radii` (x, y, z) in place; returns the model.
    n_dirs: dedicated trunk units (default min(64, mlp_width // 2))."""
    f, cfg = model.field, model.cfg
    W = cfg.mlp_width
    K = min(64, W // 2) if n_dirs is None else n_dirs
    if not 3 <= K <= W:
        raise ValueError(f"apply_head_prior: argument 'n_dirs' expected an int in [3, mlp_width={W}], got {n_dirs!r}")
    if len(radii) != 3 or min(radii) <= 0:
        raise ValueError(f"apply_head_prior: argument 'radii' expected three positive semi-axes, got {radii!r}")
    n = sphere_directions(K, f.trunk[0].weight.dtype).to(f.trunk[0].weight.device)
    n = n / torch.tensor(radii, dtype=n.dtype, device=n.device)
    U = cfg.input_dim
    for i, layer in enumerate(f.trunk):
        layer.weight[:K] = 0
        layer.bias[:K] = 0
        if i == 0:
            layer.weight[:K, :3] = n  # gamma(x) starts with x itself
        else:
            off = U if i == cfg.skip_layer else 0  # the skip layer's input is cat([u, h])
            layer.weight[:K, off : off + K] = torch.eye(K, dtype=n.dtype, device=n.device)
    f.sigma.weight.zero_()
    f.sigma.weight[0, :K] = -4.0 * slope / K
    f.sigma.bias.fill_(slope)
    return model


__all__ = ["apply_head_prior", "sphere_directions"]
