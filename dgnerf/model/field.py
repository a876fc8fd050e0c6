"""The conditioned field MLP (DESIGN §2) and its two evaluations over the same weights.

Layout (agreed with dgnerf.ops.field_mlp): u = [gamma(x), z_id, beta] (+ the normalised gaze code after beta
when cfg.gaze_dim > 0: gaze_condition() appends it to beta, so every path treats it as conditioning);
    h_1 = relu(L_0 u);  h_{i+1} = relu(L_i h_i), except L_skip whose input is cat([u, h_skip]) (u first)
    sigma_raw = L_sigma h_D                       (the density activation is applied by the caller)
    hdir = relu(L_dir cat([h_D, gamma(d)]));  F = L_out hdir   (F: feature_dim, no activation)

`forward_reference` runs exactly that on the unfolded input. `folded_hidden` is the exact fast form
(DESIGN §3) written in plain PyTorch: the [z_id, beta] columns of L_0 and L_skip become one bias per
image, the gamma(d) columns of L_dir one bias per ray, and the output layer L_out is left to the
caller (integrate hdir, then project once per ray).
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from dgnerf.model.config import HeadConfig


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^{n-1} x), cos(2^{n-1} x)] -> [..., 3 + 6 n]."""
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    xf = x[..., None, :] * freqs[:, None]  # [..., n, 3]
    sc = torch.stack([torch.sin(xf), torch.cos(xf)], dim=-2)  # [..., n, 2, 3]
    return torch.cat([x, sc.flatten(-3)], dim=-1)


