"""Build networks from short text specs (for the CLI) and load their weights safely.

Every kind of spec is one :class:`Scheme` in :data:`CLASSIFIER_SCHEMES` or :data:`DIFFUSION_SCHEMES`:
how it is written, how it builds its network, whether it brings weights of its own, the input it
expects, and its help; :func:`build_classifier`, :func:`build_diffusion`, :func:`spec_has_weights`,
:func:`input_shape` and the CLI's help (:func:`describe_schemes`) all read them.

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
from dataclasses import dataclass
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


Kind = Literal["classifier", "diffusion"]


@dataclass(frozen=True)
class Request:
    """What a builder is asked for: the name after ``scheme:`` (the whole spec for a plain name), the
    network's input and classes, and a weights file (or None)."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    weights: str | None


@dataclass(frozen=True)
class Scheme:
    """One kind of spec.

    Attributes:
        written: how it is written in help, e.g. ``timm:<name>``; a plain name (``mnist``) is matched
            whole, ``scheme:<...>`` by its prefix.
        build: ``build(request) -> nn.Module`` (in eval mode).
        has_weights: brings trained weights of its own (a shipped model, a file, a repository).
        shape: (channels, image size) its inputs default to, or None for 3 x 32.
    """

    written: str
    build: Callable[[Request], nn.Module]
    has_weights: bool = False
    shape: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        """What a spec is matched by: the plain name, or the prefix before ':'."""
        return self.written.partition(":")[0].partition(" ")[0]

    @property
    def plain(self) -> bool:
        """A plain name (``mnist``), not ``scheme:<...>``."""
        return ":" not in self.written


def _timm(request: Request) -> nn.Module:
    import timm  # noqa: PLC0415

    weights, classes = request.weights, request.num_classes
    if weights is None:
        weights = timm_cached_weights(request.name)
        if weights is None:
            logger.warning("no local weights for timm:%s (pass weights, or fill the hub cache): it stays untrained",
                           request.name)
        else:  # the cached weights decide the head: timm's pretrained classes, not ``num_classes``
            classes = timm.models.get_pretrained_cfg(request.name).num_classes or classes
    return _build(lambda: timm.create_model(request.name, pretrained=False, num_classes=classes,
                                            in_chans=request.channels), weights)


def _torchvision(request: Request) -> nn.Module:
    import torchvision  # noqa: PLC0415

    return _build(lambda: torchvision.models.get_model(request.name, weights=None, num_classes=request.num_classes),
                  request.weights)


def _diffusers(request: Request) -> nn.Module:
    try:
        from diffusers import UNet2DModel  # noqa: PLC0415
    except ImportError as error:
        raise ImportError("diffusers is needed here: pip install 'robustwrap[diffusers]'") from error
    if not (Path(request.name) / "config.json").is_file():
        raise FileNotFoundError(
            f"no diffusers model folder at {request.name}: it must hold config.json and the weights "
            "(diffusion_pytorch_model.safetensors), as `UNet2DModel.save_pretrained` writes them"
        )
    return _build(lambda: UNet2DModel.from_pretrained(request.name, local_files_only=True),  # .bin: weights_only
                  request.weights)


def _shipped(name: str, entry, shape: tuple[int, int]) -> Scheme:
    return Scheme(f"{name} (shipped)", lambda r: _build(entry.build, r.weights or str(shipped_weights(entry))),
                  has_weights=True, shape=shape)


def _checkpoint(kind: Kind, path: Callable[[str], str | Path] = lambda name: name) -> Callable[[Request], nn.Module]:
    return lambda request: load_checkpoint(path(request.name), kind=kind)[0]


CLASSIFIER_SCHEMES: dict[str, Scheme] = {scheme.key: scheme for scheme in (
    *(_shipped(name, entry, (1, 28)) for name, entry in SHIPPED_CLASSIFIERS.items()),
    Scheme("cifar10-resnet18", lambda r: _build(lambda: CifarResNet18(r.num_classes),
                                                r.weights or str(pyautoattack_resnet18_weights())), has_weights=True),
    Scheme("timm:<name>", _timm),
    Scheme("hf:<org>/<name>", lambda r: hf_timm_classifier(r.name), has_weights=True),
    Scheme("torchvision:<name>", _torchvision),
    Scheme("small-resnet", lambda r: _build(lambda: SmallResNet(r.channels, r.num_classes), r.weights)),
    Scheme("robustbench:<dataset>/<threat>/<name>", _checkpoint("classifier", lambda name: robustbench_path(name)),
           has_weights=True),
    Scheme("checkpoint:<file>", _checkpoint("classifier"), has_weights=True),
)}
DIFFUSION_SCHEMES: dict[str, Scheme] = {scheme.key: scheme for scheme in (
    *(_shipped(name, entry, (1, 28)) for name, entry in SHIPPED_DIFFUSION.items()),
    Scheme("small-unet", lambda r: _build(lambda: SmallUNet(r.channels, base_channels=32, channel_mults=(1, 2, 2),
                                                            sample_size=r.image_size), r.weights)),
    Scheme("diffusers:<local folder>", _diffusers, has_weights=True),
    Scheme("hf:<org>/<name>", lambda r: hf_diffusion(r.name), has_weights=True),
    Scheme("checkpoint:<file>", _checkpoint("diffusion"), has_weights=True),
)}


