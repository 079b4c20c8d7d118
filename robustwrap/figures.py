"""Pictures of what the defense does (the paper's Figure 5): input | attention | mask | purified."""

from __future__ import annotations

import numpy as np
from torch import Tensor


def to_rgb_uint8(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1], C in {1, 3} -> (H, W, 3) uint8."""
    array = image.detach().float().clamp(0, 1).cpu().numpy()
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array
    return (array.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def heat(values: Tensor) -> np.ndarray:
    """(1, H, W) map in [0, 1] -> (H, W, 3) uint8, dark blue (0) through red to yellow (1)."""
    v = values.detach().float().clamp(0, 1).cpu().numpy()[0]
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.clip(0.5 - v, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def panel_strip(panels: list[np.ndarray], scale: int = 4, gap: int = 4) -> np.ndarray:
    """Panels (H, W, 3) uint8 of one size, upscaled by ``scale`` (nearest), side by side on white."""
    scaled = [p.repeat(scale, axis=0).repeat(scale, axis=1) for p in panels]
    height = scaled[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    pieces = []
    for index, panel in enumerate(scaled):
        pieces += [spacer, panel] if index else [panel]
    return np.concatenate(pieces, axis=1)


def defense_figure(image: Tensor, attention: Tensor, mask: Tensor, purified: Tensor, scale: int = 4) -> np.ndarray:
    """(H', W', 3) uint8 strip: input | attention map | mask | purified, all at the input size.

    Args:
        image, purified: (C, H, W) in [0, 1]; attention, mask: (1, H, W) in [0, 1].
    """
    return panel_strip([to_rgb_uint8(image), heat(attention), to_rgb_uint8(mask), to_rgb_uint8(purified)], scale)
