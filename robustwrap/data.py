"""Labelled image sets that exist offline, as tensors: images (N, C, H, W) in [0, 1], labels (N,).

Specs (for the CLI):
- ``foolbox:<set>`` — the 20 real test images of ``cifar10``, ``cifar100``, ``mnist``,
  ``fashionMNIST`` or ``imagenet`` shipped in the ``foolbox`` wheel (label in the file name),
  read with PIL from the installed package without importing foolbox.
- ``tensors:<file>`` — a safetensors or weights-only torch file holding ``images`` and ``labels``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FOOLBOX_SETS = ("cifar10", "cifar100", "mnist", "fashionMNIST", "imagenet")


def foolbox_samples(name: str) -> tuple[Tensor, Tensor]:
    """The 20 sample images of one data set from the installed ``foolbox`` package."""
    if name not in FOOLBOX_SETS:
        raise ValueError(f"unknown foolbox sample set {name!r}; choose one of {FOOLBOX_SETS}")
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise ImportError("the foolbox sample images need the foolbox wheel: pip install --no-deps foolbox")
    from PIL import Image  # noqa: PLC0415  (pillow comes with torchvision)

    folder = Path(spec.origin).parent / "data"
    files = sorted(folder.glob(f"{name}_*_*.*"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no {name} images in {folder}")
    images, labels = [], []
    for file in files:
        array = np.asarray(Image.open(file), dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        images.append(torch.from_numpy(array.copy()))
        labels.append(int(file.stem.split("_")[-1]))
    return torch.stack(images), torch.tensor(labels)


def tensor_file(path: str | Path) -> tuple[Tensor, Tensor]:
    """``images`` (N, C, H, W) float in [0, 1] and ``labels`` (N,) int from a tensor file."""
    from .specs import load_state_dict  # noqa: PLC0415

    tensors = load_state_dict(path)
    missing = {"images", "labels"} - set(tensors)
    if missing:
        raise ValueError(f"{path} must hold tensors named 'images' and 'labels'; missing {sorted(missing)}")
    return tensors["images"].float(), tensors["labels"].long()


def load_dataset(spec: str) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) in [0, 1] and labels (N,) from a spec (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "foolbox" and rest:
        return foolbox_samples(rest)
    if kind == "tensors" and rest:
        return tensor_file(rest)
    raise ValueError(f"unknown data spec {spec!r}: use foolbox:<{'|'.join(FOOLBOX_SETS)}> or tensors:<file>")
