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

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
        """x [B, C, h, w] -> image [B, 3, 2^n h, 2^n w] in x's dtype.

        dtype: compute dtype (e.g. bfloat16; weights are cast per call, so gradients still reach the
        float32 parameters); channels_last: NHWC memory layout, faster for oneDNN / tensor cores.
        """
        out_dtype = x.dtype
        dtype = dtype or x.dtype

        def conv(m, t, padding):
            return Fn.conv2d(t, m.weight.to(dtype), m.bias.to(dtype), padding=padding)

        x = x.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rgb = conv(self.to_rgb[0], x, 0)
        for block, proj in zip(self.blocks, self.to_rgb[1:]):
            x = Fn.interpolate(x, scale_factor=2.0, mode="nearest")
            x = Fn.leaky_relu(conv(block, x, 1), self.leaky_slope)
            rgb = Fn.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + conv(proj, x, 0)
        return torch.sigmoid(rgb.float() if dtype != out_dtype else rgb).to(out_dtype).contiguous()


__all__ = ["NeuralRenderer"]
