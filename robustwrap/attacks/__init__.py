"""Adaptive attacks on the whole defended pipeline (images in [0, 1] -> logits).

- :func:`pgd_eot` — PGD with EOT, L-inf and L2, on any ``model(x) -> logits``.
- :func:`autoattack` — AutoAttack (``pyautoattack``), ``rand`` or ``standard``.
- Targets: :class:`DefenseLogits` (full gradient through every denoiser call),
  :class:`BPDALogits` (identity backward through the purifier), :class:`MaskAwareLogits`
  (gradient through a sigmoid-relaxed mask too), :class:`Undefended` (no defense).
  A surrogate with fewer steps is ``DefenseLogits(wrapper.with_config(replace(cfg, steps=...)))``.
"""

from .autoattack import autoattack
from .pgd import eot_gradient, pgd_eot, project
from .targets import BPDALogits, DefenseLogits, MaskAwareLogits, Undefended

__all__ = [
    "autoattack",
    "eot_gradient",
    "pgd_eot",
    "project",
    "BPDALogits",
    "DefenseLogits",
    "MaskAwareLogits",
    "Undefended",
]
