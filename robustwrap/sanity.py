"""The checks a careful reviewer runs on a robustness claim; failures are reported, not hidden."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .attacks import DefenseLogits, eot_gradient
from .evaluation import EvalConfig, attack_images
from .wrapper import RobustWrapper


@dataclass(frozen=True)
class Check:
    """One sanity check: what was measured and whether it looks right."""

    name: str
    passed: bool
    detail: str


def _accuracy(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig) -> float:
    torch.manual_seed(cfg.seed)
    adversarial = attack_images(wrapper, images, labels, cfg)
    with torch.no_grad():
        return float((wrapper.predict(adversarial) == labels).float().mean())


def sanity_checks(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig) -> list[Check]:
    """Run the four checks on ``images`` (keep it to a batch or two: each attacks them anew).

    1. Gradients through the full pipeline are finite and non-zero.
    2. At a very large radius the attack reaches ~0% robust accuracy (<= 10%).
    3. Twice the iterations never give higher robust accuracy (beyond 2 standard errors).
    4. BPDA vs the full gradient: BPDA much stronger hints at obfuscated gradients.
    """
    checks = []
    n = images.shape[0]
    slack = 2 * math.sqrt(0.25 / n)  # two standard errors at worst (p = 0.5)
    gradient = eot_gradient(DefenseLogits(wrapper), images, labels, samples=1)
    finite, norm = bool(torch.isfinite(gradient).all()), float(gradient.abs().sum())
    checks.append(Check("gradient finite and non-zero", finite and norm > 0, f"finite={finite}, sum |grad|={norm:.3g}"))

    pgd = dataclasses.replace(cfg, attack="pgd-eot" if cfg.attack in ("none", "autoattack") else cfg.attack)
    huge = dataclasses.replace(pgd, eps=1.0 if cfg.norm == "Linf" else 1e3, step_size=0.1 if cfg.norm == "Linf" else 10.0)
    large = _accuracy(wrapper, images, labels, huge)
    checks.append(Check("robust accuracy ~0 at a huge radius", large <= 0.1, f"{large:.1%} at eps={huge.radius:g}"))

    base_iters = max(1, cfg.iters // 2)
    fewer = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, iters=base_iters))
    more = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, iters=2 * base_iters))
    checks.append(
        Check("more iterations do not raise robust accuracy", more <= fewer + slack,
              f"{fewer:.1%} at {base_iters} iterations, {more:.1%} at {2 * base_iters}")
    )

    full = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, attack="pgd-eot"))
    bpda = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, attack="bpda"))
    checks.append(
        Check("BPDA not much stronger than the full gradient", bpda >= full - slack,
              f"full gradient {full:.1%}, BPDA {bpda:.1%}")
    )
    return checks
