"""Tiny models shared by the tests: a 3-stage ResNet and a 2-level UNet on 16x16 images."""

from __future__ import annotations

import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.nets import SmallResNet, SmallUNet

SIZE = 16


def tiny_classifier(channels: int = 3, num_classes: int = 10) -> SmallResNet:
    torch.manual_seed(1)
    return SmallResNet(channels, num_classes, widths=(8, 16, 16)).eval()


def tiny_unet(channels: int = 3, size: int = SIZE) -> SmallUNet:
    torch.manual_seed(2)
    return SmallUNet(channels, base_channels=8, channel_mults=(1, 2), sample_size=size).eval()


def tiny_wrapper(**config: object) -> RobustWrapper:
    """A wrapper with 2 denoising steps (steps=10, t_l=0.2) unless the test says otherwise."""
    settings = {"steps": 10, "t_l": 0.2, "t_s": 0.1, **config}
    return RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(**settings))
