"""AutoAttack through the ``pyautoattack`` package (extra ``eval``); not re-implemented here."""

from __future__ import annotations

import importlib
from typing import Literal

import torch
from torch import Tensor, nn

Version = Literal["rand", "standard"]


def _set_apgd_iterations(attack: object, iterations: int) -> None:
    # APGD derives its step-size schedule from n_iter in its constructor: keep them consistent.
    attack.n_iter = iterations
    attack.n_iter_2 = max(int(0.22 * iterations), 1)
    attack.n_iter_min = max(int(0.06 * iterations), 1)
    attack.size_decr = max(int(0.03 * iterations), 1)


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Literal["Linf", "L2"] = "Linf",
    version: Version = "rand",
    iterations: int = 100,
    eot: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    return_labels: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Adversarial images from AutoAttack.

    ``version="rand"`` (APGD-CE + APGD-DLR with EOT) is the one for randomized defenses like
    this one; ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) for deterministic models.
    ``iterations`` and ``eot`` reduce the cost for quick checks (defaults: the paper's 100 and 20).

    pyautoattack seeds the global RNG with ``seed`` inside; this function runs it in a forked
    RNG state (CPU and ``x``'s CUDA device), so the caller's random state is left unchanged.

    Returns:
        (B, C, H, W) adversarial images (AutoAttack returns the clean image where it fails);
        with ``return_labels``, also the (B,) labels AutoAttack's own last evaluation gave them.
    """
    try:
        AutoAttack = importlib.import_module("pyautoattack").AutoAttack
    except ImportError as error:
        raise ImportError("AutoAttack needs pyautoattack: pip install 'robustwrap[eval]'") from error
    if version not in ("rand", "standard"):
        raise ValueError(f"version must be 'rand' or 'standard', got {version!r}")
    adversary = AutoAttack(model, eps=eps, norm=norm, version=version, device=x.device, seed=seed)
    for attack in (adversary.apgd, adversary.apgd_targeted):
        _set_apgd_iterations(attack, iterations)
    adversary.fab.n_iter = iterations
    if version == "rand":
        adversary.apgd.eot_iter = eot
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (x_adv.detach(), y_adv.detach()) if return_labels else x_adv.detach()
