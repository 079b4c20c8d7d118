"""Image files to tensors and back: one decoder for the data loaders and ``robustwrap purify``.

:func:`decode_image` reads a file (PNG, JPEG, BMP, ...) into a (C, H, W) float tensor in [0, 1]:
palettes are expanded, transparency is composited on a background, colours can be inverted,
and pictures whose polarity does not match a dark-background (MNIST-like) model are warned
about. :func:`to_uint8` and :func:`save_image` go the other way.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # one channel when channels is None
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # grey deeper than 8 bits: rescaled, not clipped, to 8 bits


def _is_grey(picture) -> bool:
    """Whether a PIL image holds only grey pixels: a grey mode, or a palette of grey colours."""
    if picture.mode in GREY_MODES:
        return True
    if picture.mode not in ("P", "PA"):
        return False
    rgb = np.asarray(picture.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _eight_bit(picture):
    """A 16-bit, 32-bit integer or float grey image as 8-bit "L", scaled by its type's range
    (16-bit: 65535; float files whose values stay within [0, 1]: 1; else 255), never clipped at 255."""
    from PIL import Image  # noqa: PLC0415

    values = np.asarray(picture, dtype=np.float64)
    peak = values.max(initial=0.0)
    if picture.mode.startswith("I;16") or (picture.mode == "I" and peak > 255):
        scale = 65535.0
    elif picture.mode == "F" and peak <= 1.0:
        scale = 1.0
    else:
        scale = 255.0
    return Image.fromarray(np.clip(np.round(values / scale * 255), 0, 255).astype(np.uint8), "L")


def load_picture(path: str | os.PathLike, *, channels: int | None = None, background: int = 255,
                 invert: bool = False):
    """An image file as a PIL image of ``channels`` (1: "L", else "RGB"), and warnings about it.

    Transparent pixels are composited on ``background`` (0 black, 255 white: what the model was
    trained on), after ``invert`` (which inverts colours, not alpha). On a black background
    (MNIST-like models: light strokes on dark) a mostly bright image is warned about, and so is
    an image whose opaque pixels are about as dark as the background (they would vanish).

    Args:
        channels: 1 or 3; None keeps the file's own: 1 for grey files (grey modes, and palettes
            whose colours are all grey), else 3. 1-bit files read as 0 and 255; 16-bit and
            float grey files are rescaled to 8 bits by their type's range.

    Raises:
        OSError: not an image PIL can read.
    """
    from PIL import Image, ImageChops  # noqa: PLC0415  (pillow comes with torchvision)

    picture = Image.open(path)
    picture.load()
    if channels is None:
        channels = 1 if _is_grey(picture) else 3
    if picture.mode in DEEP_MODES:
        picture = _eight_bit(picture)
    warnings = []
    has_alpha = picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info)
    if has_alpha:
        rgba = picture.convert("RGBA")
        colour, alpha = rgba.convert("RGB"), rgba.getchannel("A")
        if invert:
            colour = ImageChops.invert(colour)
        grey, opacity = np.asarray(colour.convert("L"), dtype=np.float32), np.asarray(alpha)
        opaque = grey[opacity >= 128]
        if background == 0 and opaque.size and opaque.mean() < 64:
            warnings.append("its opaque pixels are about as dark as the model's black background, so the picture "
                            "all but vanishes once transparency is filled; pass --invert for dark strokes")
        picture = Image.composite(colour, Image.new("RGB", rgba.size, (background,) * 3), alpha)
    elif invert:
        picture = ImageChops.invert(picture.convert("RGB"))
    picture = picture.convert("L" if channels == 1 else "RGB")
    brightness = float(np.asarray(picture.convert("L"), dtype=np.float32).mean()) / 255
    if background == 0 and brightness > 0.5:
        warnings.append(f"it is mostly bright (mean {brightness:.2f}) but the model was trained on light strokes on "
                        "a dark background (MNIST): its labels and mask mean little; pass --invert for dark-on-light")
    return picture, warnings


def picture_to_tensor(picture) -> Tensor:
    """A PIL image in mode "L" or "RGB" -> (C, H, W) float32 in [0, 1]."""
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return torch.from_numpy((array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy())


def decode_image(path: str | os.PathLike, *, channels: int | None = None, background: int = 255,
                 invert: bool = False, size: int | None = None) -> tuple[Tensor, list[str]]:
    """An image file as a (C, H, W) float32 tensor in [0, 1], and warnings about it.

    Args:
        channels, background, invert: as for :func:`load_picture`.
        size: resize to ``size`` x ``size`` (bilinear) when the file has another size.

    Raises:
        OSError: not an image PIL can read.
    """
    from PIL import Image  # noqa: PLC0415

    picture, warnings = load_picture(path, channels=channels, background=background, invert=invert)
    if size is not None and picture.size != (size, size):
        picture = picture.resize((size, size), Image.BILINEAR)
    return picture_to_tensor(picture), warnings


def to_uint8(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1], C in {1, 3} -> (H, W) uint8 for one channel, else (H, W, 3) uint8."""
    array = image.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    array = (array * 255).round().astype(np.uint8)
    return array[..., 0] if array.shape[-1] == 1 else array


def save_image(image: Tensor, path: str | os.PathLike) -> None:
    """Write a (C, H, W) image in [0, 1] (C in {1, 3}) as a PNG (or whatever ``path``'s suffix names)."""
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(to_uint8(image)).save(path)
