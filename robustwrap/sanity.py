"""The checks a careful reviewer runs on a robustness claim; failures are reported, not hidden.

Each check attacks the given images anew with per-image generators seeded from ``cfg.seed``
and the image's position (the global random state is never used). Keep the images to a batch or two, drawn with
:func:`robustwrap.data.stratified_subset`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .attacks import DefenseLogits, Undefended, eot_gradient
from .evaluation import EvalConfig, attack_images, image_seeds
from .noise import derive_seeds
from .wrapper import RobustWrapper

UNDEFENDED_CEILING = 0.05  # the attack must drive the bare classifier to at most this accuracy
HUGE_RADIUS_CEILING = 0.10  # ... and the defense to at most this at a radius that can erase the image


@dataclass(frozen=True)
class Check:
    """One sanity check: what was measured and whether it looks right."""

    name: str
    passed: bool
    detail: str


def _stderr(p: float, n: int) -> float:
    """Binomial standard error, at least that of one image in n (so 0% and 100% are not exact)."""
    return math.sqrt(max(p * (1 - p), (1 / n) * (1 - 1 / n)) / n)


def _pct(p: float, n: int) -> str:
    """'12.5% ± 8.3%': an accuracy over n images with its standard error."""
    return f"{p:.1%} ± {_stderr(p, n):.1%}"


def _accuracy(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig, tag: int) -> float:
    """Accuracy of ``wrapper`` (the defense, or the bare classifier when not cfg.defended) under cfg's attack."""
    base = image_seeds(cfg.seed, range(images.shape[0]))
    adversarial = attack_images(wrapper, images, labels, cfg, seeds=derive_seeds(base, tag, 0))
    with torch.no_grad():
        if cfg.defended:
            predicted = wrapper.predict(adversarial, seeds=derive_seeds(base, tag, 1))
        else:
            predicted = wrapper.classify(adversarial).argmax(1)
    return float((predicted == labels).float().mean())


def sanity_attack(cfg: EvalConfig) -> str:
    """The gradient attack the checks run: the first of cfg's PGD attacks (AutoAttack and 'none' -> pgd-eot)."""
    for attack in cfg.attacks:
        if attack in ("pgd-eot", "bpda", "mask-aware"):
            return attack
    return "pgd-eot"


def sanity_checks(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig) -> list[Check]:
    """Run the checks on ``images`` (B, C, H, W) in [0, 1] with labels (B,) under ``cfg``'s budget.

    With ``cfg.defended`` (the defense):

    1. Gradients through the full pipeline are finite and non-zero.
    2. The same attack (same eps, iterations, step rule, EOT, loss) drives the *undefended*
       classifier to at most 5% accuracy: otherwise the attack is too weak for any claim.
       Flagged too when the bare classifier is at most 5% accurate on the clean images
       (random weights, wrong data): then nothing shows that the attack works.
    3. At a radius that can erase the image (L-inf 1, L2 1000) it reaches <= 10%.
    4. Robust accuracy at 1x, 2x and 4x the iterations (the default step follows the budget,
       2.5 * eps / iterations) is reported; flagged if it still falls by more than two
       standard errors from 2x to 4x (the attack has not converged: the claim is optimistic).
    5. More iterations never give higher robust accuracy (1x vs 4x, beyond 2 standard errors).
    6. BPDA is not much stronger than the full gradient (that would hint at obfuscated gradients).

    Without ``cfg.defended`` (the bare classifier): checks 1-5 on the classifier itself.
    Standard errors are binomial over the images, at least that of one image in n (so a
    measured 0% still shows its uncertainty); the details quote each accuracy with it.

    Returns:
        The checks in that order; nothing is raised for a failed check.
    """
    iters_zero = cfg.iters == 0
    if iters_zero:  # nothing to check an attack of 0 iterations by: run 1 and fail check 2
        cfg = dataclasses.replace(cfg, iters=1)
    attack = sanity_attack(cfg)
    pgd = dataclasses.replace(cfg, attack=attack, runs=1)
    n = images.shape[0]
    budget = (f"{attack} {cfg.norm} eps={pgd.radius:.4g}, {pgd.iters} iterations, step {pgd.step:.3g}, "
              f"EOT {pgd.eot}, loss {pgd.loss}")
    checks = []

    target = (DefenseLogits(wrapper, seeds=derive_seeds(image_seeds(cfg.seed, range(n)), 1)) if cfg.defended
              else Undefended(wrapper))
    gradient = eot_gradient(target, images, labels, samples=1, loss=cfg.loss)
    finite, norm = bool(torch.isfinite(gradient).all()), float(gradient.abs().sum())
    checks.append(Check("gradient finite and non-zero", finite and norm > 0, f"finite={finite}, sum |grad|={norm:.3g}"))

    with torch.no_grad():
        clean = float((wrapper.classify(images).argmax(1) == labels).float().mean())
    bare = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, defended=False), tag=2)
    note = (" (iters 0: no attack was asked for)" if iters_zero else
            " (the bare classifier is already wrong on clean images: nothing shows the attack works)"
            if clean <= UNDEFENDED_CEILING else "")
    checks.append(Check(f"attack drives the undefended classifier to <= {UNDEFENDED_CEILING:.0%}",
                        bare <= UNDEFENDED_CEILING and clean > UNDEFENDED_CEILING and not iters_zero,
                        f"clean {_pct(clean, n)} -> {_pct(bare, n)} of {n} images under {budget}{note}"))

    huge = dataclasses.replace(pgd, eps=1.0 if cfg.norm == "Linf" else 1e3, step_size=None)
    large = _accuracy(wrapper, images, labels, huge, tag=3)
    checks.append(Check(f"robust accuracy <= {HUGE_RADIUS_CEILING:.0%} at a huge radius", large <= HUGE_RADIUS_CEILING,
                        f"{_pct(large, n)} at eps={huge.radius:g} ({huge.iters} iterations, step {huge.step:.3g})"))

    accuracy = {k: _accuracy(wrapper, images, labels, dataclasses.replace(pgd, iters=k * pgd.iters), tag=4)
                for k in (1, 2, 4)}
    ladder = ", ".join(f"{_pct(accuracy[k], n)} at {k * pgd.iters}" for k in (1, 2, 4)) + f" iterations ({n} images)"
    falling = accuracy[2] - accuracy[4]
    slack = 2 * _stderr(accuracy[2], n)
    checks.append(Check("robust accuracy converged (2x -> 4x iterations falls by <= 2 se)", falling <= slack,
                        f"{ladder}; fell {falling:.1%} from 2x to 4x, 2 se = {slack:.1%}"))
    rise = accuracy[4] - accuracy[1]
    checks.append(Check("more iterations do not raise robust accuracy", rise <= 2 * _stderr(accuracy[1], n),
                        f"{ladder}; 4x - 1x = {rise:+.1%}"))

    if cfg.defended:
        full = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, attack="pgd-eot"), tag=5)
        bpda = _accuracy(wrapper, images, labels, dataclasses.replace(pgd, attack="bpda"), tag=5)
        checks.append(Check("BPDA not much stronger than the full gradient", bpda >= full - 2 * _stderr(full, n),
                            f"full gradient {_pct(full, n)}, BPDA {_pct(bpda, n)} ({pgd.iters} iterations)"))
    return checks
