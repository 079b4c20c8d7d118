"""PGD with Expectation over Transformation (EOT), L-inf and L2, for randomized defenses."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["Linf", "L2"]
Model = Callable[[Tensor], Tensor]


def eot_gradient(model: Model, x: Tensor, y: Tensor, samples: int) -> Tensor:
    """Mean over ``samples`` stochastic forward passes of d CE(model(x), y) / dx.

    The loss is summed over the batch, so each image's gradient does not depend on the
    batch it sits in.

    Args:
        model: images (B, C, H, W) in [0, 1] -> logits (B, K).
        x: (B, C, H, W) images; y: (B,) int64 labels.

    Returns:
        (B, C, H, W) averaged gradient.
    """
    total = torch.zeros_like(x)
    for _ in range(samples):
        point = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(point), y, reduction="sum")
        total += torch.autograd.grad(loss, point)[0]
    return total / samples


def _l2_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Nearest point to ``x_adv`` in the eps-ball around ``x`` intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _l2_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


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
    random_start: bool = True,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy, each step on an EOT-averaged gradient.

    Args:
        model: images in [0, 1] -> logits (for the defense: :class:`DefenseLogits` & co).
        x: (B, C, H, W) clean images in [0, 1]; y: (B,) true labels.
        eps: radius of the threat model (8/255 for L-inf, 0.5 for L2 in the paper).
        step_size: default 0.007 (L-inf, the paper's) or eps / 4 (L2).
        eot: stochastic gradient samples averaged per step.
        random_start: start from a uniform (L-inf) or random-direction (L2) point in the ball.
        on_step: called with the step index after each step (progress reporting).

    Returns:
        (B, C, H, W) adversarial images within the ball and [0, 1] (the last iterate).
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if eps < 0 or steps < 0 or eot < 1:
        raise ValueError(f"need eps >= 0, steps >= 0 and eot >= 1; got {eps}, {steps}, {eot}")
    step_size = step_size if step_size is not None else (0.007 if norm == "Linf" else eps / 4)
    x = x.detach()
    x_adv = x.clone()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        if norm == "L2":
            noise = noise / _l2_norm(noise) * eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        x_adv = project(x + eps * noise if norm == "Linf" else x + noise, x, eps, norm)
    for step in range(steps):
        grad = eot_gradient(model, x_adv, y, eot)
        ascent = grad.sign() if norm == "Linf" else grad / _l2_norm(grad)
        x_adv = project(x_adv + step_size * ascent, x, eps, norm).detach()
        if on_step is not None:
            on_step(step)
    return x_adv
