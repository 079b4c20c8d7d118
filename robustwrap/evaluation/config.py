"""What an evaluation runs: the attack settings (:class:`EvalConfig`) and the defense choice.

The defense choice (none / the modes / config) is built here from :data:`robustwrap.MODES` (the modes
tune sweeps too); ``robustwrap eval`` (its ``--defenses`` and ``--sanity``) reads it, and
:func:`defense_view` turns a name into the :class:`robustwrap.defense.Defense` it attacks.
The attacks themselves are registered by name in :mod:`robustwrap.attacks.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..attacks.options import AttackOptions, NoOptions
from ..attacks.pgd import Loss, Norm, default_step_size
from ..attacks.registry import ATTACKS as REGISTRY
from ..attacks.registry import attack_names
from ..config import MODES
from ..schema import check_types, setting
from ..schema import problems as schema_problems
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
    """How to attack and how to score (defaults: the paper's protocol, with a budget-aware step).

    The threat model, the budget every attack shares and the run are fields here; each attack's own
    options are its options dataclass in ``options`` (:mod:`robustwrap.attacks.registry` names the
    class of each attack; an attack not given any runs at its options' defaults).

    Example:
        >>> from robustwrap.attacks import DiffHammerOptions
        >>> EvalConfig(attack="diffhammer", iters=50, options=DiffHammerOptions(em_samples=4))
    """

    attack: str = setting("pgd-eot", help='one of ATTACKS, or a comma list ("pgd-eot,bpda"): each is run')
    norm: Norm = setting("Linf", help="threat model")
    eps: float | None = setting(None, ge=0, help="radius; None = 8/255 (L-inf) or 0.5 (L2)")
    iters: int = setting(200, ge=0, help="attack iterations (AutoAttack: APGD iterations)")
    step_size: float | None = setting(None, gt=0, help="PGD step; None = 2.5 * eps / iters (both norms; Madry et al.)")
    eot: int = setting(20, ge=1, help="gradient samples per iteration")
    loss: Loss | None = setting(None, help="PGD loss (CE, CW margin, DLR); None: each attack's default")
    surrogate_steps: int | None = setting(None, ge=1, help="attack through a wrapper with this many `steps`")
    runs: int = setting(1, ge=1, help="R repeated evaluations of the final examples")
    seed: int = setting(0, help="every batch's randomness derives from it")
    batch_size: int = setting(16, ge=1, help="images per batch (the unit of resumption)")
    options: tuple[AttackOptions, ...] = ()  # the attacks' own options (one instance per class), e.g. DiffHammerOptions

    def __post_init__(self) -> None:
        if isinstance(self.attack, (list, tuple)):
            object.__setattr__(self, "attack", ",".join(self.attack))
        check_types(self, "evaluation settings")
        problems = schema_problems(self)  # the declared choices and bounds
        names = [a.strip() for a in self.attack.split(",")]
        unknown = [a for a in names if a not in ATTACKS]
        if unknown or not names:
            problems.append(f"attack must be one of {ATTACKS} or a comma list of them, got {self.attack!r}")
        elif len(set(names)) != len(names):
            problems.append(f"attack lists an attack twice: {self.attack!r}")
        else:
            object.__setattr__(self, "attack", ",".join(names))
        for name in ("eps", "step_size"):  # images live in [0, 1]
            value = getattr(self, name)
            if value is not None and self.norm == "Linf" and value > 1:
                problems.append(f"an L-inf {name} must be at most 1 (images are in [0, 1]), got {value}")
        problems += self._options_problems()
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))

    def _options_problems(self) -> list[str]:
        """Normalise ``options`` to a tuple and say what is wrong with it: not options, a class twice,
        or options that none of the chosen attacks takes."""
        options = self.options
        if isinstance(options, AttackOptions):
            options = (options,)
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, AttackOptions) for o in options):
            return [f"options must be attack options (e.g. DiffHammerOptions(...)), got {self.options!r}"]
        object.__setattr__(self, "options", tuple(options))
        kinds = [type(o) for o in options]
        if len(set(kinds)) != len(kinds):
            twice = sorted({k.__name__ for k in kinds if kinds.count(k) > 1})
            return [f"options gives {', '.join(twice)} more than once"]
        attacks = self.attack.split(",")
        problems = []
        for option in options:
            takers = [n for n, spec in REGISTRY.items() if spec.options is type(option)]
            if not set(takers) & set(attacks):
                problems.append(f"{type(option).__name__} is the options of {takers or 'no attack'}; none of "
                                f"{attacks} takes it")
        return problems

    def options_for(self, attack: str) -> AttackOptions:
        """The options ``attack`` runs with: the given instance of its options class, else its defaults."""
        kind = REGISTRY[attack].options
        return next((o for o in self.options if type(o) is kind), kind())

    def with_attack(self, attack: str) -> "EvalConfig":
        """The same settings for other attacks (a name or comma list), keeping the options they take."""
        names = [a.strip() for a in attack.split(",")]
        kinds = {REGISTRY[a].options for a in names if a in REGISTRY}
        return dataclasses.replace(self, attack=attack, options=tuple(o for o in self.options if type(o) in kinds))

    def describe(self) -> str:
        """The budget in one line: threat model, iterations, step, EOT, loss, surrogate, and each attack's
        options that say something (e.g. 'Linf eps=0.3, 10 iterations, step 0.075, EOT 2, loss ce')."""
        phrases = dict.fromkeys(self.options_for(a).describe() for a in self.attacks)
        return (f"{self.norm} eps={self.radius:.4g}, {self.iters} iterations, "
                f"step {'-' if self.step is None else f'{self.step:.3g}'}, EOT {self.eot}, loss {self.describe_losses()}"
                + (f", surrogate steps {self.surrogate_steps}" if self.surrogate_steps else "")
                + "".join(f", {phrase}" for phrase in phrases if phrase))

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
        """The settings as a JSON-able dict, with the eps, step, losses and each attack's options actually used
        filled in (``options``: attack -> its options by name, for the attacks that have options)."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"},
                "eps": self.radius, "step_size": self.step,
                "losses": {a: self.loss_for(a) for a in self.attacks if REGISTRY[a].stepped},
                "options": {a: self.options_for(a).to_dict() for a in self.attacks
                            if REGISTRY[a].options is not NoOptions}}

