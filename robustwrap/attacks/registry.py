"""Every attack the evaluation runs, registered by name in one place.

The CLI (``--attack`` and its help), the evaluation, the sanity checks and the tuner read
:data:`ATTACKS`; adding an attack is adding one :class:`AttackSpec` here.

Every runner takes per-image seeds (B,): image i's randomness (random start, the defense's
noise at each gradient call, AutoAttack's own draws) comes from ``seeds[i]`` alone, so its
attack does not depend on the batch. Every runner returns the adversarial images and the
attack's *own* verdict per image (what the attack saw when it stopped); the evaluation then
re-decides each image on held-out runs whose seeds the attack never used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import torch
from torch import Tensor, nn

from ..noise import derive_seeds, mix_seed
from .autoattack import autoattack
from .diffhammer import diffhammer
from .pgd import pgd_eot
from .pgd_vote import pgd_vote
from .targets import BPDALogits, DefenseLogits, DeviationLogits, MaskAwareLogits

if TYPE_CHECKING:
    from ..defense import Defense


class Budget(Protocol):
    """What a runner reads from the evaluation's settings (:class:`robustwrap.evaluation.EvalConfig`)."""

    radius: float
    norm: str
    iters: int
    step: float | None
    eot: int
    mask_temperature: float
    em_samples: int
    em_steps: int
    em_reference: bool
    dev_weight: float

    def loss_for(self, attack: str) -> str: ...


@dataclass(frozen=True)
class AttackOutcome:
    """One attack on one batch.

    Attributes:
        adversarial: (B, C, H, W) images in [0, 1] within the ball.
        own_correct: (B,) bool, the attack's own verdict that the image still stands (its last
            check with its own noise, or AutoAttack's own labels).
    """

    adversarial: Tensor
    own_correct: Tensor


