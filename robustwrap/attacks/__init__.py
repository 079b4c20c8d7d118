"""Adaptive attacks on the whole defended pipeline (images in [0, 1] -> logits).

Every attack takes a :class:`robustwrap.defense.Defense`: the wrapper, or
``BareClassifier(wrapper)`` for the no-defense baseline; none asks which one it has.

- :func:`pgd_eot` — PGD with EOT, L-inf and L2, CE / CW-margin / DLR loss, on any ``model(x) -> logits``.
- :func:`pgd_vote` — the DiffBreak protocol: K-copy averaged loss, the deployed vote checked
  after every step, best iterate per image, per-image early stop.
- :func:`diffhammer` — DiffHammer's selective EM over N purifications with gradient grafting.
- :func:`autoattack` — AutoAttack (``pyautoattack``), ``rand`` or ``standard``.
- Targets: :class:`DefenseLogits` (full gradient through every denoiser call),
  :class:`BPDALogits` (identity backward through the purifier), :class:`MaskAwareLogits`
  (gradient through a sigmoid-relaxed mask too), :class:`DeviationLogits` (plus DiffAttack's
  deviated-reconstruction term); ``DefenseLogits(BareClassifier(wrapper))`` is the bare classifier's logits.
  A surrogate with fewer steps is ``DefenseLogits(wrapper.with_config(replace(cfg, steps=...)))``.
- :data:`ATTACKS` — every attack the evaluation runs, registered by name with its options class
  (:mod:`robustwrap.attacks.registry`): :class:`DeviationOptions` (pgd-eot, pgd-vote),
  :class:`MaskAwareOptions`, :class:`DiffHammerOptions`; the others take :class:`NoOptions`.
"""

from .autoattack import autoattack
from .deviation import DeviationOptions, deviation
from .diffhammer import DiffHammerOptions, diffhammer
from .options import AttackOptions, NoOptions
from .pgd import LOSSES, attack_loss, default_step_size, eot_gradient, pgd_eot, project
from .pgd_vote import pgd_vote
from .registry import ATTACKS, AttackOutcome, AttackSpec
from .targets import BPDALogits, DefenseLogits, DeviationLogits, MaskAwareLogits, MaskAwareOptions

__all__ = [
    "ATTACKS",
    "AttackOptions",
    "AttackOutcome",
    "AttackSpec",
    "DeviationOptions",
    "DiffHammerOptions",
    "MaskAwareOptions",
    "NoOptions",
    "LOSSES",
    "attack_loss",
    "default_step_size",
    "autoattack",
    "deviation",
    "diffhammer",
    "eot_gradient",
    "pgd_eot",
    "pgd_vote",
    "project",
    "BPDALogits",
    "DefenseLogits",
    "DeviationLogits",
    "MaskAwareLogits",
]
