"""``hf:<repo_id>[@revision]`` specs: models from the Hugging Face hub cache, offline first.

A repository is read from the local hub cache (``$HF_HUB_CACHE``, else huggingface_hub's
default); only when it is not cached and ``HF_HUB_OFFLINE`` is not set is it downloaded. What
can be read:

- a diffusers ``UNet2DModel`` folder (``config.json`` at the root or in ``unet/``), e.g. the
  DDPM CIFAR-10 model, trained on exactly the linear schedule the defense uses;
- a timm model repository (``config.json`` with ``architecture``, ``model.safetensors``).

Weights are read without executing code (:mod:`robustwrap.checkpoints`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .checkpoints import load_state_dict, load_strict


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``("org/name", revision or None)`` from ``org/name`` or ``org/name@revision``."""
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hf specs are hf:<org>/<name>[@revision], e.g. hf:google/ddpm-cifar10-32; got hf:{spec}")
    return repo_id, revision or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a hub repository: from the cache, else downloaded (unless offline).

    Raises:
        FileNotFoundError: neither cached nor reachable; the message names the repository,
            the revision and the cache folder.
    """
    from huggingface_hub import snapshot_download  # noqa: PLC0415  (installed with timm)

    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    where = cache_dir or "huggingface_hub's default cache"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception as cached_error:  # huggingface_hub raises several types for "not in the cache"
        if _offline():
            raise FileNotFoundError(
                f"hf:{repo_id}{'@' + revision if revision else ''} is not in the hub cache ({where}) and "
                "HF_HUB_OFFLINE is set: download it where there is network access "
                f"(`hf download {repo_id}`) and copy the cache over"
            ) from cached_error
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))
    except Exception as error:
        raise FileNotFoundError(
            f"hf:{repo_id}{'@' + revision if revision else ''} is neither in the hub cache ({where}) nor "
            f"reachable ({type(error).__name__}): fill the cache where there is network access"
        ) from error


def _first_file(folder: Path, names: tuple[str, ...], repo_id: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"hf:{repo_id} has none of {list(names)} in {folder}")


def read_hub_config(path: Path, repo_id: str) -> dict:
    """A hub snapshot's ``config.json`` as a dict; anything else is a ValueError naming the file."""
    try:
        config = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"hf:{repo_id}: {path} is not valid JSON ({str(error)[:120]})") from error
    if not isinstance(config, dict):
        raise ValueError(f"hf:{repo_id}: {path} holds a JSON {type(config).__name__}, not an object of settings")
    return config


def hf_diffusion(spec: str, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """A diffusers ``UNet2DModel`` from ``<org>/<name>[@revision]`` (root or ``unet/`` folder)."""
    repo_id, revision = parse_hf_spec(spec)
    folder = hf_snapshot(repo_id, revision, cache_dir)
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    config_file = _first_file(folder, ("config.json",), repo_id)
    config = read_hub_config(config_file, repo_id)
    if config.get("_class_name") != "UNet2DModel":
        raise ValueError(f"hf:{repo_id} holds a {config.get('_class_name')!r}, not a diffusers UNet2DModel")
    try:
        from diffusers import UNet2DModel  # noqa: PLC0415
    except ImportError as error:
        raise ImportError("hf: diffusion models need diffusers: pip install 'robustwrap[diffusers]'") from error
    try:
        model = UNet2DModel.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"hf:{repo_id}: {config_file} does not describe a UNet2DModel diffusers can build "
                         f"({type(error).__name__}: {str(error)[:120]})") from error
    weights = _first_file(folder, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"), repo_id)
    load_strict(model, load_state_dict(weights), weights, f"hf:{repo_id}")
    return model.eval()


def hf_timm_classifier(spec: str, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """A timm classifier with its weights from ``<org>/<name>[@revision]`` (timm's hub layout)."""
    import timm  # noqa: PLC0415

    repo_id, revision = parse_hf_spec(spec)
    folder = hf_snapshot(repo_id, revision, cache_dir)
    config_file = _first_file(folder, ("config.json",), repo_id)
    config = read_hub_config(config_file, repo_id)
    architecture = config.get("architecture")
    if not isinstance(architecture, str):
        raise ValueError(f"hf:{repo_id} is not a timm model repository ({config_file} names no architecture)")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained_cfg, dict):
        raise ValueError(f"hf:{repo_id}: {config_file}: pretrained_cfg must be an object, got {pretrained_cfg!r}")
    num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"hf:{repo_id}: {config_file}: num_classes must be a positive integer, got {num_classes!r}")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    model = timm.create_model(architecture, pretrained=False, pretrained_cfg_overlay=pretrained_cfg, **kwargs)
    weights = _first_file(folder, ("model.safetensors", "pytorch_model.bin"), repo_id)
    load_strict(model, load_state_dict(weights), weights, f"hf:{repo_id}")
    return model.eval()
