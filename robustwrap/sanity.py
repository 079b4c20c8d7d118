"""The checks a careful reviewer runs on a robustness claim; failures are reported, not hidden.

Each check attacks the given images anew with per-image generators seeded from ``cfg.seed``
and the image's position (the global random state is never used). Keep the images to a batch or two, drawn with
:func:`robustwrap.data.stratified_subset`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .attacks import DefenseLogits, eot_gradient
from .attacks.registry import surrogate
from .evaluation import STEPPED, EvalConfig, attack_images, image_seeds
from .gradcheck import finite_difference_check, surrogate_cosine
from .noise import Noise, derive_seeds
from .statistics import Accuracy, format_accuracy
from .defense import Defense, bare

UNDEFENDED_CEILING = 0.05  # the attack must drive the bare classifier to at most this accuracy
HUGE_RADIUS_CEILING = 0.10  # ... and the defense to at most this at a radius that can erase the image
GRADIENT_TOLERANCE = 1e-4  # autograd vs float64 central differences, relative error
SURROGATE_COSINE = 0.5  # a surrogate's gradient pointing less like the exact one than this is flagged


@dataclass(frozen=True)
class Check:
    """One sanity check: what was measured and whether it looks right."""

    name: str
    passed: bool
    detail: str


def _accuracy(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, tag: int) -> float:
    """Accuracy of ``wrapper`` (a defense, or the bare classifier) under cfg's attack."""
    base = image_seeds(cfg.seed, range(images.shape[0]))
    adversarial = attack_images(wrapper, images, labels, cfg, seeds=derive_seeds(base, tag, 0))
    predicted = wrapper.predict(adversarial, noise=Noise.seeded(derive_seeds(base, tag, 1)))
    return float((predicted == labels).float().mean())


def sanity_attack(cfg: EvalConfig) -> str:
    """The gradient attack the checks run: the first of cfg's stepped attacks (PGD family,
    pgd-vote included); AutoAttack and 'none' -> pgd-eot."""
    for attack in cfg.attacks:
        if attack in STEPPED:
            return attack
    return "pgd-eot"


