"""One batch: check the data against the model, attack it, and score it with held-out verdicts.

Every random draw for an image (its purifications, its attacks, its verdicts) comes from
per-image generators seeded from (seed, the image's index in the data set), as EDM's sampler
does, so an image's record is the same whatever the batch it is in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from ..attacks.registry import ATTACKS as REGISTRY
from ..attacks.registry import AttackOutcome, surrogate
from ..inputs import check_images
from ..network_checks import check_logits
from ..noise import Noise, check_seeds, derive_seeds, mix_seed
from ..defense import Defense
from .config import ATTACKS, EvalConfig
from .record import BatchRecord


def check_inputs(wrapper: Defense, images: Tensor, labels: Tensor, num_classes: int) -> None:
    """Data/model mismatches, raised before any attack runs."""
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need images (N, C, H, W) and labels (N,) with N >= 1, got {tuple(images.shape)} and {tuple(labels.shape)}")
    if wrapper.channels is not None and images.shape[1] != wrapper.channels:
        raise ValueError(f"the data has {images.shape[1]} channels but the model takes {wrapper.channels}")
    if wrapper.image_size is not None and tuple(images.shape[-2:]) != tuple(wrapper.image_size):
        raise ValueError(f"the data is {tuple(images.shape[-2:])} but the model takes {tuple(wrapper.image_size)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    try:
        check_images(images, wrapper.channels, wrapper.image_size)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the data: {error}") from error
    with torch.no_grad():  # one image through the bare classifier: its logits must cover the data's classes
        check_logits(wrapper.classify(images[:1]), 1, classes=num_classes)


def image_seeds(seed: int, ids: Sequence[int]) -> Tensor:
    """(B,) int64 base seeds ``mix_seed(seed, id)`` of the images with data-set indices ``ids``.

    Everything random about an image in an evaluation (its purifications, its attacks, its
    verdicts) is derived from this seed alone, so its record does not depend on the batch,
    the shard, ``--resume`` or the other images.
    """
    return torch.tensor([mix_seed(seed, int(i)) for i in ids], dtype=torch.int64)


def attack_batch(
    wrapper: Defense,
    images: Tensor,
    labels: Tensor,
    cfg: EvalConfig,
    *,
    attack: str | None = None,
    seeds: Tensor | Sequence[int] | None = None,
) -> AttackOutcome:
    """Run one registered attack (:mod:`robustwrap.attacks.registry`) on one batch under ``cfg``.

    Args:
        wrapper: the defense as deployed (:class:`robustwrap.defense.Defense`: the wrapper, or the bare
            classifier); with ``cfg.surrogate_steps`` the gradient is taken through a cheaper view of it.
        images: (B, C, H, W) in [0, 1]; labels: (B,) int64.
        attack: which registered attack (default: ``cfg.attacks[0]``).
        seeds: (B,) per-image seeds: image i's random start, its defense noise at every
            gradient call and vote check (and AutoAttack's own randomness, run image by image)
            come from ``seeds[i]`` alone. Default: ``mix_seed(cfg.seed, i)`` for positions i.

    Returns:
        The adversarial images and the attack's own per-image verdict.
    """
    attack = cfg.attacks[0] if attack is None else attack
    if attack not in REGISTRY:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    seeds = image_seeds(cfg.seed, range(images.shape[0])) if seeds is None else check_seeds(seeds, images.shape[0])
    attacked = surrogate(wrapper, cfg.surrogate_steps)
    return REGISTRY[attack].run(wrapper, attacked, images, labels, cfg, cfg.options_for(attack), seeds)


def attack_images(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, *,
                  attack: str | None = None, seeds: Tensor | Sequence[int] | None = None) -> Tensor:
    """(B, C, H, W) adversarial images of :func:`attack_batch` (the clean ones for attack 'none')."""
    return attack_batch(wrapper, images, labels, cfg, attack=attack, seeds=seeds).adversarial


def evaluate_batch(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, index: int,
                   ids: Sequence[int] | None = None) -> BatchRecord:
    """Per-image correctness on clean images and under each attack, for each of the R runs.

    Args:
        images: (B, C, H, W) in [0, 1]; labels: (B,).
        index: the batch's index (recorded).
        ids: the images' indices in the data set (default: ``index * cfg.batch_size + i``).

    Every random draw of image i comes from its seed ``mix_seed(cfg.seed, ids[i])``
    (:func:`image_seeds`): clean run r from ``(seed, 1, r)``, attack a from ``(seed, 0, a)``,
    run r of the verdict after attack a from ``(seed, 2, r, a)``. The record does not depend
    on the batch size, the process, other batches, or the global RNG (which is left alone).

    Verdicts are held out: ``robust[a][r][i]`` is the configured vote rule (S votes) on run r,
    whose seeds the attack never used; ``own[a][i]`` keeps the attack's own verdict beside it
    (an image a stochastic attack "broke" by luck, or stopped attacking after one lucky
    success, is re-decided by the held-out runs).
    """
    start = time.perf_counter()
    if ids is None:
        ids = range(index * cfg.batch_size, index * cfg.batch_size + images.shape[0])
    base = image_seeds(cfg.seed, ids)

    def correct(x: Tensor, *parts: int) -> list[bool]:
        with torch.no_grad():
            predicted = wrapper.predict(x, noise=Noise.seeded(derive_seeds(base, *parts)))
        return (predicted == labels).tolist()

    robust, own, seconds = {}, {}, {}
    for number, attack in enumerate(cfg.attacks):
        began = time.perf_counter()
        outcome = attack_batch(wrapper, images, labels, cfg, attack=attack, seeds=derive_seeds(base, 0, number))
        seconds[attack] = round(time.perf_counter() - began, 3)
        robust[attack] = [correct(outcome.adversarial, 2, run, number) for run in range(cfg.runs)]
        own[attack] = [bool(v) for v in outcome.own_correct.tolist()]
    return BatchRecord(batch=index, size=int(images.shape[0]), clean=[correct(images, 1, run) for run in range(cfg.runs)],
                       robust=robust, own=own, attack_seconds=seconds, seconds=round(time.perf_counter() - start, 3))
