"""The model store: ``models/<dataset>/<threat_model>/<name>.*`` and the models the project ships.

The shipped weights install with the package as ``robustwrap.models`` (the repository's
``models/`` folder, mapped like ``export/`` and ``cli/``) and are found with importlib.resources,
in a checkout and in a wheel alike. ``$ROBUSTWRAP_MODEL_DIR`` points the store at a folder of
your own (RobustBench checkpoints, say); the shipped models are still found in the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from torch import nn

from .config import MODES
from .nets import SmallResNet, SmallUNet


def shipped_dir() -> Path:
    """The installed ``robustwrap.models`` folder: the store of the weights the project ships."""
    return Path(str(resources.files("robustwrap.models")))


def model_dir() -> Path:
    """Root of the model store: ``$ROBUSTWRAP_MODEL_DIR`` when set, else :func:`shipped_dir`."""
    configured = os.environ.get("ROBUSTWRAP_MODEL_DIR")
    return Path(configured) if configured else shipped_dir()


@dataclass(frozen=True)
class Shipped:
    """A network the project trains and ships: how to build it and where its weights live."""

    build: Callable[[], nn.Module]
    weights: str  # relative to the store


SHIPPED_CLASSIFIERS = {
    "mnist": Shipped(lambda: SmallResNet(1, 10, widths=(32, 64, 128)), "mnist/Linf/Standard_SmallResNet.safetensors"),
}
SHIPPED_DIFFUSION = {
    "mnist": Shipped(
        lambda: SmallUNet(1, base_channels=32, channel_mults=(1, 2, 2), sample_size=28),
        "mnist/diffusion/DDPM_SmallUNet.safetensors",
    ),
}


# The defenses `robustwrap tune` calibrated to a shipped pair (classifier spec, diffusion spec): a folder of
# the store holding one PurifyConfig per mode (uniform.json, heterogeneous.json), each its family's most
# robust setting at the same denoiser budget and clean floor, with a README.md that records the sweep.
SHIPPED_CALIBRATIONS = {("mnist", "mnist"): "mnist/calibrated"}


def calibrated_configs(classifier: str, diffusion: str) -> dict[str, Path]:
    """Mode ("uniform", "heterogeneous") -> the calibrated PurifyConfig file for a shipped pair of specs.

    Only the shipped weights were calibrated: callers pass the specs only when no other weights
    are given, and the pair counts only while both specs resolve to the weights in the package
    (not to retrained ones in ``$ROBUSTWRAP_MODEL_DIR``). Empty for any other pair.

    Raises:
        FileNotFoundError: the pair is shipped but a calibration file is missing (a broken install).
    """
    folder = SHIPPED_CALIBRATIONS.get((classifier, diffusion))
    if folder is None:
        return {}
    entries = (SHIPPED_CLASSIFIERS[classifier], SHIPPED_DIFFUSION[diffusion])
    if any(shipped_weights(entry) != shipped_dir() / entry.weights for entry in entries):
        return {}  # other weights of the same names: the calibration does not describe them
    files = {mode: shipped_dir() / folder / f"{mode}.json" for mode in MODES}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"calibrated configs missing: {', '.join(missing)}: reinstall robustwrap")
    return files


def shipped_weights(entry: Shipped) -> Path:
    """Path of a shipped model's weights (the configured store first, then the package's);
    FileNotFoundError naming the script that makes them."""
    for root in dict.fromkeys((model_dir(), shipped_dir())):
        if (root / entry.weights).is_file():
            return root / entry.weights
    raise FileNotFoundError(
        f"{shipped_dir() / entry.weights} is missing: train it with `python examples/train_mnist.py` "
        "(a checkout), or reinstall robustwrap"
    )
