"""PGD with Expectation over Transformation (EOT), L-inf and L2, for randomized defenses.

Losses (all ascended; each image's loss is summed over the batch, so its gradient does not
depend on the batch it sits in), on logits-like scores z (B, K), true class y:
- ``"ce"``: cross-entropy of softmax(z).
- ``"margin"``: the Carlini-Wagner margin max_{j != y} z_j - z_y (positive once misclassified).
- ``"dlr"``: the Difference of Logits Ratio of Croce & Hein (2020),
  -(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12) with z_(i) the i-th largest score;
  invariant to shifting and scaling the scores; needs K >= 3.

Default step (``step_size=None``): 2.5 * eps / steps for both norms (Madry et al.), so the
iterates can cross the ball within the budget whatever eps and the number of steps.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ..noise import per_image_rand

Norm = Literal["Linf", "L2"]
Loss = Literal["ce", "margin", "dlr"]
LOSSES: tuple[str, ...] = get_args(Loss)
Model = Callable[[Tensor], Tensor]


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps (Madry et al.): the step that lets an iterate cross the ball in budget."""
    return 2.5 * eps / steps if steps > 0 else 0.0


def attack_loss(scores: Tensor, y: Tensor, loss: Loss = "ce") -> Tensor:
    """Per-image loss to ascend, (B,), from logits-like ``scores`` (B, K) and labels ``y`` (B,).

    See the module docstring for the definitions of ``"ce"``, ``"margin"`` and ``"dlr"``.
    """
    if loss == "ce":
        return F.cross_entropy(scores, y, reduction="none")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    true = scores.gather(1, y[:, None]).squeeze(1)
    others = scores.masked_fill(F.one_hot(y, scores.shape[1]).bool(), float("-inf")).amax(dim=1)
    if loss == "margin":
        return others - true
    if scores.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {scores.shape[1]}")
    ranked = scores.sort(dim=1, descending=True).values
    return -(true - others) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def eot_gradient(model: Model, x: Tensor, y: Tensor, samples: int, loss: Loss = "ce") -> Tensor:
    """Mean over ``samples`` stochastic forward passes of d loss(model(x), y) / dx.

    The loss is summed over the batch, so each image's gradient does not depend on the
    batch it sits in.

    Args:
        model: images (B, C, H, W) in [0, 1] -> logits-like scores (B, K), or -> (scores, bonus)
            with bonus (B,) added to each image's loss (DiffAttack's deviation term).
        x: (B, C, H, W) images; y: (B,) int64 labels.
        loss: ``"ce"``, ``"margin"`` or ``"dlr"`` (see :func:`attack_loss`).

    Returns:
        (B, C, H, W) averaged gradient.
    """
    total = torch.zeros_like(x)
    for _ in range(samples):
        point = x.detach().requires_grad_(True)
        out = model(point)
        scores, bonus = out if isinstance(out, tuple) else (out, None)
        value = attack_loss(scores, y, loss)
        if bonus is not None:
            value = value + bonus
        total += torch.autograd.grad(value.sum(), point)[0]
    return total / samples


def _l2_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent unit step for the norm: sign(grad) (L-inf) or grad / ||grad||_2 per image (L2)."""
    return grad.sign() if norm == "Linf" else grad / _l2_norm(grad)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Nearest point to ``x_adv`` in the eps-ball around ``x`` intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _l2_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start_point(x: Tensor, eps: float, norm: Norm, *, generator: torch.Generator | None = None,
                       seeds: Tensor | None = None) -> Tensor:
    """A random point of the eps-ball around ``x`` (B, C, H, W), within [0, 1].

    L-inf: uniform in the cube; L2: a uniform direction scaled by eps * U(0, 1). Drawn from
    ``generator`` (one stream for the batch) or, with ``seeds`` (B,), image i from a generator
    seeded with ``seeds[i]`` (its C*H*W uniforms, then for L2 one more for the radius).
    """
    if eps <= 0:
        return x.clone()
    if seeds is not None:
        draws = per_image_rand(seeds, (x[0].numel() + 1,), device=x.device, dtype=x.dtype)
        noise, radius = draws[:, :-1].view_as(x) * 2 - 1, draws[:, -1]
    else:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) if norm == "L2" else None
    if norm == "L2":
        noise = noise / _l2_norm(noise) * eps * radius.view(-1, 1, 1, 1)
        return project(x + noise, x, eps, norm)
    return project(x + eps * noise, x, eps, norm)


def pgd_eot(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 200,
    step_size: float | None = None,
    eot: int = 20,
    loss: Loss = "ce",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    seeds: Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Projected gradient ascent on ``loss``, each step on an EOT-averaged gradient.

    Args:
        model: images in [0, 1] -> logits (for the defense: :class:`DefenseLogits` & co; give
            it its own generator for reproducible noise).
        x: (B, C, H, W) clean images in [0, 1]; y: (B,) true labels.
        eps: radius of the threat model (8/255 for L-inf, 0.5 for L2 in the paper).
        step_size: default 2.5 * eps / steps (both norms; :func:`default_step_size`); the
            paper's L-inf 0.007 must be asked for.
        eot: stochastic gradient samples averaged per step.
        loss: ``"ce"`` (cross-entropy), ``"margin"`` (CW margin) or ``"dlr"`` (Croce & Hein).
        random_start: start from a uniform (L-inf) or random-direction (L2) point in the ball.
        generator: draws the random start (the global RNG is never used when given).
        seeds: (B,) per-image seeds for the random start instead (image i's start comes from
            ``seeds[i]`` alone: :func:`random_start_point`).
        on_step: called with the step index after each step (progress reporting).

    Returns:
        (B, C, H, W) adversarial images within the ball and [0, 1] (the last iterate).
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if not math.isfinite(eps) or eps < 0 or steps < 0 or eot < 1:
        raise ValueError(f"need a finite eps >= 0, steps >= 0 and eot >= 1; got {eps}, {steps}, {eot}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0 (or None for 2.5 * eps / steps), got {step_size}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    step_size = step_size if step_size is not None else default_step_size(eps, steps)
    x = x.detach()
    x_adv = random_start_point(x, eps, norm, generator=generator, seeds=seeds) if random_start else x.clone()
    for step in range(steps):
        grad = eot_gradient(model, x_adv, y, eot, loss)
        x_adv = project(x_adv + step_size * ascent_direction(grad, norm), x, eps, norm).detach()
        if on_step is not None:
            on_step(step)
    return x_adv