def _schemes(kind: Kind) -> dict[str, Scheme]:
    if kind not in ("classifier", "diffusion"):
        raise ValueError(f"kind must be 'classifier' or 'diffusion', got {kind!r}")
    return CLASSIFIER_SCHEMES if kind == "classifier" else DIFFUSION_SCHEMES


def describe_schemes(kind: Kind) -> str:
    """'mnist (shipped), timm:<name>, ... or checkpoint:<file>', for help and errors."""
    written = [scheme.written for scheme in _schemes(kind).values()]
    return ", ".join(written[:-1]) + f" or {written[-1]}"


def find_scheme(spec: str, kind: Kind) -> tuple[Scheme, str]:
    """The scheme ``spec`` is written in, and the name it carries (after ``scheme:``; the spec for a plain name).

    Raises:
        ValueError: no scheme matches, naming every one.
    """
    schemes = _schemes(kind)
    prefix, colon, name = spec.partition(":")
    if not colon and spec in schemes and schemes[spec].plain:
        return schemes[spec], spec
    if colon and name and prefix in schemes and not schemes[prefix].plain:
        return schemes[prefix], name
    raise ValueError(f"unknown {kind} spec {spec!r}: use {describe_schemes(kind)}")


def build_classifier(spec: str, *, num_classes: int = 10, channels: int = 3, weights: str | None = None) -> nn.Module:
    """A classifier from a spec (:data:`CLASSIFIER_SCHEMES`), e.g. ``mnist``, ``timm:resnet18``, ``checkpoint:x.pt``.

    ``cifar10-resnet18`` is the CIFAR-10 ResNet-18 bundled with ``pyautoattack`` (its weights by default).
    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store; ``timm:<name>`` takes cached pretrained
    weights, with their number of classes). ``checkpoint:`` and ``robustbench:`` specs read
    everything, classes included, from their file.
    """
    scheme, name = find_scheme(spec, "classifier")
    return scheme.build(Request(name, num_classes, channels, 32, weights))


def build_diffusion(spec: str, *, channels: int = 3, image_size: int = 32, weights: str | None = None) -> nn.Module:
    """A diffusion network from a spec (:data:`DIFFUSION_SCHEMES`), e.g. ``mnist``, ``small-unet``, ``hf:org/name``.

    Without ``weights`` the network keeps its initialisation, drawn from seed 0 (the shipped
    ``mnist`` model loads its weights from the store).
    """
    scheme, name = find_scheme(spec, "diffusion")
    return scheme.build(Request(name, 0, channels, image_size, weights))


def spec_has_weights(spec: str, kind: Kind) -> bool:
    """Whether ``spec`` brings trained weights of its own, for a network of ``kind`` (its scheme's
    ``has_weights``: the shipped models, pyautoattack's ``cifar10-resnet18`` and every spec that names a
    file or a repository; not ``small-resnet``, ``small-unet``, ``torchvision:`` or ``timm:``, whose cached
    pretrained weights are optional). An unknown spec has none.

    Raises:
        ValueError: ``kind`` is neither "classifier" nor "diffusion".
    """
    try:
        return find_scheme(spec, kind)[0].has_weights
    except ValueError:
        _schemes(kind)  # a bad kind still raises
        return False


def input_shape(classifier: str) -> tuple[int, int]:
    """(channels, image size) the classifier spec's inputs default to: 1 x 28 for the shipped mnist model,
    else 3 x 32 (a classifier that only takes one size says so once it is built)."""
    try:
        scheme = find_scheme(classifier, "classifier")[0]
    except ValueError:
        return 3, 32
    return scheme.shape or (3, 32)


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
