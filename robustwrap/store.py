"""The model store: ``models/<dataset>/<threat_model>/<name>.*`` and the models the project ships.

The store is the repository's ``models/`` folder, or ``$ROBUSTWRAP_MODEL_DIR`` when set (a
wheel install does not carry the weights: point the variable at a checkout's ``models/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .nets import SmallResNet, SmallUNet


def model_dir() -> Path:
    """Root of the model store."""
    return Path(os.environ.get("ROBUSTWRAP_MODEL_DIR", Path(__file__).resolve().parents[1] / "models"))


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


def shipped_weights(entry: Shipped) -> Path:
    """Path of a shipped model's weights; FileNotFoundError naming the script that makes them."""
    path = model_dir() / entry.weights
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: train it with `python examples/train_mnist.py` or set ROBUSTWRAP_MODEL_DIR "
            "to a checkout's models/ folder"
        )
    return path
