"""The conditioned field MLP as an nn.Module (docs/design.md, "The model").

Layout (the one dgnerf.ops.field_mlp takes): u = [enc(x), identity, expression] with enc = gamma (the paper's
frequency encoding) or a hash grid (dgnerf.model.encoding) (+ the normalised gaze code
after the expression when cfg.gaze_dim > 0: `condition()` appends it, so every path treats it as conditioning);
    h_1 = relu(L_0 u);  h_{i+1} = relu(L_i h_i), except L_skip whose input is cat([u, h_skip]) (u first)
    sigma_raw = L_sigma h_D                       (the density activation is applied by the caller)
    hdir = relu(L_dir cat([h_D, gamma(d)]));  F = L_out hdir   (F: feature_dim, no activation)

`forward` is that formula on the unfolded input, written with the module's nn.Linear layers: the model's
reference path. The fast path runs the same weights through the fused op: `weights()` gives them as one
dgnerf.ops.FieldWeights (views: gradients reach these parameters), and dgnerf.ops.fold_conditioning folds the
codes into one bias per image.
"""
from __future__ import annotations

import torch
from torch import nn

from dgnerf.model.config import HeadConfig
from dgnerf.model.encoding import PositionEncoding
from dgnerf.ops import FieldWeights


class FieldMLP(nn.Module):
    """The field's parameters (nn.Linear per layer) and its plain, unfolded evaluation."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.encoding = PositionEncoding(cfg)
        W, U = cfg.mlp_width, cfg.input_dim
        layers = []
        for i in range(cfg.mlp_depth):
            fan_in = U if i == 0 else (U + W if i == cfg.skip_layer else W)
            layers.append(nn.Linear(fan_in, W))
        self.trunk = nn.ModuleList(layers)
        self.sigma = nn.Linear(W, 1)
        self.dir_layer = nn.Linear(W + cfg.dir_enc_dim, cfg.dir_width)
        self.out = nn.Linear(cfg.dir_width, cfg.feature_dim)

    def condition(self, expression: torch.Tensor, gaze: torch.Tensor | None = None) -> torch.Tensor:
        """The expression part of the conditioning: expression [B, E] itself for a model without gaze; for a
        model with cfg.gaze_dim > 0, [expression, g] [B, E + G] with g = (gaze - gaze_mean) / gaze_std
        (gaze None: g = 0, the training set's mean gaze). gaze: [B, G] in the dataset's units."""
        cfg = self.cfg
        if cfg.gaze_dim == 0:
            if gaze is not None:
                raise ValueError("HeadModel: argument 'gaze' given, but this model has no gaze conditioning "
                                 "(config gaze_dim 0)")
            return expression
        B = expression.shape[0]
        if gaze is None:
            return torch.cat([expression, expression.new_zeros(B, cfg.gaze_dim)], dim=-1)
        if not isinstance(gaze, torch.Tensor) or not gaze.is_floating_point():
            got = gaze.dtype if isinstance(gaze, torch.Tensor) else type(gaze).__name__
            raise ValueError(f"HeadModel: argument 'gaze' expected a floating-point torch.Tensor, got {got}")
        if gaze.dim() != 2 or tuple(gaze.shape) != (B, cfg.gaze_dim):
            raise ValueError(f"HeadModel: argument 'gaze' expected shape [{B}, {cfg.gaze_dim}] (gaze code), got "
                             f"{list(gaze.shape)}")
        if gaze.device != expression.device:
            raise ValueError(f"HeadModel: argument 'gaze' is on {gaze.device} but the model is on {expression.device}")
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            if not bool(torch.isfinite(gaze).all()):
                raise ValueError("HeadModel: argument 'gaze' contains NaN or Inf values")
        g = gaze.to(expression.dtype)
        if cfg.gaze_mean:
            g = g - torch.tensor(cfg.gaze_mean, dtype=g.dtype, device=g.device)
        if cfg.gaze_std:
            g = g / torch.tensor(cfg.gaze_std, dtype=g.dtype, device=g.device)
        return torch.cat([expression, g], dim=-1)

    def forward(self, u: torch.Tensor, d_enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [..., input_dim], d_enc [..., dir_enc_dim] -> sigma_raw [...], F [..., feature_dim]."""
        h = u
        for i, layer in enumerate(self.trunk):
            if i == self.cfg.skip_layer:
                h = torch.cat([u, h], dim=-1)
            h = torch.relu(layer(h))
        sigma_raw = self.sigma(h)[..., 0]
        hdir = torch.relu(self.dir_layer(torch.cat([h, d_enc], dim=-1)))
        return sigma_raw, self.out(hdir)

    def weights(self) -> FieldWeights:
        """The parameters as the fused op's FieldWeights (views of the nn.Linear weights)."""
        t, cfg = self.trunk, self.cfg
        skip = cfg.skip_layer if 0 < cfg.skip_layer < cfg.mlp_depth else None
        return FieldWeights.from_unfolded([m.weight for m in t], [m.bias for m in t], self.sigma.weight,
                                          self.sigma.bias, self.dir_layer.weight, self.dir_layer.bias, self.out.weight,
                                          self.out.bias, dx=cfg.pos_enc_dim, skip=skip)


__all__ = ["FieldMLP"]
