"""Pictures of what the defense does (the paper's Figure 5): input | attention | mask | purified, titled;
the one way plots get matplotlib (:func:`pyplot`) and the one way they draw accuracies with their
intervals (:func:`interval_bars`)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .images import to_uint8


def pyplot(command: str):
    """matplotlib's pyplot on the file-only Agg backend; ImportError naming ``command`` when it is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(f"{command} draws its plot with matplotlib: pip install matplotlib") from error
    return plt


def interval_bars(axes, xs: list[float], rates: list[tuple[float, float, float]], width: float, *,
                  label: str, color) -> None:
    """One series of bars with their 95% intervals as error bars, each labelled with its percentage.

    Args:
        axes: a matplotlib Axes. xs: bar centres. width: bar width (x units).
        rates: (value, low, high) per bar, fractions in [0, 1]; drawn in percent.
        label: the legend entry; color: the bars' colour.
    """
    values = [100 * value for value, _, _ in rates]
    below = [100 * (value - low) for value, low, _ in rates]
    above = [100 * (high - value) for value, _, high in rates]
    axes.bar(xs, values, width, yerr=[below, above], capsize=3, label=label, color=color,
             edgecolor="black", linewidth=0.5)
    for x, value, up in zip(xs, values, above):  # above the interval's top, not on it
        axes.text(x, value + up + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=7)


def to_rgb_uint8(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1], C in {1, 3} -> (H, W, 3) uint8 (grey repeated into three channels)."""
    array = to_uint8(image)
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array


def heat(values: Tensor) -> np.ndarray:
    """(1, H, W) map in [0, 1] -> (H, W, 3) uint8, dark blue (0) through red to yellow (1)."""
    return _heat(values.detach().float().clamp(0, 1).cpu().numpy()[0])


def _heat(v: np.ndarray) -> np.ndarray:
    """(H, W) array in [0, 1] -> (H, W, 3) uint8 (the colour map of :func:`heat`)."""
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


PANEL_MIN = 160  # the smallest side a panel is drawn at, in pixels (readable without zooming)


def _font(size: int):
    from PIL import ImageFont  # noqa: PLC0415

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def defense_figure(
    image: Tensor,
    attention: Tensor,
    mask: Tensor,
    purified: Tensor,
    scale: int | None = None,
    titles: tuple[str, str, str, str] = ("input", "attention", "mask", "purified"),
) -> np.ndarray:
    """(H', W', 3) uint8 figure: input | attention map + colour bar | mask | purified, titled.

    Each panel is upscaled (nearest) to at least :data:`PANEL_MIN` pixels; a colour bar gives the
    attention scale (0 to 1), and a note under the panels says that white in the mask marks the
    attended pixels, which get the strong noise (t_l), and black the weak noise (t_s).

    Args:
        image, purified: (C, H, W) in [0, 1]; attention, mask: (1, H, W) in [0, 1], same H, W.
        scale: upscaling factor (default: the smallest that reaches PANEL_MIN).
        titles: the four panel titles (e.g. with the predicted labels).
    """
    from PIL import Image, ImageDraw  # noqa: PLC0415

    height = image.shape[-2]
    scale = scale or max(1, -(-PANEL_MIN // height))
    panels = [to_rgb_uint8(image), heat(attention), to_rgb_uint8(mask), to_rgb_uint8(purified)]
    panels = [p.repeat(scale, axis=0).repeat(scale, axis=1) for p in panels]
    ph, pw = panels[0].shape[:2]
    title_font, small_font = _font(16), _font(13)
    gap, top, bar_width, bar_room, bottom = 16, 30, 14, 44, 40
    widths = [pw, pw + bar_room, pw, pw]
    width = gap + sum(w + gap for w in widths)
    canvas = Image.new("RGB", (width, top + ph + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for index, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (x, top))
        draw.rectangle([x - 1, top - 1, x + pw, top + ph], outline=(120, 120, 120))
        text_width = draw.textlength(title, font=title_font)
        draw.text((x + (pw - text_width) / 2, 6), title, fill="black", font=title_font)
        if index == 1:  # colour bar for the attention map
            ramp = np.linspace(1, 0, ph, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
            bar_x = x + pw + 6
            canvas.paste(Image.fromarray(_heat(ramp)), (bar_x, top))
            draw.rectangle([bar_x - 1, top - 1, bar_x + bar_width, top + ph], outline=(120, 120, 120))
            draw.text((bar_x + bar_width + 3, top - 4), "1", fill="black", font=small_font)
            draw.text((bar_x + bar_width + 3, top + ph - 12), "0", fill="black", font=small_font)
        x += widths[index] + gap
    note = "mask: white = attended pixels, strong noise (t_l); black = weak noise (t_s)"
    mask_x = gap + widths[0] + gap + widths[1] + gap
    note_width = draw.textlength(note, font=small_font)
    note_x = min(max(gap, mask_x + pw / 2 - note_width / 2), width - gap - note_width)
    draw.text((max(gap, note_x), top + ph + 12), note, fill="black", font=small_font)
    return np.asarray(canvas)

