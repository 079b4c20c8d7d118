"""Every attack the evaluation runs, registered by name in one place.

The CLI (``--attack``, its help and one flag per attack option), the evaluation, the report,
the sanity checks and the tuner read :data:`ATTACKS`; adding an attack is its module (the attack
and its options dataclass, :class:`~robustwrap.attacks.options.AttackOptions`) and one
:class:`AttackSpec` here.

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
from ..schema import bounds_of, field_types, help_of
from .autoattack import autoattack
from .deviation import DeviationOptions
from .diffhammer import DiffHammerOptions, diffhammer
from .options import AttackOptions, NoOptions
from .pgd import pgd_eot
from .pgd_vote import pgd_vote
from .targets import BPDALogits, DefenseLogits, DeviationLogits, MaskAwareLogits, MaskAwareOptions

if TYPE_CHECKING:
    from ..defense import Defense


class Budget(Protocol):
    """What a runner reads of the evaluation's threat model and budget (:class:`robustwrap.evaluation.EvalConfig`);
    the attack's own options come apart, as its options dataclass."""

    radius: float
    norm: str
    iters: int
    step: float | None
    eot: int

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


Runner = Callable[["Defense", "Defense", Tensor, Tensor, Budget, AttackOptions, Tensor], AttackOutcome]
View = Callable[["Defense", AttackOptions, Tensor], nn.Module]


