"""The 2D neural renderer g (DESIGN §2, GIRAFFE-style): feature map [B, C, h, w] -> image [B, 3, 2^n h, 2^n w].

    rgb_0 = P_0(x_0)                                    P_k: 1x1 conv to RGB
    for each block k = 1..n:  x_k = lrelu(conv3x3(up2_nearest(x_{k-1})))
                              rgb_k = up2_bilinear(rgb_{k-1}) + P_k(x_k)
    image = sigmoid(rgb_n)

The RGB skip path lets the coarse colour come straight from the feature map while the blocks add
detail; the input projection P_0 follows GIRAFFE's renderer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn


class NeuralRenderer(nn.Module):
    def __init__(self, in_channels: int = 512, channels=(256, 128, 64), leaky_slope: float = 0.2):
        super().__init__()
        self.leaky_slope = float(leaky_slope)
        chans = [int(in_channels)] + [int(c) for c in channels]
        self.blocks = nn.ModuleList(nn.Conv2d(chans[k], chans[k + 1], 3, padding=1) for k in range(len(channels)))
        self.to_rgb = nn.ModuleList(nn.Conv2d(c, 3, 1) for c in chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.to_rgb[0](x)
        for conv, proj in zip(self.blocks, self.to_rgb[1:]):
            x = Fn.interpolate(x, scale_factor=2.0, mode="nearest")
            x = Fn.leaky_relu(conv(x), self.leaky_slope)
            rgb = Fn.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + proj(x)
        return torch.sigmoid(rgb)


__all__ = ["NeuralRenderer"]
