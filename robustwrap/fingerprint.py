"""Fingerprints of data and weights, so that a resumed run can tell it is continuing the same one.

A results file (``robustwrap eval``) and a sweep (``robustwrap tune``) record the SHA-256 of
the selected images, their labels and each network's weights; resuming with anything
different is refused, naming what changed (:func:`header_differences`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

WHAT = {"images": "the images", "labels": "the labels", "classifier": "the classifier's weights",
        "diffusion": "the diffusion model's weights"}


def _update(digest: Any, tensor: Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.numel():
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))  # no copy: ~1 s per GB


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and values."""
    digest = hashlib.sha256()
    _update(digest, tensor)
    return digest.hexdigest()


def module_digest(module: nn.Module) -> str:
    """SHA-256 (hex) of a network's state dict: every parameter and buffer, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


def run_fingerprint(images: Tensor, labels: Tensor, classifier: nn.Module, diffusion: nn.Module | None) -> dict:
    """The digests a resumable run records: images, labels, classifier and diffusion weights."""
    return {"images": tensor_digest(images), "labels": tensor_digest(labels), "classifier": module_digest(classifier),
            "diffusion": None if diffusion is None else module_digest(diffusion)}


def header_differences(recorded: object, current: object, where: str = "") -> list[str]:
    """What differs between a recorded header and the current one, in words, most telling first.

    Fingerprint entries read "the images changed"; other fields by their dotted name
    ("eval.iters"); a field present on one side only is named too.
    """
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return [] if recorded == current else [where or "the header"]
    changes = []
    for key in sorted(set(recorded) | set(current), key=lambda k: (k != "fingerprint", str(k))):
        name = f"{where}.{key}" if where else str(key)
        if key not in recorded or key not in current:
            changes.append(f"{name} ({'not recorded' if key not in recorded else 'no longer given'})")
        elif where == "fingerprint":
            if recorded[key] != current[key]:
                changes.append(f"{WHAT.get(key, key)} changed")
        else:
            changes += header_differences(recorded[key], current[key], name)
    return changes
