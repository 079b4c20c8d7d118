"""What an evaluation runs: the attack settings (:class:`EvalConfig`) and the defense choice.

The defense choice (none / the modes / config) is built here from :data:`robustwrap.MODES` (the modes
tune sweeps too); ``robustwrap eval`` (its ``--defenses`` and ``--sanity``) reads it, and
:func:`defense_view` turns a name into the :class:`robustwrap.defense.Defense` it attacks.
The attacks themselves are registered by name in :mod:`robustwrap.attacks.registry`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..attacks.pgd import LOSSES, default_step_size
from ..attacks.registry import ATTACKS as REGISTRY
from ..attacks.registry import attack_names
from ..config import MODES
from ..defense import BareClassifier

if TYPE_CHECKING:
    from ..config import PurifyConfig
    from ..defense import Defense
    from ..wrapper import RobustWrapper

ATTACKS = attack_names()  # every registered attack (robustwrap.attacks.registry), in order
STEPPED = tuple(name for name, spec in REGISTRY.items() if spec.stepped)  # those that take a step size and a loss
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}

DefenseName = Literal["none", "uniform", "heterogeneous", "config"]
DEFENSES: tuple[str, ...] = ("none", *MODES, "config")  # what `robustwrap eval --defenses` takes, in this order


def choose_defenses(text: str | None, *, has_config: bool) -> tuple[str, ...]:
    """The defenses a ``--defenses`` value names, checked.

    Args:
        text: a comma list of :data:`DEFENSES`; None for the default: none and both modes, or
            none and config when a config file is given.
        has_config: whether a PurifyConfig file was given (``config`` needs one).

    Raises:
        ValueError: an unknown or empty list, or ``config`` without a config file.
    """
    if text is None:
        return ("none", "config") if has_config else ("none", *MODES)
    chosen = tuple(d.strip() for d in text.split(",") if d.strip())
    if not chosen or any(d not in DEFENSES for d in chosen):
        raise ValueError(f"--defenses takes a comma list of {DEFENSES}, got {text!r}")
    if "config" in chosen and not has_config:
        raise ValueError("--defenses config needs --config FILE")
    return chosen


def defense_view(wrapper: RobustWrapper, defense: PurifyConfig, name: str) -> "Defense":
    """What one named defense attacks and scores: the bare classifier for none
    (:class:`robustwrap.defense.BareClassifier`), the wrapper itself for config (its config as is),
    else ``defense`` in that mode (uniform: all-ones mask)."""
    if name not in DEFENSES:
        raise ValueError(f"defense must be one of {DEFENSES}, got {name!r}")
    if name == "none":
        return BareClassifier(wrapper)
    if name == "config":
        return wrapper
    return wrapper.with_config(dataclasses.replace(defense, mode=name))


@dataclass(frozen=True)
class EvalConfig:
    """How to attack and how to score (defaults: the paper's protocol, with a budget-aware step)."""

    attack: str = "pgd-eot"               # one of ATTACKS, or a comma list ("pgd-eot,bpda"): each is run
    norm: Literal["Linf", "L2"] = "Linf"  # threat model
    eps: float | None = None              # radius; None = 8/255 (L-inf) or 0.5 (L2)
    iters: int = 200                      # attack iterations (AutoAttack: APGD iterations)
    step_size: float | None = None        # PGD step; None = 2.5 * eps / iters (both norms; Madry et al.)
    eot: int = 20                         # gradient samples per iteration
    loss: Literal["ce", "margin", "dlr"] | None = None  # PGD loss (CE, CW margin, DLR); None: each attack's default
    surrogate_steps: int | None = None    # attack through a wrapper with this many `steps`
    runs: int = 1                         # R repeated evaluations of the final examples
    seed: int = 0                         # every batch's randomness derives from it
    batch_size: int = 16                  # images per batch (the unit of resumption)
    mask_temperature: float = 0.05        # sigmoid temperature of the mask-aware attack
    em_samples: int = 10                  # diffhammer: N purifications per step (the reference's n_eval)
    em_steps: int = 5                     # diffhammer: EM rounds per step (r updated each round)
    em_reference: bool = False            # diffhammer: the reference's EM (r never updated: one weighting)
    dev_weight: float = 0.0               # W of DiffAttack's deviation term added to the loss (pgd-eot, pgd-vote)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.attack, (list, tuple)):
            object.__setattr__(self, "attack", ",".join(self.attack))
        if not isinstance(self.attack, str):
            problems.append(f"attack must be a string, got {self.attack!r}")
        else:
            names = [a.strip() for a in self.attack.split(",")]
            unknown = [a for a in names if a not in ATTACKS]
            if unknown or not names:
                problems.append(f"attack must be one of {ATTACKS} or a comma list of them, got {self.attack!r}")
            elif len(set(names)) != len(names):
                problems.append(f"attack lists an attack twice: {self.attack!r}")
            else:
                object.__setattr__(self, "attack", ",".join(names))
        if self.norm not in DEFAULT_EPS:
            problems.append(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        if self.loss is not None and self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES} (or None for each attack's default), got {self.loss!r}")
        for name in ("eps", "step_size", "mask_temperature"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
            elif name == "eps" and value < 0:
                problems.append(f"eps must be >= 0, got {value}")
            elif name != "eps" and value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
            elif name in ("eps", "step_size") and self.norm == "Linf" and value > 1:  # images live in [0, 1]
                problems.append(f"an L-inf {name} must be at most 1 (images are in [0, 1]), got {value}")
        for name in ("iters", "eot", "runs", "seed", "batch_size", "surrogate_steps", "em_samples", "em_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{name} must be an int, got {value!r}")
        if not problems:
            if self.iters < 0 or self.eot < 1 or self.runs < 1 or self.batch_size < 1:
                problems.append("need iters >= 0, eot >= 1, runs >= 1 and batch_size >= 1")
            if self.surrogate_steps is not None and self.surrogate_steps < 1:
                problems.append(f"surrogate_steps must be >= 1, got {self.surrogate_steps}")
            if self.em_samples < 1 or self.em_steps < 1:
                problems.append(f"need em_samples >= 1 and em_steps >= 1, got {self.em_samples} and {self.em_steps}")
        if isinstance(self.dev_weight, bool) or not isinstance(self.dev_weight, (int, float)) \
                or not math.isfinite(self.dev_weight) or self.dev_weight < 0:
            problems.append(f"dev_weight must be a finite number >= 0, got {self.dev_weight!r}")
        elif self.dev_weight > 0 and isinstance(self.attack, str):
            others = [a for a in self.attack.split(",") if a in REGISTRY and a != "none" and not REGISTRY[a].deviation]
            if others:
                takes = [n for n, spec in REGISTRY.items() if spec.deviation]
                problems.append(f"dev_weight works with {takes}, not with {others}")
        if not isinstance(self.em_reference, bool):
            problems.append(f"em_reference must be true or false, got {self.em_reference!r}")
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))

    @property
    def attacks(self) -> tuple[str, ...]:
        """The attacks to run, in order."""
        return tuple(self.attack.split(","))

    @property
    def radius(self) -> float:
        """The eps actually used."""
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps

    @property
    def step(self) -> float | None:
        """The PGD step actually used (None when no attack takes a step, or iters is 0)."""
        if self.iters == 0 or not any(a in STEPPED for a in self.attacks):
            return None
        return self.step_size if self.step_size is not None else default_step_size(self.radius, self.iters)

    def loss_for(self, attack: str) -> str | None:
        """The loss ``attack`` ascends: ``loss`` when given, else the attack's default (pgd-vote: margin, PGD: ce)."""
        return self.loss if self.loss is not None and REGISTRY[attack].stepped else REGISTRY[attack].default_loss

    def describe_losses(self) -> str:
        """'ce', or per attack ('pgd-eot ce, pgd-vote margin') when the stepped attacks differ; '-' when none steps."""
        losses = {a: self.loss_for(a) for a in self.attacks if REGISTRY[a].stepped}
        if len(set(losses.values())) <= 1:
            return next(iter(losses.values()), "-")
        return ", ".join(f"{a} {loss}" for a, loss in losses.items())

    def resolved(self) -> dict:
        """The settings as a JSON-able dict, with the eps, step and losses actually used filled in."""
        return {**dataclasses.asdict(self), "eps": self.radius, "step_size": self.step,
                "losses": {a: self.loss_for(a) for a in self.attacks if REGISTRY[a].stepped}}

