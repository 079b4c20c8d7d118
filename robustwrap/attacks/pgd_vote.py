"""PGD against the deployed vote (the DiffBreak protocol, within the Lp ball).

Each step ascends a loss averaged over K purified copies of every image (one batched pass:
the wrapper runs with ``votes=K``), then checks the *deployed* decision — the configured vote
rule over the defense's S purifications, on fresh copies — and keeps, per image, the best
iterate: the first whose vote is wrong (the image then stops), else the one with the lowest
mean margin (true logit minus the best other, averaged over the S copies). The random start is
checked too. The final verdict is not this attack's business: the evaluation re-decides every
image on runs whose seeds the attack never used.

Randomness is per image: image i's start, gradient copies and vote checks come from
``seeds[i]`` (:func:`robustwrap.noise.derive_seeds` with (0,), (1, step) and (2, step)), so its
attack does not depend on the batch or on which other images stopped early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..noise import Noise, check_seeds, derive_seeds
from ..defense import Defense
from .deviation import logits_and_deviation
from .pgd import LOSSES, Loss, Norm, ascent_direction, attack_loss, default_step_size, project, random_start_point


@dataclass(frozen=True)
class VoteAttackResult:
    """What :func:`pgd_vote` found, per image.

    Attributes:
        adversarial: (B, C, H, W) the best iterate, in the ball and in [0, 1].
        broken: (B,) bool, the attack's own verdict: some iterate's deployed vote was wrong.
        margin: (B,) mean margin (true minus best other logit) over the S copies at the best
            iterate's check; negative means the copies lean to a wrong class.
        steps: (B,) int64, the steps taken before the image stopped (``steps`` if never broken).
    """

    adversarial: Tensor
    broken: Tensor
    margin: Tensor
    steps: Tensor


def true_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """(..., B) logit of the true class minus the largest other one, from (..., B, K) logits."""
    true = logits.gather(-1, labels.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[-1]).bool(), float("-inf"))
    return true - others.amax(dim=-1)


def pgd_vote(
    gradient_model: Defense,
    deployed: Defense,
    x: Tensor,
    y: Tensor,
    *,
    seeds: Tensor,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 100,
    step_size: float | None = None,
    copies: int = 8,
    loss: Loss = "margin",
    dev_weight: float = 0.0,
    on_step: Callable[[int], None] | None = None,
) -> VoteAttackResult:
    """Attack the deployed vote: K-copy averaged gradients, a vote check after every step.

    Args:
        gradient_model: the defense differentiated (the deployed one, or a ``with_config`` surrogate; a
            :class:`robustwrap.defense.BareClassifier`: one deterministic copy).
        deployed: the defense whose decision counts (its S votes and vote rule; the bare classifier: argmax).
        x: (B, C, H, W) clean images in [0, 1]; y: (B,) int64 true labels.
        seeds: (B,) per-image seeds (non-negative int64).
        eps: radius; norm: "Linf" or "L2"; steps: PGD steps (>= 0).
        step_size: default 2.5 * eps / steps.
        copies: K purified copies per gradient (the mean loss over them is ascended).
        loss: "margin" (DiffBreak's), "ce" or "dlr", on each copy's logits.
        dev_weight: W of DiffAttack's deviation term added to the loss (:mod:`.deviation`; 0: off; a deterministic
            model has no purification to deviate: ignored).
        on_step: called with the step index after each step.

    Returns:
        :class:`VoteAttackResult`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if copies < 1 or steps < 0:
        raise ValueError(f"need copies >= 1 and steps >= 0, got {copies} and {steps}")
    seeds = check_seeds(seeds, x.shape[0]).cpu()
    step_size = step_size if step_size is not None else default_step_size(eps, steps)
    x = x.detach()
    batch = x.shape[0]
    gradient_view = gradient_model.with_votes(copies)

    def gradient(points: Tensor, labels: Tensor, active_seeds: Tensor, step: int) -> Tensor:
        points = points.detach().requires_grad_(True)
        bonus = 0.0
        noise = Noise.seeded(derive_seeds(active_seeds, 1, step))
        if dev_weight > 0 and not gradient_view.deterministic:
            logits, dev = logits_and_deviation(gradient_view, points, noise)
            bonus = dev_weight * dev
        else:
            logits = gradient_view.vote_logits(points, noise=noise)  # (K, b, classes); the bare classifier: K = 1
        value = (torch.stack([attack_loss(z, labels, loss) for z in logits]).mean(dim=0) + bonus).sum()
        return torch.autograd.grad(value, points)[0]

    def check(points: Tensor, labels: Tensor, active_seeds: Tensor, step: int) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = deployed.vote_logits(points, noise=Noise.seeded(derive_seeds(active_seeds, 2, step)))  # (S, b, classes)
            wrong = deployed.decide(logits) != labels
        return wrong, true_margin(logits, labels).mean(dim=0)

    current = random_start_point(x, eps, norm, seeds=derive_seeds(seeds, 0))
    best = current.clone()
    broken, best_margin = check(current, y, seeds, 0)
    taken = torch.zeros(batch, dtype=torch.int64, device=x.device)
    for step in range(1, steps + 1):
        active = (~broken).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        points, labels, active_seeds = current[active], y[active], seeds[active.cpu()]
        grad = gradient(points, labels, active_seeds, step)
        points = project(points + step_size * ascent_direction(grad, norm), x[active], eps, norm).detach()
        current[active] = points
        taken[active] = step
        wrong, margin = check(points, labels, active_seeds, step)
        better = wrong | (margin < best_margin[active])
        best[active[better]] = points[better]
        best_margin[active[better]] = margin[better]
        broken[active[wrong]] = True
        if on_step is not None:
            on_step(step - 1)
    return VoteAttackResult(best, broken, best_margin, taken)
