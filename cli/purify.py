"""`robustwrap purify`: purify image files and draw input | attention | mask | purified for each."""

from __future__ import annotations

import shutil
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from robustwrap.outputs import Layout

from .common import CHANNELS_HELP, CONFIG_FILE_HELP, console, fail, input_defaults
from .groups import MODELS, DefenseSetting, Models, defense_group, takes


class Background(str, Enum):
    auto = "auto"
    black = "black"
    white = "white"


DARK_BACKGROUND_MODELS = ("mnist",)  # classifier specs trained on light digits on a dark background
PURIFY_FORMAT = "robustwrap.purify"  # purify.json's tag: what --overwrite recognises as ours
OVERWRITE_HELP = ("replace --out when it is a folder an earlier purify wrote (its purify.json lists every file in "
                  "it); a folder with anything else, a file or the working directory is never replaced")


def _has_manifest(folder: Path) -> bool:
    """Whether ``folder/purify.json`` reads as a purify manifest."""
    return _listed(folder) is not None


def _listed(folder: Path) -> set[str] | None:
    """The files purify.json lists (itself included), or None when it is not a purify manifest."""
    import json

    try:
        manifest = json.loads((folder / "purify.json").read_text())
        files = manifest["files"] if manifest.get("format") == PURIFY_FORMAT else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return {str(name) for name in files} | {"purify.json"} if isinstance(files, list) else None


PURIFY_LAYOUT = Layout("purify folder", marker=_has_manifest, record="purify.json",
                       owns=lambda folder, entry: entry.is_file() and entry.name in (_listed(folder) or ()))


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems, one per input, never the same twice (same-named inputs get -2, -3, ...)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 1
        while stem in used:
            count += 1
            stem = f"{path.stem}-{count}"
        used.add(stem)
        stems.append(stem)
    return stems


@takes(models=MODELS, setting=defense_group(votes=False, config_help=CONFIG_FILE_HELP + "; --steps, --t-l and --t-s "
                                                                                    "override it"))
def purify_command(
    images: list[Path] = typer.Argument(..., help="image files (PNG, JPEG, ...)"),
    out: Path = typer.Option(Path("purified"), help="folder for <name>.purified.png and <name>.figure.png"),
    models: Models = None,
    channels: Optional[int] = typer.Option(None, min=1, help=CHANNELS_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help="the models' input size; default: 28 for mnist, "
                                             "32 for cifar10-resnet18 and small models, else what the classifier declares"),
    setting: DefenseSetting = None,
    background: Background = typer.Option(Background.auto, help="what transparent pixels become: auto = the model's "
                                          "training background (black for mnist, else white)"),
    invert: bool = typer.Option(False, help="invert the images first (e.g. dark digits on white paper for mnist)"),
    seed: int = typer.Option(0, help="seeds the purification noise"),
    max_pixels: Optional[int] = typer.Option(None, min=1, help="refuse images with more pixels than this before "
                                             "decoding them (a decompression bomb guard); default 50,000,000"),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Purify images and draw input | attention map | mask | purified for each (the paper's Figure 5)."""
    import torch

    from robustwrap.images import DEFAULT_MAX_PIXELS, load_picture
    from robustwrap.outputs import check_output, dumps_strict, replace_folder, temporary_beside

    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        fail(f"no such image file: {', '.join(missing)}")
    try:
        replacing = check_output(out, overwrite=overwrite, layout=PURIFY_LAYOUT)
    except ValueError as error:
        fail(str(error))
    channels, image_size = input_defaults(models.classifier, channels, image_size)
    config = setting.build()
    wrapper = models.build(channels, image_size, config)
    image_size = wrapper.image_size[0] if wrapper.image_size else image_size
    if background is Background.auto:
        background = Background.black if models.classifier in DARK_BACKGROUND_MODELS else Background.white
    fill = 0 if background is Background.black else 255
    generator = torch.Generator().manual_seed(seed)
    pictures = []
    for path in images:
        try:
            picture, warnings = load_picture(path, channels=channels, background=fill, invert=invert,
                                             max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        except OSError as error:
            fail(f"{path} is not an image PIL can read ({error})")
        except ValueError as error:
            fail(str(error))
        for warning in warnings:
            console.print(f"[yellow]warning:[/yellow] {path.name}: {warning}")
        pictures.append(picture)
    table = Table(title="purified")
    for column in ("image", "label before", "label after", "attended", "figure"):
        table.add_column(column)
    console.print(f"writing: {out}/ (<name>.purified.png, <name>.figure.png, purify.json), all at once at the end")
    work = temporary_beside(out)
    try:
        written = [_purify_one(wrapper, path, picture, image_size, work / stem, generator, table, out / stem)
                   for path, stem, picture in zip(images, unique_stems(images), pictures)]
        manifest = {"format": PURIFY_FORMAT, "files": [name for pair in written for name in pair],
                    "inputs": [str(p) for p in images], "seed": seed, "config": config.to_dict(),
                    "models": {"classifier": models.classifier, "diffusion": models.diffusion}}
        (work / "purify.json").write_text(dumps_strict(manifest, indent=2) + "\n")
        replace_folder(work, out, replacing=replacing, layout=PURIFY_LAYOUT)
    except (ValueError, FileExistsError) as error:  # a network's bad output, a target that appeared meanwhile
        shutil.rmtree(work, ignore_errors=True)
        fail(str(error))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    console.print(table)


def _purify_one(wrapper, path: Path, picture, image_size: int, stem: Path, generator, table: Table,
                shown: Path) -> tuple[str, str]:
    """Purify one picture, write ``<stem>.purified.png`` and ``<stem>.figure.png``; the two names written."""
    import torch
    from PIL import Image

    from robustwrap.figures import defense_figure
    from robustwrap.noise import Noise
    from robustwrap.images import picture_to_tensor, save_image

    if picture.size != (image_size, image_size):
        console.print(f"note: {path.name} is {picture.size[0]}x{picture.size[1]}; resized to {image_size}x{image_size}")
        picture = picture.resize((image_size, image_size), Image.BILINEAR)
    x = picture_to_tensor(picture)[None]
    with torch.no_grad():
        attention, mask = wrapper.attention(x), wrapper.mask(x)
        purified = wrapper.purify(x, noise=Noise.stream(generator))
        before, after = wrapper.classify(x).argmax(1).item(), wrapper.classify(purified).argmax(1).item()
    resize = torch.nn.functional.interpolate
    attention, mask = (resize(m, size=x.shape[-2:], mode="nearest") for m in (attention, mask))
    save_image(purified[0], f"{stem}.purified.png")
    titles = (f"input: label {before}", "attention", f"mask ({mask.mean().item():.0%} attended)",
              f"purified: label {after}")
    Image.fromarray(defense_figure(x[0], attention[0], mask[0], purified[0], titles=titles)).save(f"{stem}.figure.png")
    table.add_row(str(path), str(before), str(after), f"{mask.mean().item():.0%}", f"{shown}.figure.png")
    return f"{stem.name}.purified.png", f"{stem.name}.figure.png"
