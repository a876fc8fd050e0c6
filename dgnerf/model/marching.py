"""How the fast path walks the field along its rays: densely, with early ray termination, or skipping empty
space (docs/design.md, "Speed-ups"). Each strategy takes the field as a function

    field(x_enc [B, N, P], d_enc [B, N, Dd], cond0 [B, W], cond_skip [B, W] | None)
        -> sigma [B, N] (after the density activation), hdir [B, N, Wd]

and returns sigma [B, R, S] and hdir [B, R, S, Wd] for every sample of rays x_enc [B, R, S, P],
d_enc [B, R, Dd] (one direction per ray); samples a strategy did not evaluate count as empty (0).

- dense: every sample; exact.
- early_termination(threshold): samples are evaluated in chunks along the rays and a ray stops once its
  transmittance falls below `threshold`; equal to integrating the full field with that threshold.
- skip_empty(stride, eps): a coarse pass at every stride-th sample, then the field only where a
  neighbouring coarse sample has sigma * delta > eps (and, with a threshold, where the coarse transmittance
  estimate is above it). Approximate: measured by image PSNR against dense in the benchmarks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as Fn

FieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


def _per_sample(d_enc: torch.Tensor, S: int) -> torch.Tensor:
    B, R, Dd = d_enc.shape
    return d_enc[:, :, None, :].expand(B, R, S, Dd).reshape(B, R * S, Dd)


def dense(field: FieldFn, x_enc, d_enc, cond0, cond_skip):
    B, R, S, P = x_enc.shape
    sigma, hdir = field(x_enc.reshape(B, R * S, P), _per_sample(d_enc, S), cond0, cond_skip)
    return sigma.view(B, R, S), hdir.view(B, R, S, -1)


def early_termination(field: FieldFn, x_enc, d_enc, cond0, cond_skip, deltas, threshold: float, chunk: int,
                      hidden_width: int):
    B, R, S = deltas.shape
    dev, base = x_enc.device, deltas.dtype
    log_t = torch.zeros(B, R, device=dev, dtype=base)
    active = torch.ones(B, R, dtype=torch.bool, device=dev)
    log_thr = float(torch.log(torch.tensor(threshold, dtype=torch.float64)))
    sig_chunks, hdir_chunks = [], []
    for c0 in range(0, S, chunk):
        c1 = min(S, c0 + chunk)
        k = c1 - c0
        sig_c = deltas.new_zeros((B, R, k))
        hdir_c = deltas.new_zeros((B, R, k, hidden_width))
        for b in range(B):
            r = active[b].nonzero()[:, 0]
            if r.numel() == 0:
                continue
            x_rows = x_enc[b, r, c0:c1].reshape(1, -1, x_enc.shape[-1])
            d_rows = _per_sample(d_enc[b, r][None], k)
            s, hd = field(x_rows, d_rows, cond0[b:b + 1], None if cond_skip is None else cond_skip[b:b + 1])
            s = s[0].view(-1, k)
            sig_c = sig_c.index_put((torch.full_like(r, b), r), s)
            hdir_c = hdir_c.index_put((torch.full_like(r, b), r), hd[0].view(-1, k, hidden_width))
            with torch.no_grad():
                log_t[b, r] -= (s.detach() * deltas[b, r, c0:c1]).sum(-1)
        with torch.no_grad():
            active &= log_t >= log_thr
        sig_chunks.append(sig_c)
        hdir_chunks.append(hdir_c)
    return torch.cat(sig_chunks, dim=-1), torch.cat(hdir_chunks, dim=-2)


def skip_empty(field: FieldFn, x_enc, d_enc, cond0, cond_skip, deltas, stride: int, eps: float,
               threshold: float, hidden_width: int):
    """Both passes run on all images at once (one field call each; the occupied samples of each image are
    packed to the front of a [B, Pmax] batch, padded with copies of its first one), so the cost does not
    grow with per-image launches and host syncs: 3 syncs per batch instead of 2 per image."""
    B, R, S = deltas.shape
    dev, P, dw, k = x_enc.device, x_enc.shape[-1], hidden_width, stride
    ci = torch.arange(k // 2, S, k, device=dev)
    Sc = ci.numel()
    sig_c, hdir_c = dense(field, x_enc[:, :, ci], d_enc, cond0, cond_skip)
    with torch.no_grad():
        # Fine sample i belongs to coarse cell j = min(i // k, Sc - 1); it is occupied when the densest of
        # cells j-1, j, j+1 would make it non-negligible (tau = sigma * delta > eps).
        cell = torch.clamp(torch.arange(S, device=dev) // k, max=Sc - 1)
        sc = sig_c.detach()
        pooled = Fn.max_pool1d(sc.reshape(B * R, 1, Sc), 3, stride=1, padding=1).reshape(B, R, Sc)
        keep = pooled[..., cell] * deltas > eps
        if threshold > 0:
            tau = sc[..., cell] * deltas
            excl = torch.cumsum(tau, dim=-1) - tau
            keep &= excl <= -float(torch.log(torch.tensor(threshold, dtype=torch.float64)))
        keep[..., ci] = False  # the coarse samples are already evaluated
        flat = keep.reshape(B, R * S)
        counts = flat.sum(1)
        p_max = int(counts.max())
    sigma = deltas.new_zeros((B, R, S)).index_copy(2, ci, sig_c)
    hdir = deltas.new_zeros((B, R, S, dw)).index_copy(2, ci, hdir_c)
    if p_max == 0:
        return sigma, hdir
    with torch.no_grad():
        # Occupied samples first, in order (a stable sort of "not kept"), then padding.
        order = torch.sort((~flat).to(torch.int8), dim=1, stable=True).indices[:, :p_max]
        valid = torch.arange(p_max, device=dev)[None] < counts[:, None]
        idx = torch.where(valid, order, order[:, :1])  # [B, Pmax] flat sample index r * S + s
        ray = idx // S
    x_f = x_enc.reshape(B, R * S, P).gather(1, idx[..., None].expand(B, p_max, P))
    d_f = d_enc.gather(1, ray[..., None].expand(B, p_max, d_enc.shape[-1]))
    s_f, hd = field(x_f, d_f, cond0, cond_skip)
    with torch.no_grad():
        bb, jj = valid.nonzero(as_tuple=True)
        ii = idx[bb, jj]
    sigma = sigma.reshape(B, R * S).index_put((bb, ii), s_f[bb, jj]).reshape(B, R, S)
    hdir = hdir.reshape(B, R * S, dw).index_put((bb, ii), hd[bb, jj]).reshape(B, R, S, dw)
    return sigma, hdir


__all__ = ["FieldFn", "dense", "early_termination", "skip_empty"]