def full_gradient(attacked: "Defense", options: AttackOptions, seeds: Tensor) -> nn.Module:
    """The full gradient through every denoiser call (:class:`DefenseLogits`)."""
    return DefenseLogits(attacked, seeds=seeds)


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: what ``--attack`` takes.
        summary: one line for ``--help`` and reports.
        stepped: takes a step size and a loss (PGD family).
        default_loss: the loss used when none is given (None: the attack has its own).
        run: ``run(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome``;
            ``deployed`` is the defense as evaluated, ``attacked`` the view whose gradient is
            taken (a surrogate or the same), images (B, C, H, W) in [0, 1], labels (B,),
            ``options`` an instance of :attr:`options`, seeds (B,) int64.
        options: the attack's own options class (defaults, declared bounds and help, ``describe()``);
            the CLI makes one flag of each field.
        view: ``view(attacked, options, seeds) -> model``, the ``model(x) -> logits`` a gradient attack
            differentiates when the defense draws noise (default: :func:`full_gradient`).
    """

    name: str
    summary: str
    stepped: bool
    default_loss: str | None
    run: Runner
    options: type[AttackOptions] = NoOptions
    view: View = full_gradient

    def target(self, attacked: "Defense", options: AttackOptions, seeds: Tensor) -> nn.Module:
        """What this attack differentiates, with per-image seeds (B,); a deterministic defense (no
        purification) has one view, its own scores."""
        if attacked.deterministic:
            return DefenseLogits(attacked)
        return self.view(attacked, options, seeds)


def _with_deviation(attacked: "Defense", options: DeviationOptions, seeds: Tensor) -> nn.Module:
    """The full gradient, plus DiffAttack's deviation term when its weight is set."""
    if options.dev_weight > 0:
        return DeviationLogits(attacked, options.dev_weight, seeds=seeds)
    return DefenseLogits(attacked, seeds=seeds)


def _own_check(view: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: the view's next call (fresh noise from its own seeds) still classifies ``x`` correctly."""
    with torch.no_grad():
        out = view(x)
        return (out[0] if isinstance(out, tuple) else out).argmax(dim=1) == labels


def _run_none(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome:
    view = ATTACKS["none"].target(deployed, options, derive_seeds(seeds, 1))
    return AttackOutcome(images, _own_check(view, images, labels))


def _pgd_runner(name: str) -> Runner:
    def run(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome:
        view = ATTACKS[name].target(attacked, options, derive_seeds(seeds, 1))
        if budget.iters == 0:
            return AttackOutcome(images, _own_check(view, images, labels))
        adversarial = pgd_eot(view, images, labels, eps=budget.radius, norm=budget.norm, steps=budget.iters,
                              step_size=budget.step, eot=1 if attacked.deterministic else budget.eot,
                              loss=budget.loss_for(name), seeds=derive_seeds(seeds, 0))
        return AttackOutcome(adversarial, _own_check(view, adversarial, labels))
    return run


def _run_autoattack(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome:
    """AutoAttack image by image, each from its own seed (its internal RNG is batch-wide)."""
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, options, seeds)
    version = "standard" if attacked.deterministic else "rand"  # AutoAttack's own choice for randomized models
    adversarial, own = [], []
    for i, seed in enumerate(seeds.tolist()):
        model = ATTACKS["autoattack"].target(attacked, options, derive_seeds([seed], 1))
        x_adv, y_adv = autoattack(model, images[i:i + 1], labels[i:i + 1], eps=budget.radius, norm=budget.norm,
                                  version=version, iterations=budget.iters, eot=budget.eot,
                                  seed=mix_seed(seed, 0) % (2**31 - 1), batch_size=1, return_labels=True)
        adversarial.append(x_adv)
        own.append(y_adv.to(labels.device) == labels[i:i + 1])
    return AttackOutcome(torch.cat(adversarial), torch.cat(own))


def _run_pgd_vote(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome:
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, options, seeds)
    result = pgd_vote(attacked, deployed, images, labels, seeds=seeds, eps=budget.radius, norm=budget.norm,
                      steps=budget.iters, step_size=budget.step, copies=budget.eot,
                      loss=budget.loss_for("pgd-vote"), dev_weight=options.dev_weight)
    return AttackOutcome(result.adversarial, ~result.broken)


def _run_diffhammer(deployed, attacked, images, labels, budget, options, seeds) -> AttackOutcome:
    if budget.iters == 0:
        return _run_none(deployed, attacked, images, labels, budget, options, seeds)
    result = diffhammer(attacked, images, labels, seeds=seeds, eps=budget.radius, norm=budget.norm,
                        steps=budget.iters, step_size=budget.step, samples=options.em_samples,
                        loss=budget.loss_for("diffhammer"), em_steps=options.em_steps,
                        em_reference=options.em_reference)
    return AttackOutcome(result.adversarial, ~result.broken)


ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec("none", "no attack (clean images)", False, None, _run_none),
    AttackSpec("pgd-eot", "PGD with EOT, full gradient through every denoiser call; last iterate", True, "ce",
               _pgd_runner("pgd-eot"), DeviationOptions, _with_deviation),
    AttackSpec("bpda", "PGD with identity backward through the purifier (BPDA)", True, "ce", _pgd_runner("bpda"),
               view=lambda attacked, options, seeds: BPDALogits(attacked, seeds=seeds)),
    AttackSpec("mask-aware", "PGD with the gradient through a sigmoid-relaxed mask too (--mask-temperature)", True,
               "ce", _pgd_runner("mask-aware"), MaskAwareOptions,
               lambda attacked, options, seeds: MaskAwareLogits(attacked, options.mask_temperature, seeds=seeds)),
    AttackSpec("pgd-vote", "DiffBreak protocol: loss averaged over --eot K purified copies per gradient, the "
               "deployed vote checked on fresh copies after every step, best iterate kept, per-image early stop",
               True, "margin", _run_pgd_vote, DeviationOptions),
    AttackSpec("diffhammer", "DiffHammer: EM over --em-samples N purifications per step (lambda 5, --em-steps rounds, "
               "--em-reference for the reference's EM), gradient grafted through one exact chain, momentum 0.5",
               True, "ce", _run_diffhammer, DiffHammerOptions),
    AttackSpec("autoattack", "AutoAttack (APGD-CE + APGD-DLR with EOT; needs pyautoattack), image by image",
               False, None, _run_autoattack),
)}


def attack_names() -> tuple[str, ...]:
    """The registered attack names, in registration order."""
    return tuple(ATTACKS)


def describe_attacks() -> str:
    """'name: summary; ...' for ``--help``."""
    return "; ".join(f"{spec.name} ({spec.summary})" for spec in ATTACKS.values())


@dataclass(frozen=True)
class OptionField:
    """One field of the registered attacks' options, as the CLI shows it.

    Attributes:
        name: the field's name (the flag is ``--`` + name with dashes).
        kind: its type (int, float or bool); default, help and bounds as declared.
        attacks: the attacks whose options have this field.
    """

    name: str
    kind: type
    default: object
    help: str
    bounds: dict
    attacks: tuple[str, ...]


def option_fields() -> dict[str, OptionField]:
    """Every field of every registered attack's options, once each (a field two attacks share, such as
    ``dev_weight``, must be declared alike), in registration order."""
    found: dict[str, OptionField] = {}
    for spec in ATTACKS.values():
        types = field_types(spec.options)
        for field in dataclasses.fields(spec.options):
            entry = OptionField(field.name, types[field.name][0], field.default, help_of(field), bounds_of(field),
                                (spec.name,))
            if field.name in found:
                known = found[field.name]
                if (known.kind, known.default, known.help, known.bounds) != (entry.kind, entry.default, entry.help,
                                                                               entry.bounds):
                    raise TypeError(f"attack option {field.name} is declared differently by {known.attacks} and "
                                    f"{spec.name}")
                entry = dataclasses.replace(known, attacks=(*known.attacks, spec.name))
            found[field.name] = entry
    return found


def options_from_values(attacks: str | tuple[str, ...], values: dict[str, object]) -> tuple[AttackOptions, ...]:
    """The options of ``attacks`` from flat values by field name (the CLI's flags), checked.

    Args:
        attacks: the attacks that run (names, or a comma list).
        values: field name -> value, for any fields of :func:`option_fields`; a field at its
            default may be given whatever runs.

    Returns:
        One options instance per options class that the attacks take and the values touch.

    Raises:
        ValueError: an unknown attack or field, a field set away from its default that none of
            ``attacks`` takes, or a value out of its declared range.
    """
    attacks = tuple(a.strip() for a in attacks.split(",")) if isinstance(attacks, str) else tuple(attacks)
    unknown_attacks = [a for a in attacks if a not in ATTACKS]
    if unknown_attacks:
        raise ValueError(f"attack must be one of {attack_names()} or a comma list of them, got {unknown_attacks}")
    fields = option_fields()
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown attack options {unknown}; known: {sorted(fields)}")
    for name, value in values.items():
        if value != fields[name].default and not set(fields[name].attacks) & set(attacks):
            raise ValueError(f"{name} is an option of {list(fields[name].attacks)}; none of {list(attacks)} takes it")
    chosen = []
    for cls in dict.fromkeys(ATTACKS[a].options for a in attacks if ATTACKS[a].options is not NoOptions):
        given = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        if any(value != fields[name].default for name, value in given.items()):
            chosen.append(cls(**given))
    return tuple(chosen)


def surrogate(defense: "Defense", steps: int | None) -> "Defense":
    """The view attacks differentiate: ``defense`` itself, or the same networks at ``steps`` (a deterministic
    model has no steps: itself)."""
    if steps is None or defense.deterministic:
        return defense
    return defense.with_config(dataclasses.replace(defense.config, steps=steps))
