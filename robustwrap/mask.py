"""Attention mask from the classifier's stage activations (paper Eq. 2-4, Alg. 2).

Pure functions, shared by the wrapper and the attacks (docs/algorithm.md, "Mask"):

- :func:`attention_map` turns M stage maps into one map per image at image resolution;
- :func:`binarize` cuts it into the {0, 1} mask of the pixels getting the strong noise;
- :func:`soft_mask` is the same cut relaxed by a sigmoid, differentiable for mask-aware attacks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MaskNormalization, MaskRule

_EPS = 1e-12
FLAT_TOLERANCE = 1e-5
"""A stage map whose spatial range is at most this fraction of its maximum is flat: float
rounding, not information (e.g. a 1x1 stage upsampled). It marks no pixel."""


def stage_energy(activation: Tensor, p: float = 2.0, root: bool = False) -> Tensor:
    """G = sum_c |A_c|^p over channels, optionally its p-th root.

    Args:
        activation: (B, C, H, W) output of a stage's last activation.

    Returns:
        (B, 1, H, W) non-negative map.
    """
    energy = activation.abs().pow(p).sum(dim=1, keepdim=True)
    return energy.pow(1.0 / p) if root else energy


def informative(energy: Tensor, tolerance: float = FLAT_TOLERANCE) -> Tensor:
    """(B, 1, 1, 1) booleans: does each image's (B, 1, H, W) map vary beyond float rounding?"""
    flat = energy.detach().flatten(1)
    high, low = flat.amax(dim=1), flat.amin(dim=1)
    return (high - low > tolerance * high.abs()).view(-1, 1, 1, 1)


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
    stage_maps: Sequence[Tensor],
    size: tuple[int, int],
    p: float = 2.0,
    root: bool = False,
    normalization: MaskNormalization = "minmax",
) -> Tensor:
    """Union of the stages' normalised energy maps at image resolution.

    Each stage's energy G_m is upsampled bilinearly (align_corners=False) to ``size`` and
    normalised per image; a stage whose map is flat for an image (:func:`informative`)
    contributes zeros for that image; the element-wise maximum over stages is taken.
    Differentiable w.r.t. the stage maps.

    Args:
        stage_maps: M tensors (B, C_m, H_m, W_m), one per stage.
        size: (H, W) of the images to purify.
        p, root: G = sum_c |A_c|^p, or its p-th root.
        normalization: "minmax" (per-image [0, 1]) or "softmax" (per-image probabilities).

    Returns:
        (B, 1, H, W) map in [0, 1] (min-max) or a probability map per image (softmax).
    """
    if not stage_maps:
        raise ValueError("attention_map needs at least one stage map")
    maps = []
    for stage in stage_maps:
        if stage.dim() != 4:
            raise ValueError(f"stage maps must be (B, C, H, W), got shape {tuple(stage.shape)}")
        energy = stage_energy(stage.to(torch.promote_types(stage.dtype, torch.float32)), p, root)
        upsampled = F.interpolate(energy, size=size, mode="bilinear", align_corners=False)
        keep = informative(energy) & informative(upsampled)
        maps.append(normalize_map(upsampled, normalization) * keep)
    return torch.stack(maps).amax(dim=0)


def top_count(pixels: int, top_fraction: float) -> int:
    """k = floor(top_fraction * pixels), at least 1, as the reference code counts."""
    return max(1, int(top_fraction * pixels))


def binarize(attention: Tensor, rule: MaskRule = "threshold", tau: float = 0.9, top_fraction: float = 0.15) -> Tensor:
    """The {0, 1} mask of attended pixels.

    Args:
        attention: (B, 1, H, W) map from :func:`attention_map`.
        rule: ``"threshold"`` marks pixels with value >= tau; ``"top_fraction"`` marks exactly
            :func:`top_count` ``(H * W, top_fraction)`` pixels per image, the largest values.

    Returns:
        (B, 1, H, W) float tensor of zeros and ones, same dtype as ``attention``.
    """
    if rule == "threshold":
        return (attention >= tau).to(attention.dtype)
    flat = attention.flatten(1)
    top = flat.topk(top_count(flat.shape[1], top_fraction), dim=1).indices
    return torch.zeros_like(flat).scatter(1, top, 1.0).view_as(attention)


def soft_mask(
    attention: Tensor,
    rule: MaskRule = "threshold",
    tau: float = 0.9,
    top_fraction: float = 0.15,
    temperature: float = 0.05,
) -> Tensor:
    """:func:`binarize` relaxed: ``sigmoid((attention - cut) / temperature)``.

    The cut is ``tau`` for the threshold rule and each image's k-th largest value (held
    constant) for the top-fraction rule, so the relaxation tends to :func:`binarize`'s mask
    as ``temperature`` goes to 0.

    Args:
        attention: (B, 1, H, W) map from :func:`attention_map`, possibly requiring grad.
        temperature: > 0, in units of the map's values.

    Returns:
        (B, 1, H, W) mask in (0, 1), differentiable w.r.t. ``attention``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if rule == "threshold":
        cut = torch.full_like(attention[:, :1, :1, :1], tau)
    else:
        flat = attention.flatten(1)
        k = top_count(flat.shape[1], top_fraction)
        cut = flat.topk(k, dim=1).values[:, -1].view(-1, 1, 1, 1).detach()
    return torch.sigmoid((attention - cut) / temperature)
