"""Adaptive attacks on the whole defended pipeline (images in [0, 1] -> logits).

- :func:`pgd_eot` — PGD with EOT, L-inf and L2, CE / CW-margin / DLR loss, on any ``model(x) -> logits``.
- :func:`autoattack` — AutoAttack (``pyautoattack``), ``rand`` or ``standard``.
- Targets: :class:`DefenseLogits` (full gradient through every denoiser call),
  :class:`BPDALogits` (identity backward through the purifier), :class:`MaskAwareLogits`
  (gradient through a sigmoid-relaxed mask too), :class:`Undefended` (no defense).
  A surrogate with fewer steps is ``DefenseLogits(wrapper.with_config(replace(cfg, steps=...)))``.
"""

from .autoattack import autoattack
from .pgd import LOSSES, attack_loss, default_step_size, eot_gradient, pgd_eot, project
from .targets import BPDALogits, DefenseLogits, MaskAwareLogits, Undefended

__all__ = [
    "LOSSES",
    "attack_loss",
    "default_step_size",
    "autoattack",
    "eot_gradient",
    "pgd_eot",
    "project",
    "BPDALogits",
    "DefenseLogits",
    "MaskAwareLogits",
    "Undefended",
]
