"""Pure-PyTorch twins of every dgnerf op: the oracle for the tests and the fallback when the compiled
extension is unavailable. Plain formulations on purpose: clarity over speed. Differentiable by torch
autograd.
"""
from __future__ import annotations

import math

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


# --- hash-grid encoding (twin of dgnerf.ops.hash_encode) -----------------------------------------

HASH_PRIMES = (1, 2654435761, 805459861)


def hash_grid_resolutions(n_levels: int, base_resolution: int, finest_resolution: int) -> list[int]:
    """N_l = floor(base * b^l), b = exp((ln finest - ln base) / (L - 1)), in double exactly as the kernels
    (csrc/include/dgnerf/hashgrid.h, hash_level_resolution) compute it; a value within 1e-9 relative below
    an integer counts as that integer, so the last level is exactly finest_resolution."""
    out = []
    for level in range(n_levels):
        if n_levels <= 1 or level == 0:
            out.append(int(base_resolution))
            continue
        b = math.exp((math.log(float(finest_resolution)) - math.log(float(base_resolution))) / float(n_levels - 1))
        v = float(base_resolution) * math.pow(b, float(level))
        out.append(math.floor(v * (1.0 + 1e-9)))
    return out


def hash_vertex_rows(v: torch.Tensor, resolution: int, table_size: int) -> torch.Tensor:
    """Table rows of integer vertices v [..., 3] (int64) of a level with resolution N: dense
    vx + vy (N+1) + vz (N+1)^2 when (N+1)^3 <= T, else (vx ^ vy * 2654435761 ^ vz * 805459861) mod T in
    uint32 arithmetic (each product masked to 32 bits; the coordinates are <= 2^20 so int64 holds it)."""
    side = resolution + 1
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    if side**3 <= table_size:
        return vx + side * (vy + side * vz)
    h = (vx * HASH_PRIMES[0]) ^ ((vy * HASH_PRIMES[1]) & _M32) ^ ((vz * HASH_PRIMES[2]) & _M32)
    return h % table_size


def hash_encode_reference(x, table, base_resolution, finest_resolution, bbox_min=(-1.0, -1.0, -1.0),
                          bbox_max=(1.0, 1.0, 1.0), out_dtype=None):
    """Twin of `dgnerf.ops.hash_encode`: x [N,3], table [L,T,F] -> [N, L*F] (level-major).

    Per level: p = (x - lo) * s with s = N_l / (hi - lo) (rounded once to the table's dtype), p clamped
    into [0, N_l] (NaN -> 0; the clamp cuts the gradient to x on that axis), cell = min(floor(p), N_l - 1),
    w = p - cell, and the 8 corners summed in the order i = 0..7 (bit 0: x, bit 1: y, bit 2: z) with
    weight (wx * wy) * wz. Differentiable by autograd with respect to table and x.
    """
    L, T, _ = table.shape
    dtype, device = table.dtype, table.device
    lo = torch.tensor([float(v) for v in bbox_min], dtype=dtype, device=device)
    extent = [float(h) - float(lw) for lw, h in zip(bbox_min, bbox_max)]
    outs = []
    for level, res in enumerate(hash_grid_resolutions(L, base_resolution, finest_resolution)):
        scale = torch.tensor([res / e for e in extent], dtype=dtype, device=device)
        p = (x - lo) * scale
        p = torch.where(p >= 0, p, torch.zeros_like(p))  # NaN fails p >= 0 too
        p = torch.where(p <= res, p, torch.full_like(p, float(res)))
        cell = p.detach().floor().to(torch.int64).clamp(max=res - 1)
        frac = p - cell.to(dtype)
        bits = torch.tensor([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.int64, device=device)
        rows = hash_vertex_rows(cell[:, None, :] + bits, res, T)  # [N, 8]
        vals = table[level][rows]  # [N, 8, F]: one gather per level
        acc = None
        for i in range(8):
            wd = [frac[:, d] if bits[i, d] else 1 - frac[:, d] for d in range(3)]
            term = (wd[0] * wd[1] * wd[2])[:, None] * vals[:, i]
            acc = term if acc is None else acc + term
        outs.append(acc)
    out = torch.cat(outs, dim=-1)
    return out if out_dtype is None else out.to(out_dtype)
