"""Is the gradient an attack follows the true gradient of what the defense computes?

Two reviewer's checks (used by :func:`robustwrap.sanity.sanity_checks`):

- :func:`finite_difference_check`: with all noise fixed (per-image seeds), the wrapper's input
  gradient, in a float64 copy of the networks, against float64 central differences along a
  few random directions. A wrong or obfuscated backward pass (a detached step, a broken
  adapter, a non-differentiable op masked by a straight-through trick) shows as a large
  relative error; a correct one agrees to ~1e-8.
- :func:`surrogate_cosine`: the cosine between the gradient through a cheaper surrogate
  (fewer steps) and the exact one, per image, with the same seeds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .attacks.pgd import Loss, attack_loss
from .noise import Noise, mix_seed
from .defense import Defense


@dataclass(frozen=True)
class FiniteDifferenceResult:
    """Directional derivatives along ``len(analytic)`` random unit directions.

    Attributes:
        analytic: <grad, v> from autograd, one per direction.
        numeric: (f(x + h v) - f(x - h v)) / 2h in float64, one per direction.
        max_relative_error: max over directions of |analytic - numeric| / max(|analytic|, |numeric|, 1e-12).
    """

    analytic: tuple[float, ...]
    numeric: tuple[float, ...]
    max_relative_error: float


def defense_loss(wrapper: Defense, x: Tensor, labels: Tensor, seeds: Tensor, loss: Loss,
                 mask: Tensor | None = None) -> Tensor:
    """Scalar: the attack loss summed over the batch, on the defense's scores (log mean vote
    probability, per-image seeds, ``mask`` (B, 1, Hd, Wd) or the classifier's) or on the bare
    classifier's logits."""
    scores = wrapper.scores(x, noise=Noise.seeded(seeds), mask=mask)
    return attack_loss(scores, labels, loss).sum()


def float64_copy(wrapper: Defense) -> Defense:
    """A deep copy of the wrapper with every parameter and buffer in float64."""
    return copy.deepcopy(wrapper).double()


def finite_difference_check(
    wrapper: Defense,
    x: Tensor,
    labels: Tensor,
    seeds: Tensor,
    *,
    loss: Loss = "ce",
    directions: int = 3,
    step: float = 1e-6,
    seed: int = 0,
) -> FiniteDifferenceResult:
    """Autograd vs float64 central differences, all noise fixed by ``seeds``.

    The mask is fixed too: the deployed wrapper's own (in its dtype) at the probed point. The hard
    mask is piecewise constant (zero gradient), and a float64 copy may draw another one: the
    official min-max normalisation leaves each map's maximum just below 1.0 in float64, so a
    threshold tau = 1.0 would mark no pixel there.

    Args:
        wrapper: the defense (copied to float64 here; the original is untouched).
        x: (B, C, H, W) images in [0, 1] (kept ``step`` away from the bounds: clamped to
            [1e-3, 1 - 1e-3] first); labels: (B,); seeds: (B,) per-image seeds.
        directions: random unit directions (L-inf norm 1) to probe; step: h.
        seed: draws the directions.
    """
    model = float64_copy(wrapper)
    point = x.detach().to(torch.float64).clamp(1e-3, 1 - 1e-3)
    generator = torch.Generator(device=x.device).manual_seed(mix_seed(seed, 17))
    with torch.no_grad():
        mask = wrapper.mask(point.to(x.dtype))  # None for the bare classifier
        mask = None if mask is None else mask.to(torch.float64)

    def value(at: Tensor) -> Tensor:
        return defense_loss(model, at, labels, seeds, loss, mask)

    probe = point.clone().requires_grad_(True)
    gradient = torch.autograd.grad(value(probe), probe)[0]
    analytic, numeric = [], []
    with torch.no_grad():
        for _ in range(directions):
            v = torch.randn(point.shape, generator=generator, device=x.device, dtype=torch.float64)
            v = v / v.abs().max()
            analytic.append(float((gradient * v).sum()))
            numeric.append(float((value(point + step * v) - value(point - step * v)) / (2 * step)))
    errors = [abs(a - n) / max(abs(a), abs(n), 1e-12) for a, n in zip(analytic, numeric)]
    return FiniteDifferenceResult(tuple(analytic), tuple(numeric), max(errors))


def surrogate_cosine(exact: Defense, surrogate: Defense, x: Tensor, labels: Tensor, seeds: Tensor,
                     loss: Loss = "ce") -> Tensor:
    """(B,) cosine between each image's input gradient through ``surrogate`` and through ``exact``
    (same loss, same per-image seeds)."""
    grads = []
    for model in (exact, surrogate):
        point = x.detach().clone().requires_grad_(True)
        grads.append(torch.autograd.grad(defense_loss(model, point, labels, seeds, loss), point)[0].flatten(1))
    return F.cosine_similarity(grads[0], grads[1], dim=1)
