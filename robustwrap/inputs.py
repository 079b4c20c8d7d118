"""What the classifier expects (normalisation, channels, size) and checks on user images."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def infer_normalization(classifier: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the classifier expects its [0, 1] input normalised with, if it says so.

    timm models declare it in ``pretrained_cfg``; torchvision's classification models all take
    ImageNet statistics. Anything else is assumed to take [0, 1] images (RobustBench models
    normalise inside themselves).
    """
    cfg = getattr(classifier, "pretrained_cfg", None) or getattr(classifier, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") is not None and cfg.get("std") is not None:
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if type(classifier).__module__.startswith("torchvision.models"):
        return IMAGENET_MEAN, IMAGENET_STD
    return None


def infer_classifier_spec(classifier: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (H, W)) the classifier declares: timm's ``pretrained_cfg['input_size']``,
    else the first convolution's input channels and no size."""
    cfg = getattr(classifier, "pretrained_cfg", None) or getattr(classifier, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        channels, height, width = cfg["input_size"]
        return int(channels), (int(height), int(width))
    first_conv = next((m for m in classifier.modules() if isinstance(m, nn.Conv2d)), None)
    return (first_conv.in_channels if first_conv is not None else None), None


def classifier_fixed_size(classifier: nn.Module) -> tuple[int, int] | None:
    """(H, W) the classifier can only take, or None when it takes other sizes too.

    A timm vision transformer whose patch embedding checks its size (``strict_img_size``)
    and that was not built with ``dynamic_img_size=True`` takes only its ``img_size``;
    convolutional networks and dynamic-size transformers take any size.
    """
    embed = getattr(classifier, "patch_embed", None)
    if embed is None:
        return None
    dynamic = getattr(classifier, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False)
    size = getattr(embed, "img_size", None)
    if getattr(embed, "strict_img_size", False) and not dynamic and size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        return (int(height), int(width))
    return None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on (N, C, H, W) images in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"normalization needs equal-length mean and positive std, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


def check_images(x: object, channels: int | None, size: tuple[int, int] | None) -> None:
    """Refuse anything that is not a batch of images in [0, 1] before any compute.

    Args:
        x: expected a float tensor (B, C, H, W), B >= 1, finite, values in [0, 1].
        channels: required C, or None for any.
        size: required (H, W), or None for any size of at least 8 x 8.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank, empty batch, wrong channels or size, NaN/Inf, out of [0, 1].
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected images as a torch.Tensor (B, C, H, W) in [0, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor in [0, 1], got dtype {x.dtype} (use x.float() / 255)")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {x.dim()} dims with shape {tuple(x.shape)}")
    batch, got_channels, height, width = x.shape
    if batch == 0:
        raise ValueError(f"expected at least one image, got an empty batch of shape {tuple(x.shape)}")
    if channels is not None and got_channels != channels:
        raise ValueError(f"expected {channels} channels, got {got_channels} (shape {tuple(x.shape)})")
    if size is not None and (height, width) != tuple(size):
        raise ValueError(f"expected images of size {tuple(size)}, got {(height, width)}; resize them first")
    if size is None and min(height, width) < 8:
        raise ValueError(f"expected images of at least 8 x 8 pixels, got {(height, width)}")
    values = x.detach()
    if not torch.isfinite(values).all():
        raise ValueError("images contain NaN or Inf values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"expected values in [0, 1], got min {low:.4g} and max {high:.4g}")