def sanity_checks(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig) -> list[Check]:
    """Run the checks on ``images`` (B, C, H, W) in [0, 1] with labels (B,) under ``cfg``'s budget.

    For a defense that draws noise (the wrapper):

    1. Gradients through the full pipeline are finite and non-zero.
    2. The same attack (same eps, iterations, step rule, EOT, loss) drives the *undefended*
       classifier to at most 5% accuracy: otherwise the attack is too weak for any claim.
       Flagged too when the bare classifier is at most 5% accurate on the clean images
       (random weights, wrong data): then nothing shows that the attack works.
    3. At a radius that can erase the image (L-inf 1, L2 1000) it reaches <= 10%.
    4. Robust accuracy at 1x, 2x and 4x the iterations (the default step follows the budget,
       2.5 * eps / iterations) is reported; flagged if the 4x accuracy falls below the 2x one's
       interval (the attack has not converged: the claim is optimistic).
    5. More iterations never give higher robust accuracy (4x above the 1x interval is flagged).
    6. BPDA is not much stronger than the full gradient (BPDA below the full gradient's
       interval would hint at obfuscated gradients).
    7. With all noise fixed, the input gradient equals float64 central differences (relative
       error <= 1e-4 along 3 random directions, on up to 2 images, in a float64 copy of the
       networks): the gradient the attacks follow is the gradient of what the defense computes.
    8. With ``cfg.surrogate_steps``: the cosine between the surrogate's gradient and the exact
       one (same seeds), per image; flagged when its mean is below 0.5.

    For a deterministic one (:class:`robustwrap.defense.BareClassifier`): checks 1-5 and 7 on the classifier itself.
    Intervals are Wilson 95% over the images (:mod:`robustwrap.statistics`; a measured 0% still
    shows its uncertainty); the details quote each accuracy with its interval.

    Returns:
        The checks in that order; nothing is raised for a failed check.
    """
    iters_zero = cfg.iters == 0
    if iters_zero:  # nothing to check an attack of 0 iterations by: run 1 and fail check 2
        cfg = dataclasses.replace(cfg, iters=1)
    attack = sanity_attack(cfg)
    pgd = dataclasses.replace(cfg.with_attack(attack), runs=1)
    n = images.shape[0]
    budget = (f"{attack} {cfg.norm} eps={pgd.radius:.4g}, {pgd.iters} iterations, step {pgd.step:.3g}, "
              f"EOT {pgd.eot}, loss {pgd.loss_for(attack)}")
    checks = []

    target = DefenseLogits(wrapper, seeds=derive_seeds(image_seeds(cfg.seed, range(n)), 1))
    gradient = eot_gradient(target, images, labels, samples=1, loss=pgd.loss_for(attack))
    finite, norm = bool(torch.isfinite(gradient).all()), float(gradient.abs().sum())
    checks.append(Check("gradient finite and non-zero", finite and norm > 0, f"finite={finite}, sum |grad|={norm:.3g}"))

    with torch.no_grad():
        clean = float((wrapper.classify(images).argmax(1) == labels).float().mean())
    undefended = _accuracy(bare(wrapper), images, labels, pgd, tag=2)
    note = (" (iters 0: no attack was asked for)" if iters_zero else
            " (the bare classifier is already wrong on clean images: nothing shows the attack works)"
            if clean <= UNDEFENDED_CEILING else "")
    checks.append(Check(f"attack drives the undefended classifier to <= {UNDEFENDED_CEILING:.0%}",
                        undefended <= UNDEFENDED_CEILING and clean > UNDEFENDED_CEILING and not iters_zero,
                        f"clean {format_accuracy(clean, n)} -> {format_accuracy(undefended, n)} of {n} images under "
                        f"{budget}{note}"))

    huge = dataclasses.replace(pgd, eps=1.0 if cfg.norm == "Linf" else 1e3, step_size=None)
    large = _accuracy(wrapper, images, labels, huge, tag=3)
    checks.append(Check(f"robust accuracy <= {HUGE_RADIUS_CEILING:.0%} at a huge radius", large <= HUGE_RADIUS_CEILING,
                        f"{format_accuracy(large, n)} at eps={huge.radius:g} ({huge.iters} iterations, step {huge.step:.3g})"))

    accuracy = {k: Accuracy(_accuracy(wrapper, images, labels, dataclasses.replace(pgd, iters=k * pgd.iters), tag=4), n)
                for k in (1, 2, 4)}
    ladder = ", ".join(f"{accuracy[k]} at {k * pgd.iters}" for k in (1, 2, 4)) + f" iterations ({n} images)"
    checks.append(Check("robust accuracy converged (4x iterations within the 2x interval)",
                        not accuracy[4].below(accuracy[2]),
                        f"{ladder}; fell {accuracy[2].value - accuracy[4].value:.1%} from 2x to 4x"))
    checks.append(Check("more iterations do not raise robust accuracy", not accuracy[4].above(accuracy[1]),
                        f"{ladder}; 4x - 1x = {accuracy[4].value - accuracy[1].value:+.1%}"))

    if not wrapper.deterministic:  # BPDA and the full gradient differ only through a purification
        full = Accuracy(_accuracy(wrapper, images, labels, pgd.with_attack("pgd-eot"), tag=5), n)
        bpda = Accuracy(_accuracy(wrapper, images, labels, pgd.with_attack("bpda"), tag=5), n)
        checks.append(Check("BPDA not much stronger than the full gradient", not bpda.below(full),
                            f"full gradient {full}, BPDA {bpda} ({pgd.iters} iterations)"))
    checks += gradient_checks(wrapper, images, labels, pgd, attack)
    return checks


def gradient_checks(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, attack: str) -> list[Check]:
    """Checks 7 and 8 of :func:`sanity_checks`: autograd vs float64 finite differences, and the
    surrogate's gradient against the exact one (only with ``cfg.surrogate_steps``)."""
    few = min(2, images.shape[0])
    seeds = derive_seeds(image_seeds(cfg.seed, range(few)), 6)
    loss = cfg.loss_for(attack)
    result = finite_difference_check(wrapper, images[:few], labels[:few], seeds, loss=loss, seed=cfg.seed)
    pairs = ", ".join(f"{a:.6g} vs {n:.6g}" for a, n in zip(result.analytic, result.numeric))
    checks = [Check(f"gradient matches float64 finite differences (relative error <= {GRADIENT_TOLERANCE:g})",
                    result.max_relative_error <= GRADIENT_TOLERANCE,
                    f"max relative error {result.max_relative_error:.2g} over {len(result.analytic)} directions on "
                    f"{few} image(s), noise fixed (autograd vs central differences: {pairs})")]
    if not wrapper.deterministic and cfg.surrogate_steps is not None:
        view = surrogate(wrapper, cfg.surrogate_steps)
        cosine = surrogate_cosine(wrapper, view, images, labels, derive_seeds(image_seeds(cfg.seed, range(len(labels))), 7),
                                  loss)
        checks.append(Check(f"surrogate gradient aligned with the exact one (mean cosine >= {SURROGATE_COSINE:g})",
                            float(cosine.mean()) >= SURROGATE_COSINE,
                            f"cosine between the {cfg.surrogate_steps}-step surrogate's and the exact gradient: mean "
                            f"{float(cosine.mean()):.3f}, min {float(cosine.min()):.3f} over {len(labels)} images"))
    return checks
