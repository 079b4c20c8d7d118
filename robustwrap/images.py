"""Image files to tensors and back: one decoder for the data loaders and ``robustwrap purify``.

:func:`decode_image` reads a file (PNG, JPEG, BMP, ...) into a (C, H, W) float tensor in [0, 1]:
palettes are expanded, transparency is composited on a background, colours can be inverted,
and pictures whose polarity does not match a dark-background (MNIST-like) model are warned
about. :func:`to_uint8` and :func:`save_image` go the other way.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # one channel when channels is None
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # grey deeper than 8 bits: rescaled, not clipped, to 8 bits
DEFAULT_MAX_PIXELS = 50_000_000  # refuse larger images (a 7071 x 7071 RGB image decodes to 150 MB)
LARGE_PIXELS = 4_000_000  # warn (logging) above this: decoding takes memory and the image is resized anyway
logger = logging.getLogger(__name__)


@contextmanager
def _pillow_limit(max_pixels: int):
    """Let Pillow open images up to ``max_pixels`` (its own bomb check is a module setting, restored after)."""
    from PIL import Image  # noqa: PLC0415

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(saved or 0, max_pixels)  # its error fires at twice this; ours comes first
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def open_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open an image file (header only) after checking its pixel count against ``max_pixels``.

    Images above :data:`LARGE_PIXELS` are logged as a warning (decoding them takes memory).

    Raises:
        ValueError: the image has more than ``max_pixels`` pixels (naming the file and the limit).
        OSError: not an image PIL can read.
    """
    from PIL import Image  # noqa: PLC0415

    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    with _pillow_limit(max_pixels):
        try:
            picture = Image.open(path)
        except Image.DecompressionBombError as error:
            raise ValueError(f"{path} is over the limit of {max_pixels} pixels ({str(error).rstrip('.')}); raise it "
                             "with --max-pixels / max_pixels= if the image is trusted") from error
    width, height = picture.size
    if width * height > max_pixels:
        picture.close()
        raise ValueError(f"{path} is {width} x {height} = {width * height} pixels, over the limit of {max_pixels} "
                         "(raise it with --max-pixels / max_pixels= if the image is trusted)")
    if width * height > LARGE_PIXELS:
        logger.warning("%s is a large image (%d x %d pixels): decoding it takes memory, and it is resized to the "
                       "model's input", path, width, height)
    return picture


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
                 invert: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
    """An image file as a PIL image of ``channels`` (1: "L", else "RGB"), and warnings about it.

    Transparent pixels are composited on ``background`` (0 black, 255 white: what the model was
    trained on), after ``invert`` (which inverts colours, not alpha). On a black background
    (MNIST-like models: light strokes on dark) a mostly bright image is warned about, and so is
    an image whose opaque pixels are about as dark as the background (they would vanish).

    Args:
        channels: 1 or 3; None keeps the file's own: 1 for grey files (grey modes, and palettes
            whose colours are all grey), else 3. 1-bit files read as 0 and 255; 16-bit and
            float grey files are rescaled to 8 bits by their type's range.
        max_pixels: larger images are refused before they are decoded (:func:`open_image`).

    Raises:
        OSError: not an image PIL can read.
        ValueError: more than ``max_pixels`` pixels.
    """
    from PIL import Image, ImageChops  # noqa: PLC0415  (pillow comes with torchvision)

    picture = open_image(path, max_pixels=max_pixels)
    with _pillow_limit(max_pixels):
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
                 invert: bool = False, size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, list[str]]:
    """An image file as a (C, H, W) float32 tensor in [0, 1], and warnings about it.

    Args:
        channels, background, invert, max_pixels: as for :func:`load_picture`.
        size: resize to ``size`` x ``size`` (bilinear) when the file has another size.

    Raises:
        OSError: not an image PIL can read.
        ValueError: more than ``max_pixels`` pixels.
    """
    from PIL import Image  # noqa: PLC0415

    picture, warnings = load_picture(path, channels=channels, background=background, invert=invert,
                                     max_pixels=max_pixels)
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
