"""Build networks from short text specs (for the CLI) and load their weights safely.

Classifier specs: ``mnist`` (shipped), ``cifar10-resnet18`` (pyautoattack's), ``timm:<name>``
(weights from ``weights`` or an existing local hub cache), ``hf:<org>/<name>[@revision]`` (a timm
model repository on the Hugging Face hub, cache first), ``torchvision:<name>``,
``small-resnet``, ``robustbench:<dataset>/<threat_model>/<name>`` (a file in the model store)
and ``checkpoint:<file>`` (architecture detected from the tensors).
Diffusion specs: ``mnist`` (shipped), ``small-unet``, ``diffusers:<local folder>``,
``hf:<org>/<name>[@revision]`` (a diffusers UNet2DModel repository, cache first) and
``checkpoint:<file>`` (guided-diffusion, score-SDE DDPM++, converted EDM, ...).
The shipped specs load their weights from the model store unless weights are given.
Every file is read without executing code (:mod:`robustwrap.checkpoints`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from .architectures import load_checkpoint
from .checkpoints import load_state_dict, load_strict
from .hub import hf_diffusion, hf_timm_classifier
from .nets import SmallResNet, SmallUNet
from .nets.cifar_resnet import CifarResNet18, pyautoattack_resnet18_weights
from .store import SHIPPED_CLASSIFIERS, SHIPPED_DIFFUSION, model_dir, shipped_weights

logger = logging.getLogger(__name__)


def _build(make: Callable[[], nn.Module], weights: str | None) -> nn.Module:
    """``make()`` with torch's global RNG seeded 0 (and restored), so that networks without weight
    files are the same in every process (torchrun ranks, reruns); then the weights, strictly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make()
    if weights:
        load_strict(model, load_state_dict(weights), weights, type(model).__name__)
    return model.eval()


def build_classifier(spec: str, *, num_classes: int = 10, channels: int = 3, weights: str | None = None) -> nn.Module:
    """A classifier from ``mnist``, ``cifar10-resnet18``, ``timm:<name>``, ``torchvision:<name>`` or ``small-resnet``.

    ``cifar10-resnet18`` is the CIFAR-10 ResNet-18 bundled with ``pyautoattack`` (its weights by default).

    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store; ``timm:<name>`` takes cached pretrained
    weights, with their number of classes). ``checkpoint:`` and ``robustbench:`` specs read
    everything, classes included, from their file.
    """
    if spec in SHIPPED_CLASSIFIERS:
        entry = SHIPPED_CLASSIFIERS[spec]
        return _build(entry.build, weights or str(shipped_weights(entry)))
    if spec == "cifar10-resnet18":
        return _build(lambda: CifarResNet18(num_classes), weights or str(pyautoattack_resnet18_weights()))
    kind, _, name = spec.partition(":")
    if kind == "checkpoint" and name:
        return load_checkpoint(name, kind="classifier")[0]
    if kind == "robustbench" and name:
        return load_checkpoint(robustbench_path(name), kind="classifier")[0]
    if kind == "hf" and name:
        return hf_timm_classifier(name)
    if kind == "timm" and name and weights is None:
        weights = timm_cached_weights(name)
        if weights is None:
            logger.warning("no local weights for timm:%s (pass weights, or fill the hub cache): it stays untrained", name)
        else:  # the cached weights decide the head: timm's pretrained classes, not ``num_classes``
            import timm  # noqa: PLC0415

            num_classes = timm.models.get_pretrained_cfg(name).num_classes or num_classes
    return _build(lambda: _classifier(spec, num_classes, channels), weights)


def robustbench_path(name: str) -> Path:
    """``<model_dir>/<dataset>/<threat_model>/<name>.pt`` for ``name`` = ``dataset/threat_model/name``.

    Raises:
        ValueError: ``name`` does not have three parts.
        FileNotFoundError: no such file, with where to put it.
    """
    parts = name.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"robustbench specs are robustbench:<dataset>/<threat_model>/<name>, e.g. cifar10/Linf/Standard; got {name!r}")
    folder = model_dir() / parts[0] / parts[1]
    for suffix in (".pt", ".pth", ".safetensors"):
        if (folder / (parts[2] + suffix)).is_file():
            return folder / (parts[2] + suffix)
    raise FileNotFoundError(
        f"no RobustBench checkpoint {folder / (parts[2] + '.pt')}: download it where you have network access "
        "(RobustBench's model zoo) and copy it there, or set ROBUSTWRAP_MODEL_DIR to the folder that holds it"
    )


def timm_cached_weights(name: str, hub_cache: str | os.PathLike | None = None) -> str | None:
    """Path of timm's pretrained weights for ``name`` if a local cache already holds them.

    Looks in the Hugging Face hub cache (``model.safetensors`` / ``pytorch_model.bin`` of the
    model's ``hf_hub_id``; ``hub_cache`` overrides the default cache folder) and in torch hub's
    ``checkpoints`` folder; never downloads.
    """
    import timm  # noqa: PLC0415

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown names raise different errors across timm versions
        return None
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hub_cache)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return str(candidate)
    return None


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
        raise ValueError(f"unknown classifier spec {spec!r}: use mnist, cifar10-resnet18, timm:<name>, hf:<org>/<name>, "
                         "torchvision:<name>, small-resnet, robustbench:<dataset>/<threat>/<name> or checkpoint:<file>")
    return model


def build_diffusion(spec: str, *, channels: int = 3, image_size: int = 32, weights: str | None = None) -> nn.Module:
    """A diffusion network from ``mnist``, ``small-unet`` or ``diffusers:<local folder>``.

    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store).
    """
    if spec in SHIPPED_DIFFUSION:
        entry = SHIPPED_DIFFUSION[spec]
        return _build(entry.build, weights or str(shipped_weights(entry)))
    kind, _, name = spec.partition(":")
    if kind == "checkpoint" and name:
        return load_checkpoint(name, kind="diffusion")[0]
    if kind == "hf" and name:
        return hf_diffusion(name)
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
        if not (Path(location) / "config.json").is_file():
            raise FileNotFoundError(
                f"no diffusers model folder at {location}: it must hold config.json and the weights "
                "(diffusion_pytorch_model.safetensors), as `UNet2DModel.save_pretrained` writes them"
            )
        model = UNet2DModel.from_pretrained(location, local_files_only=True)  # .bin files: weights_only=True
    else:
        raise ValueError(f"unknown diffusion spec {spec!r}: use mnist, small-unet, diffusers:<local folder>, "
                         "hf:<org>/<name> or checkpoint:<file>")
    return model


def spec_has_weights(spec: str, kind: Literal["classifier", "diffusion"]) -> bool:
    """Whether ``spec`` brings trained weights of its own, for a network of ``kind``.

    True for the shipped models, pyautoattack's ``cifar10-resnet18`` and every spec that names a
    file or a repository (``checkpoint:``, ``robustbench:``, ``diffusers:``, ``hf:``); False for the
    specs that build a network and may only receive weights (``small-resnet``, ``small-unet``,
    ``torchvision:<name>``, and ``timm:<name>``, whose cached pretrained weights are optional).

    Raises:
        ValueError: ``kind`` is neither "classifier" nor "diffusion".
    """
    if kind not in ("classifier", "diffusion"):
        raise ValueError(f"kind must be 'classifier' or 'diffusion', got {kind!r}")
    shipped = SHIPPED_CLASSIFIERS if kind == "classifier" else SHIPPED_DIFFUSION
    return (spec in shipped or (kind == "classifier" and spec == "cifar10-resnet18")
            or spec.startswith(("checkpoint:", "robustbench:", "diffusers:", "hf:")))