Runner = Callable[["Defense", "Defense", Tensor, Tensor, Budget, Tensor], AttackOutcome]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: what ``--attack`` takes.
        summary: one line for ``--help`` and reports.
        stepped: takes a step size and a loss (PGD family).
        default_loss: the loss used when none is given (None: the attack has its own).
        deviation: takes DiffAttack's deviation term (``--dev-weight``).
        run: ``run(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome``;
            ``deployed`` is the defense as evaluated, ``attacked`` the view whose gradient is
            taken (a surrogate or the same), images (B, C, H, W) in [0, 1], labels (B,),
            seeds (B,) int64.
    """

    name: str
    summary: str
    stepped: bool
    default_loss: str | None
    run: Runner
    deviation: bool = False


def attack_target(attacked: "Defense", attack: str, budget: Budget, seeds: Tensor) -> nn.Module:
    """The ``model(x) -> logits`` view a PGD-family attack differentiates, with per-image seeds."""
    if attacked.deterministic:  # no purification: every view of one is the model's own scores
        return DefenseLogits(attacked)
    if attack == "bpda":
        return BPDALogits(attacked, seeds=seeds)
    if attack == "mask-aware":
        return MaskAwareLogits(attacked, budget.mask_temperature, seeds=seeds)
    if attack == "pgd-eot" and budget.dev_weight > 0:
        return DeviationLogits(attacked, budget.dev_weight, seeds=seeds)
    return DefenseLogits(attacked, seeds=seeds)


def _own_check(view: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: the view's next call (fresh noise from its own seeds) still classifies ``x`` correctly."""
    with torch.no_grad():
        out = view(x)
        return (out[0] if isinstance(out, tuple) else out).argmax(dim=1) == labels


def _run_none(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome:
    view = attack_target(deployed, "pgd-eot", budget, derive_seeds(seeds, 1))
    return AttackOutcome(images, _own_check(view, images, labels))


def _pgd_runner(name: str) -> Runner:
    def run(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome:
        view = attack_target(attacked, name, budget, derive_seeds(seeds, 1))
        if budget.iters == 0:
            return AttackOutcome(images, _own_check(view, images, labels))
        adversarial = pgd_eot(view, images, labels, eps=budget.radius, norm=budget.norm, steps=budget.iters,
                              step_size=budget.step, eot=1 if attacked.deterministic else budget.eot,
                              loss=budget.loss_for(name), seeds=derive_seeds(seeds, 0))
        return AttackOutcome(adversarial, _own_check(view, adversarial, labels))
    return run


def _run_autoattack(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome:
    """AutoAttack image by image, each from its own seed (its internal RNG is batch-wide)."""
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, seeds)
    version = "standard" if attacked.deterministic else "rand"  # AutoAttack's own choice for randomized models
    adversarial, own = [], []
    for i, seed in enumerate(seeds.tolist()):
        model = attack_target(attacked, "autoattack", budget, derive_seeds([seed], 1))
        x_adv, y_adv = autoattack(model, images[i:i + 1], labels[i:i + 1], eps=budget.radius, norm=budget.norm,
                                  version=version, iterations=budget.iters, eot=budget.eot,
                                  seed=mix_seed(seed, 0) % (2**31 - 1), batch_size=1, return_labels=True)
        adversarial.append(x_adv)
        own.append(y_adv.to(labels.device) == labels[i:i + 1])
    return AttackOutcome(torch.cat(adversarial), torch.cat(own))


def _run_pgd_vote(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome:
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, seeds)
    result = pgd_vote(attacked, deployed, images, labels, seeds=seeds, eps=budget.radius, norm=budget.norm,
                      steps=budget.iters, step_size=budget.step, copies=budget.eot,
                      loss=budget.loss_for("pgd-vote"), dev_weight=budget.dev_weight)
    return AttackOutcome(result.adversarial, ~result.broken)


def _run_diffhammer(deployed, attacked, images, labels, budget, seeds) -> AttackOutcome:
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, seeds)
    result = diffhammer(attacked, images, labels, seeds=seeds, eps=budget.radius, norm=budget.norm,
                        steps=budget.iters, step_size=budget.step, samples=budget.em_samples,
                        loss=budget.loss_for("diffhammer"), em_steps=budget.em_steps,
                        em_reference=budget.em_reference)
    return AttackOutcome(result.adversarial, ~result.broken)


ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec("none", "no attack (clean images)", False, None, _run_none),
    AttackSpec("pgd-eot", "PGD with EOT, full gradient through every denoiser call; last iterate", True, "ce",
               _pgd_runner("pgd-eot"), deviation=True),
    AttackSpec("bpda", "PGD with identity backward through the purifier (BPDA)", True, "ce", _pgd_runner("bpda")),
    AttackSpec("mask-aware", "PGD with the gradient through a sigmoid-relaxed mask too", True, "ce",
               _pgd_runner("mask-aware")),
    AttackSpec("pgd-vote", "DiffBreak protocol: loss averaged over --eot K purified copies per gradient, the "
               "deployed vote checked on fresh copies after every step, best iterate kept, per-image early stop",
               True, "margin", _run_pgd_vote, deviation=True),
    AttackSpec("diffhammer", "DiffHammer: EM over --em-samples N purifications per step (lambda 5, --em-steps rounds, "
               "--em-reference for the reference's EM), gradient grafted through one exact chain, momentum 0.5",
               True, "ce", _run_diffhammer),
    AttackSpec("autoattack", "AutoAttack (APGD-CE + APGD-DLR with EOT; needs pyautoattack), image by image",
               False, None, _run_autoattack),
)}


def attack_names() -> tuple[str, ...]:
    """The registered attack names, in registration order."""
    return tuple(ATTACKS)


def describe_attacks() -> str:
    """'name: summary; ...' for ``--help``."""
    return "; ".join(f"{spec.name} ({spec.summary})" for spec in ATTACKS.values())


def surrogate(defense: "Defense", steps: int | None) -> "Defense":
    """The view attacks differentiate: ``defense`` itself, or the same networks at ``steps`` (a deterministic
    model has no steps: itself)."""
    if steps is None or defense.deterministic:
        return defense
    return defense.with_config(dataclasses.replace(defense.config, steps=steps))
