"""Build networks from short text specs (for the CLI) and load their weights safely.

Classifier specs: ``mnist`` (shipped), ``timm:<name>``, ``torchvision:<name>``, ``small-resnet``.
Diffusion specs: ``mnist`` (shipped), ``small-unet``, ``diffusers:<local folder>``.
The shipped specs load their weights from the model store unless weights are given.
Weights: a safetensors file, or a ``.pt``/``.pth`` state dict read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .nets import SmallResNet, SmallUNet
from .store import SHIPPED_CLASSIFIERS, SHIPPED_DIFFUSION, shipped_weights


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, without executing code from it.

    Reads safetensors, or a torch file with ``weights_only=True``; unwraps a ``state_dict``
    entry and strips DataParallel's ``module.`` prefixes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint, or would need code execution to load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
            raise ValueError(
                f"{path} could not be read as a weights-only checkpoint ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}). If it pickles code, load it once in a trusted "
                "environment and save `model.state_dict()` with safetensors.torch.save_file."
            ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _build(make: Callable[[], nn.Module], weights: str | None) -> nn.Module:
    """``make()`` with torch's global RNG seeded 0 (and restored), so that networks without weight
    files are the same in every process (torchrun ranks, reruns); then the weights, strictly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make()
    if weights:
        model.load_state_dict(load_state_dict(weights), strict=True)
    return model.eval()


def build_classifier(spec: str, *, num_classes: int = 10, channels: int = 3, weights: str | None = None) -> nn.Module:
    """A classifier from ``mnist``, ``timm:<name>``, ``torchvision:<name>`` or ``small-resnet``.

    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store).
    """
    if spec in SHIPPED_CLASSIFIERS:
        entry = SHIPPED_CLASSIFIERS[spec]
        return _build(entry.build, weights or str(shipped_weights(entry)))
    return _build(lambda: _classifier(spec, num_classes, channels), weights)


def _classifier(spec: str, num_classes: int, channels: int) -> nn.Module:
    kind, _, name = spec.partition(":")
    if kind == "timm" and name:
        import timm  # noqa: PLC0415

        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
    elif kind == "torchvision" and name:
        import torchvision  # noqa: PLC0415

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    elif spec == "small-resnet":
        model = SmallResNet(channels, num_classes)
    else:
        raise ValueError(f"unknown classifier spec {spec!r}: use mnist, timm:<name>, torchvision:<name> or small-resnet")
    return model


def build_diffusion(spec: str, *, channels: int = 3, image_size: int = 32, weights: str | None = None) -> nn.Module:
    """A diffusion network from ``mnist``, ``small-unet`` or ``diffusers:<local folder>``.

    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store).
    """
    if spec in SHIPPED_DIFFUSION:
        entry = SHIPPED_DIFFUSION[spec]
        return _build(entry.build, weights or str(shipped_weights(entry)))
    return _build(lambda: _diffusion(spec, channels, image_size), weights)


def _diffusion(spec: str, channels: int, image_size: int) -> nn.Module:
    kind, _, location = spec.partition(":")
    if spec == "small-unet":
        model: nn.Module = SmallUNet(channels, base_channels=32, channel_mults=(1, 2, 2), sample_size=image_size)
    elif kind == "diffusers" and location:
        try:
            from diffusers import UNet2DModel  # noqa: PLC0415
        except ImportError as error:
            raise ImportError("diffusers is needed here: pip install 'robustwrap[diffusers]'") from error
        model = UNet2DModel.from_pretrained(location, local_files_only=True)
    else:
        raise ValueError(f"unknown diffusion spec {spec!r}: use mnist, small-unet or diffusers:<local folder>")
    return model
