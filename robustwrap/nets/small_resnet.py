"""A small ResNet classifier with ``layer1..layerN`` stages (so the mask sees several blocks)."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU: the stage's last activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Images (N, C, H, W) in [0, 1] -> logits (N, num_classes).

    Args:
        in_channels: image channels.
        num_classes: number of classes K.
        widths: channels of each stage; stage i > 0 halves the resolution.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        previous = widths[0]
        for index, width in enumerate(widths):
            setattr(self, f"layer{index + 1}", BasicBlock(previous, width, 1 if index == 0 else 2))
            previous = width
        self.num_stages = len(widths)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for index in range(self.num_stages):
            h = getattr(self, f"layer{index + 1}")(h)
        return self.fc(h.mean(dim=(2, 3)))
