"""A small DDPM epsilon-prediction UNet, sized for CPU training and tests."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding (N, dim) in ``dtype`` of timesteps t (N,) in [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angles = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm/SiLU and an additive timestep embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2, self.conv2 = _norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SmallUNet(nn.Module):
    """eps_theta(x_t, t) for (N, C, H, W) inputs in [-1, 1]-scaled DDPM space.

    Args:
        in_channels: image channels C.
        base_channels: channels at full resolution.
        channel_mults: one entry per resolution level; H and W must be divisible by
            2 ** (len(channel_mults) - 1).
        sample_size: the (square) image size the model is trained on (read by the wrapper).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        sample_size: int | None = 32,
    ) -> None:
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.sample_size = sample_size
        self.size_multiple = 2 ** (len(channel_mults) - 1)  # H and W must be divisible by it
        widths = [base_channels * m for m in channel_mults]
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down.append(ResBlock(previous, width, emb_dim))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.mid = ResBlock(previous, previous, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(previous + width, width, emb_dim))
            if level > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
            previous = width
        self.norm_out = _norm(previous)
        self.conv_out = nn.Conv2d(previous, in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicted noise (N, C, H, W) for x_t (N, C, H, W) at timesteps t (N,)."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels, self.conv_in.weight.dtype))
        h = self.conv_in(x)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid(h, emb)
        for level, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