class FieldMLP(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        W, U = cfg.mlp_width, cfg.input_dim
        layers = []
        for i in range(cfg.mlp_depth):
            fan_in = U if i == 0 else (U + W if i == cfg.skip_layer else W)
            layers.append(nn.Linear(fan_in, W))
        self.trunk = nn.ModuleList(layers)
        self.sigma = nn.Linear(W, 1)
        self.dir_layer = nn.Linear(W + cfg.dir_enc_dim, cfg.dir_width)
        self.out = nn.Linear(cfg.dir_width, cfg.feature_dim)

    # ------------------------------------------------------------------ optional gaze conditioning
    def gaze_condition(self, beta: torch.Tensor, gaze=None) -> torch.Tensor:
        """beta [B, beta_dim] -> [beta, g] [B, beta_dim + gaze_dim] with g = (gaze - gaze_mean) / gaze_std
        for a model with cfg.gaze_dim > 0 (gaze None: g = 0, the training set's mean gaze); beta itself
        (unchanged) for a model without gaze. gaze: [B, gaze_dim] in the dataset's units."""
        cfg = self.cfg
        if cfg.gaze_dim == 0:
            if gaze is not None:
                raise ValueError("HeadModel: argument 'gaze' given, but this model has no gaze conditioning "
                                 "(config gaze_dim 0)")
            return beta
        B = beta.shape[0]
        if gaze is None:
            return torch.cat([beta, beta.new_zeros(B, cfg.gaze_dim)], dim=-1)
        if not isinstance(gaze, torch.Tensor) or not gaze.is_floating_point():
            got = gaze.dtype if isinstance(gaze, torch.Tensor) else type(gaze).__name__
            raise ValueError(f"HeadModel: argument 'gaze' expected a floating-point torch.Tensor, got {got}")
        if gaze.dim() != 2 or tuple(gaze.shape) != (B, cfg.gaze_dim):
            raise ValueError(f"HeadModel: argument 'gaze' expected shape [{B}, {cfg.gaze_dim}] (gaze code), got "
                             f"{list(gaze.shape)}")
        if gaze.device != beta.device:
            raise ValueError(f"HeadModel: argument 'gaze' is on {gaze.device} but the model is on {beta.device}")
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            if not bool(torch.isfinite(gaze).all()):
                raise ValueError("HeadModel: argument 'gaze' contains NaN or Inf values")
        g = gaze.to(beta.dtype)
        if cfg.gaze_mean:
            g = g - torch.tensor(cfg.gaze_mean, dtype=g.dtype, device=g.device)
        if cfg.gaze_std:
            g = g / torch.tensor(cfg.gaze_std, dtype=g.dtype, device=g.device)
        return torch.cat([beta, g], dim=-1)

    # ------------------------------------------------------------------ reference (unfolded)
    def forward_reference(self, u: torch.Tensor, d_enc: torch.Tensor):
        """u [..., input_dim], d_enc [..., dir_enc_dim] -> sigma_raw [...], F [..., feature_dim]."""
        h = u
        for i, layer in enumerate(self.trunk):
            if i == self.cfg.skip_layer:
                h = torch.cat([u, h], dim=-1)
            h = torch.relu(layer(h))
        sigma_raw = self.sigma(h)[..., 0]
        hdir = torch.relu(self.dir_layer(torch.cat([h, d_enc], dim=-1)))
        return sigma_raw, self.out(hdir)

    # ------------------------------------------------------------------ folded (exact speed-up)
    def fold(self, cond: torch.Tensor, d_enc: torch.Tensor):
        """Per-image and per-ray biases of the folded form.

        cond [B, cond_dim] = [z_id, beta(, gaze)] -> bias0 [B, W], bias_skip [B, W] (or None);
        d_enc [B, R, dir_enc_dim] -> dir_bias [B, R, dir_width].
        """
        P = self.cfg.pos_enc_dim
        l0 = self.trunk[0]
        bias0 = Fn.linear(cond, l0.weight[:, P:], l0.bias)
        bias_skip = None
        if 0 < self.cfg.skip_layer < len(self.trunk):
            ls = self.trunk[self.cfg.skip_layer]
            bias_skip = Fn.linear(cond, ls.weight[:, P : P + self.cfg.cond_dim], ls.bias)
        W = self.cfg.mlp_width
        dir_bias = Fn.linear(d_enc, self.dir_layer.weight[:, W:], self.dir_layer.bias)
        return bias0, bias_skip, dir_bias

    def folded_weights(self, dtype=None):
        """The weights the folded form multiplies per sample, optionally cast (bf16/fp16 paths)."""
        P, C, W = self.cfg.pos_enc_dim, self.cfg.cond_dim, self.cfg.mlp_width

        def cast(t):
            return t if dtype is None or t.dtype == dtype else t.to(dtype)

        ws = []
        for i, layer in enumerate(self.trunk):
            if i == 0:
                ws.append((cast(layer.weight[:, :P]), None))
            elif i == self.cfg.skip_layer:
                ws.append((cast(layer.weight[:, :P]), cast(layer.weight[:, P + C :])))
            else:
                ws.append((cast(layer.weight), cast(layer.bias)))
        return {
            "trunk": ws,
            "sigma": (cast(self.sigma.weight), cast(self.sigma.bias)),
            "dir": cast(self.dir_layer.weight[:, :W]),
        }


def folded_hidden(x_enc, bias0, bias_skip, dir_bias, weights, skip_layer: int, with_hidden: bool = True,
                  return_trunk: bool = False):
    """The folded field in plain PyTorch, broadcasting form (any leading dims).

    x_enc [..., P]; bias0, bias_skip [..., W] and dir_bias [..., dir_width] broadcastable to the
    leading dims of x_enc (per image / per ray). Returns sigma_raw [...] and hdir [..., dir_width]
    (None when with_hidden is False: a density-only pass), plus the trunk output h when return_trunk.
    All tensors must share one dtype (the caller casts for bf16/fp16).
    """
    h = None
    for i, (w, b) in enumerate(weights["trunk"]):
        if i == 0:
            h = torch.relu(torch.matmul(x_enc, w.t()) + bias0)
        elif i == skip_layer:
            h = torch.relu(torch.matmul(x_enc, w.t()) + torch.matmul(h, b.t()) + bias_skip)
        else:
            h = torch.relu(Fn.linear(h, w, b))
    ws, bs = weights["sigma"]
    sigma_raw = Fn.linear(h, ws, bs)[..., 0]
    hdir = torch.relu(torch.matmul(h, weights["dir"].t()) + dir_bias) if with_hidden else None
    if return_trunk:
        return sigma_raw, hdir, h
    return sigma_raw, hdir


def folded_rows(x_enc, bias0, bias_skip, dir_bias, weights, skip_layer: int, samples_per_ray: int = 0,
                with_hidden: bool = True, return_trunk: bool = False):
    """The folded field on rows of ONE image, written for speed (addmm with the folded bias, in-place ReLU).

    x_enc [N, P]; bias0, bias_skip [W] (this image's folded conditioning); dir_bias [N, dir_width], or
    [N / samples_per_ray, dir_width] (one per ray) when samples_per_ray > 0 and the rows are whole rays.
    Same outputs as folded_hidden: sigma_raw [N], hdir [N, dir_width] or None, (h [N, W]).
    """
    h = None
    for i, (w, b) in enumerate(weights["trunk"]):
        if i == 0:
            h = torch.addmm(bias0, x_enc, w.t()).relu_()
        elif i == skip_layer:
            o = torch.addmm(bias_skip, x_enc, w.t())
            h = o.addmm_(h, b.t()).relu_()
        else:
            h = torch.addmm(b, h, w.t()).relu_()
    ws, bs = weights["sigma"]
    sigma_raw = torch.addmm(bs, h, ws.t())[:, 0]
    hdir = None
    if with_hidden:
        hdir = dir_from_trunk(h, dir_bias, weights, samples_per_ray)
    if return_trunk:
        return sigma_raw, hdir, h
    return sigma_raw, hdir


def dir_from_trunk(h, dir_bias, weights, samples_per_ray: int = 0):
    """hdir = relu(W_dir,h h + dir_bias) (the coarse samples of empty-space skipping reuse their h)."""
    hd = torch.matmul(h, weights["dir"].t())
    if samples_per_ray > 0 and h.dim() == 2:
        S = samples_per_ray
        hd = hd.view(-1, S, hd.shape[-1]).add_(dir_bias[:, None]).view(-1, hd.shape[-1])
    else:
        hd = hd.add_(dir_bias)
    return hd.relu_()


__all__ = ["FieldMLP", "positional_encoding", "folded_hidden", "folded_rows", "dir_from_trunk"]
