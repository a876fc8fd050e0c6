"""Pure-PyTorch twins of every dgnerf op: the oracle for the tests and the fallback when the compiled
extension is unavailable. Plain formulations on purpose: clarity over speed. Differentiable by torch
autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn

_M32 = 0xFFFFFFFF


def _hash_u32(x):
    """The integer hash of csrc/include/dgnerf/math.h (hash_u32) on int64 tensors or Python ints in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    x = x ^ (x >> 16)
    return x


def uniform01(seed, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Counter-based uniforms in [0, 1), bit-identical to the kernels' uniform01(seed, index).
    seed: an int or an int64 tensor broadcastable against index."""
    s = torch.as_tensor(seed, dtype=torch.int64, device=index.device)
    # (s >> 32) & M32 is the high word of the two's-complement uint64 view, as in the C++ code
    h0 = _hash_u32((s & _M32) ^ _hash_u32(((s >> 32) & _M32) ^ 0x9E3779B9))
    index = index.to(torch.int64)
    h = _hash_u32(((index >> 32) & _M32) ^ h0)
    h = _hash_u32((index & _M32) ^ h)
    return (h >> 8).to(dtype) * (1.0 / 16777216.0)


def camera_coords(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """c = [(u+.5-cx)/fx, (v+.5-cy)/fy, 1] per pixel, ray r = v * width + u -> [B, H*W, 3]."""
    dtype, device = intrinsics.dtype, intrinsics.device
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    u = u.reshape(1, -1)
    v = v.reshape(1, -1)
    fx, fy, cx, cy = (intrinsics[:, k : k + 1] for k in range(4))
    xc = (u + 0.5 - cx) / fx
    yc = (v + 0.5 - cy) / fy
    return torch.stack([xc, yc, torch.ones_like(xc)], dim=-1)


def camera_dirs(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int):
    """Unnormalised world directions d = R c per pixel -> [B, H*W, 3], camera coords c [B, H*W, 3], origins [B, 3]."""
    cam = camera_coords(intrinsics, height, width)
    d = torch.einsum("bij,brj->bri", c2w[:, :3, :3], cam)
    return d, cam, c2w[:, :3, 3]


def sample_rays_reference(
    c2w, intrinsics, height, width, n_samples, near, far, stratified=False, seed=0, sphere_radius=0.0
):
    """Twin of `dgnerf.ops.sample_rays` (formulas in csrc/include/dgnerf/sampling.h).

    The depths (and hence deltas) are sample positions and carry no gradient; points and dirs are
    differentiable with respect to c2w and intrinsics.
    """
    d, _, o = camera_dirs(c2w, intrinsics, height, width)
    dirs = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    B, R, S = c2w.shape[0], height * width, n_samples
    with torch.no_grad():
        dd = dirs.detach()
        tn = torch.full((B, R), float(near), dtype=c2w.dtype, device=c2w.device)
        tf = torch.full((B, R), float(far), dtype=c2w.dtype, device=c2w.device)
        if sphere_radius > 0:
            oo = o.detach()[:, None, :]
            b = (oo * dd).sum(-1)
            c = (oo * oo).sum(-1) - sphere_radius**2
            disc = b * b - c
            sq = torch.sqrt(torch.clamp(disc, min=0))
            a0 = torch.clamp(-b - sq, min=float(near))
            a1 = torch.clamp(-b + sq, max=float(far))
            hit = (disc > 0) & (a1 > a0)
            tn = torch.where(hit, a0, tn)
            tf = torch.where(hit, a1, tf)
        i = torch.arange(S, device=c2w.device, dtype=c2w.dtype)
        if stratified:
            # image b uses seed + b; rays and samples are counted within the image
            index = torch.arange(R * S, device=c2w.device).reshape(1, R, S)
            seeds = int(seed) + torch.arange(B, device=c2w.device, dtype=torch.int64).reshape(B, 1, 1)
            off = uniform01(seeds, index, c2w.dtype)
        else:
            off = torch.full((B, R, S), 0.5, dtype=c2w.dtype, device=c2w.device)
        step = (tf - tn) / S
        depths = tn[..., None] + (i + off) * step[..., None]
        deltas = torch.empty_like(depths)
        deltas[..., :-1] = depths[..., 1:] - depths[..., :-1]
        deltas[..., -1] = tf - depths[..., -1] + (depths[..., 0] - tn)
    points = o[:, None, None, :] + depths[..., None] * dirs[:, :, None, :]
    return points, dirs, depths, deltas


def volume_weights(sigma, deltas, threshold=0.0):
    """w_i = T_i (1 - exp(-sigma_i delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j); samples from the first
    with T_i < threshold on are cut (weight 0)."""
    tau = sigma * deltas
    excl = torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau, dim=-1)[..., :-1]], dim=-1)
    T = torch.exp(-excl)
    w = T * (-torch.expm1(-tau))
    if threshold > 0:
        keep = torch.cumprod((T >= threshold).to(w.dtype), dim=-1)
        w = w * keep
    return w


def integrate_features_reference(sigma, features, depths, deltas, background, threshold=0.0):
    """Twin of `dgnerf.ops.integrate_features`: sigma [...,S], features [...,S,C] -> feature [...,C],
    opacity [...], depth [...] (docs/design.md, "The model")."""
    w = volume_weights(sigma, deltas, threshold)
    opacity = w.sum(-1)
    feature = (w[..., None] * features).sum(-2) + (1 - opacity)[..., None] * background
    depth = (w * depths).sum(-1)
    return feature, opacity, depth


# --- field MLP (twin of dgnerf.ops.field_mlp) ---------------------------------------------------


def field_mlp_reference(x_enc, d_enc, cond0, cond_skip, weights, output="feature"):
    """Twin of `dgnerf.ops.field_mlp` (same arguments; `weights` a FieldWeights), plain linear layers:
    h_0 = relu(W0x x + cond0), h_l = relu(W_l h + b_l), the skip layer relu(Wsh h + Wsx x + cond_skip),
    sigma = w_sigma h + b_sigma, hdir = relu(Wd [h, d] + b_d), F = W_out hdir + b_out.
    Returns (sigma [B,P], F [B,P,F]) or, for output="hidden", (sigma, hdir [B,P,Wd])."""
    h = torch.relu(Fn.linear(x_enc, weights.w0x) + cond0[:, None, :])
    bi = 0
    for layer in range(1, weights.depth):
        w = weights.hidden_w[layer - 1]
        if layer == weights.skip:
            h = torch.relu(Fn.linear(h, w) + Fn.linear(x_enc, weights.skip_wx) + cond_skip[:, None, :])
        else:
            h = torch.relu(Fn.linear(h, w, weights.hidden_b[bi]))
            bi += 1
    sigma = Fn.linear(h, weights.sigma_w, weights.sigma_b)[..., 0]
    hdir = torch.relu(Fn.linear(torch.cat([h, d_enc], dim=-1), weights.dir_w, weights.dir_b))
    if output == "hidden":
        return sigma, hdir
    return sigma, Fn.linear(hdir, weights.out_w, weights.out_b)
