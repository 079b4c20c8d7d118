"""What every command shares: the console, one-line errors, spec options' help and small helpers.

Command modules parse options, call the library and print; nothing here computes results.
"""

from __future__ import annotations

import dataclasses
import math
import os
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from robustwrap.specs import describe_schemes, input_shape

from . import PIPE_WIDTH

def _console() -> Console:
    """Rich's console: a terminal's width, else (a file, a pipe) 200 columns, not rich's 80 that cut table cells."""
    probe = Console()
    return probe if probe.is_terminal or os.environ.get("COLUMNS") else Console(width=PIPE_WIDTH)


console = _console()

# The spec names each option takes, stated once (robustwrap.specs and robustwrap.data build them).
CLASSIFIER_SPECS = describe_schemes("classifier")
DIFFUSION_SPECS = describe_schemes("diffusion")
DATA_SPECS = "mnist5k:<train|heldout>, folder:<dir>, cifar10:<dir>, foolbox:<set>, tensors:<file>"
WEIGHTS_HELP = "safetensors / weights-only .pt state dict"
CONFIG_FILE_HELP = "a PurifyConfig file (.json/.toml, e.g. the best.json `robustwrap tune` writes)"
CONFIG_HELP = CONFIG_FILE_HELP + ": the defense's settings; --steps, --t-l, --t-s and --votes override it when given"
CHANNELS_HELP = "the models' channels; default: 1 for mnist, else 3"
STEPS_HELP = "DDIM grid over 1000 steps (t_l=0.2: steps/5 denoiser calls); default 50; the paper: 500"
T_L_HELP = "strong-noise level t_l as a fraction of the 1000 diffusion steps (attended pixels); default 0.2"
T_S_HELP = "weak-noise level t_s, fraction of 1000: below it the inpainting stage ends; default 0.1"


class NormName(str, Enum):
    linf = "Linf"
    l2 = "L2"


class LossName(str, Enum):
    ce = "ce"
    margin = "margin"
    dlr = "dlr"


def fail(message: str) -> NoReturn:
    """End the command with a one-line error and exit code 2."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}")  # brackets in messages ('robustwrap[serve]') are text
    raise typer.Exit(2)


def require_finite(**values: Optional[float]) -> None:
    """End the command (exit 2) on a NaN or infinite float option, before anything is built or written."""
    bad = [f"--{name.replace('_', '-')} {value}" for name, value in values.items()
           if value is not None and not math.isfinite(value)]
    if bad:
        fail(f"{', '.join(bad)}: settings must be finite numbers")


def defense_config(config: Optional[Path], **overrides: object):
    """The PurifyConfig from --config (or the defaults, with steps 50) with the options given on the command line."""
    from robustwrap import PurifyConfig

    try:
        base = PurifyConfig.load(config) if config is not None else PurifyConfig(steps=50)
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))


def input_defaults(classifier: str, channels: Optional[int], image_size: Optional[int]) -> tuple[int, int]:
    """--channels and --image-size, or the classifier spec's defaults (:func:`robustwrap.specs.input_shape`)."""
    default_channels, default_size = input_shape(classifier)
    return channels or default_channels, image_size or default_size


def percent(value: float, n: int) -> str:
    """A fraction over n images as a percentage with its Wilson 95% interval: '62.5 [52.1, 71.8]'."""
    from robustwrap.statistics import format_accuracy

    return format_accuracy(value, n, percent_sign=False)


def threads_option(
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads for the command (default: "
                                          "OMP_NUM_THREADS if set, else the CPUs this process may use: its affinity "
                                          "and the container's CPU quota, not the machine's cores)"),
) -> None:
    """Wrap image classifiers in a diffusion-purification defense."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return  # the user's (or the launcher's) choice
    import torch

    from robustwrap.cpus import available_cpus

    torch.set_num_threads(threads or available_cpus())
