"""Attention mask from the classifier's stage activations (paper Eq. 2-4, Alg. 2).

``attention_map`` turns M stage outputs into one [0, 1] map per image; ``binarize`` turns the
map into the {0, 1} mask that marks the pixels getting the strong noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MaskNormalization, MaskRule

_EPS = 1e-12


def stage_energy(activation: Tensor, p: float = 2.0, root: bool = False) -> Tensor:
    """G = sum_c |A_c|^p over channels, optionally its p-th root.

    Args:
        activation: (B, C, H, W) output of a stage's last activation.

    Returns:
        (B, 1, H, W) non-negative map.
    """
    energy = activation.abs().pow(p).sum(dim=1, keepdim=True)
    return energy.pow(1.0 / p) if root else energy


def normalize_map(energy: Tensor, normalization: MaskNormalization = "minmax") -> Tensor:
    """Normalise each image's (B, 1, H, W) map: min-max to [0, 1], or a spatial softmax."""
    flat = energy.flatten(1)
    if normalization == "softmax":
        flat = flat.softmax(dim=1)
    else:
        low = flat.amin(dim=1, keepdim=True)
        high = flat.amax(dim=1, keepdim=True)
        flat = (flat - low) / (high - low + _EPS)
    return flat.view_as(energy)


def attention_map(
    activations: Sequence[Tensor],
    size: tuple[int, int],
    p: float = 2.0,
    root: bool = False,
    normalization: MaskNormalization = "minmax",
) -> Tensor:
    """Union of the stages' normalised energy maps at image resolution.

    Each stage's energy is upsampled bilinearly (align_corners=False) to ``size``, normalised
    per image, and the element-wise maximum over stages is taken.

    Args:
        activations: M tensors (B, C_m, H_m, W_m), one per stage.
        size: (H, W) of the images to purify.

    Returns:
        (B, 1, H, W) map in [0, 1] (min-max) or a probability map per image (softmax).
    """
    if not activations:
        raise ValueError("attention_map needs at least one stage activation")
    maps = [
        normalize_map(
            F.interpolate(stage_energy(a.to(torch.promote_types(a.dtype, torch.float32)), p, root), size=size, mode="bilinear", align_corners=False),
            normalization,
        )
        for a in activations
    ]
    return torch.stack(maps).amax(dim=0)


def binarize(attention: Tensor, rule: MaskRule = "threshold", tau: float = 0.9, top_fraction: float = 0.15) -> Tensor:
    """The {0, 1} mask of attended pixels.

    Args:
        attention: (B, 1, H, W) map from :func:`attention_map`.
        rule: ``"threshold"`` marks pixels with value >= tau; ``"top_fraction"`` marks exactly
            ``max(1, round(top_fraction * H * W))`` pixels per image, the largest values.

    Returns:
        (B, 1, H, W) float tensor of zeros and ones, same dtype as ``attention``.
    """
    if rule == "threshold":
        return (attention >= tau).to(attention.dtype)
    flat = attention.flatten(1)
    k = max(1, round(top_fraction * flat.shape[1]))
    top = flat.topk(k, dim=1).indices
    return torch.zeros_like(flat).scatter(1, top, 1.0).view_as(attention)
