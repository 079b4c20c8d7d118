"""DiffHammer (Wang et al., NeurIPS 2024): a selective attack with EM over N purifications and
gradient grafting, through this library's exact chain.

Per step, for every image (flattened to d = C*H*W):

1. **N-evaluation.** Purify the current point N times (each copy its own per-image seed) and
   take each copy's loss l_i and its gradient g_i at the purified image (the classifier's
   gradient, cheap).
2. **Selection** (the reference's ``seeds_select``): the copy j* maximising
   sum_i elu(l_i + eps * <unit(g_j), g_i>) starts the EM, r = g_{j*}; unit is sign (L-inf)
   or g / ||g||_2 (L2).
3. **EM** (``em_steps`` rounds): w_i = sigmoid(lam * (l_i + <unit(r), g_i>)),
   r <- sum_i w_i g_i / sum_i w_i. The reference computes the weights from the initial r only
   (its loop never assigns r); ``em_reference=True`` reproduces that: one weighting, from the
   selected copy's gradient.
4. **Gradient grafting.** One backward pass through the selected copy's chain, replayed with
   the same noise (its seed), with r as the output gradient: grad = J_{j*}(x)^T r. With all
   weight on copy j this is exactly copy j's input gradient.
5. Momentum grad <- v grad + (1 - v) grad_prev with v = (t + 1)^-alpha, then a PGD step
   (sign for L-inf, normalised for L2) and projection.

The best iterate per image is the one where most of the N copies are wrong (ties: the higher
mean loss); an image stops once all N copies are wrong. The attack's own verdict is "broken"
when some iterate had a wrong copy (DiffHammer's N-evaluation worst case); the evaluation
re-decides every image with the deployed vote on held-out seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..noise import Noise, check_seeds, derive_seeds
from ..defense import Defense
from ..schema import setting
from .options import AttackOptions
from .pgd import LOSSES, Loss, Norm, ascent_direction, attack_loss, default_step_size, project, random_start_point

DEFAULT_SAMPLES = 10   # N purifications per step (the reference's n_eval)
DEFAULT_LAMBDA = 5.0   # EM temperature lam
DEFAULT_ALPHA = 0.5    # momentum exponent alpha
DEFAULT_EM_STEPS = 5   # EM rounds (as intended; the reference's loop has no effect)


@dataclass(frozen=True)
class DiffHammerOptions(AttackOptions):
    """The options of ``--attack diffhammer`` (the registry passes them to :func:`diffhammer`)."""

    em_samples: int = setting(DEFAULT_SAMPLES, ge=1, help="diffhammer: N purifications per step, weighted by EM "
                              "(the reference: 10)")
    em_steps: int = setting(DEFAULT_EM_STEPS, ge=1, help="diffhammer: EM rounds per step (r updated each round)")
    em_reference: bool = setting(False, help="diffhammer: the reference's EM, whose r is never updated (one "
                                 "weighting from the selected copy's gradient)")

    def describe(self) -> str:
        return f"diffhammer N={self.em_samples} EM {'as in the reference' if self.em_reference else f'{self.em_steps} rounds'}"


@dataclass(frozen=True)
class HammerResult:
    """What :func:`diffhammer` found, per image.

    Attributes:
        adversarial: (B, C, H, W) best iterate in the ball and [0, 1].
        broken: (B,) bool: some iterate had at least one of its N copies misclassified.
        wrong_copies: (B,) int64: copies (of N) wrong at the best iterate.
    """

    adversarial: Tensor
    broken: Tensor
    wrong_copies: Tensor


def unit(g: Tensor, norm: Norm) -> Tensor:
    """The reference's ``unit``: sign(g) for L-inf, g / ||g||_2 along the last axis for L2."""
    return g.sign() if norm == "Linf" else g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def select_copy(losses: Tensor, grads: Tensor, eps: float, norm: Norm) -> Tensor:
    """(B,) index of the copy that starts the EM (the reference's ``seeds_select`` with one pick).

    Args:
        losses: (N, B) per-copy losses; grads: (N, B, d) per-copy gradients at the purified images.
    """
    delta = torch.einsum("jbd,ibd->jib", unit(grads, norm), grads)  # delta[j, i] = <unit(g_j), g_i>
    expected = F.elu(losses.unsqueeze(0) + eps * delta).sum(dim=1)  # (N candidates, B)
    return expected.argmax(dim=0)


def em_aggregate(losses: Tensor, grads: Tensor, start: Tensor, *, lam: float = DEFAULT_LAMBDA,
                 steps: int = DEFAULT_EM_STEPS, norm: Norm = "Linf", reference: bool = False) -> tuple[Tensor, Tensor]:
    """EM over the N copies: weights and the aggregated gradient.

    Args:
        losses: (N, B); grads: (N, B, d); start: (B, d) the initial r.
        lam: sigmoid temperature; steps: EM rounds (>= 1).
        reference: the reference's behaviour: r is never updated, so the weights come from
            ``start`` whatever ``steps`` is.

    Returns:
        (w (N, B), r (B, d)) with r = sum_i w_i g_i / sum_i w_i.
    """
    if steps < 1:
        raise ValueError(f"EM needs steps >= 1, got {steps}")
    r = start
    for _ in range(1 if reference else steps):
        w = torch.sigmoid(lam * (losses + (unit(r, norm).unsqueeze(0) * grads).sum(dim=-1)))  # (N, B)
        r = (w.unsqueeze(-1) * grads).sum(dim=0) / w.sum(dim=0).unsqueeze(-1)
    return w, r


def graft(chain: Defense, x: Tensor, seeds: Tensor, output_gradient: Tensor) -> Tensor:
    """J(x)^T v: one backward through the purification chain with the given per-image seeds.

    Args:
        chain: a one-vote view of the defense (``with_votes(1)``; the bare classifier's purification is the
            identity, so its J^T v is v).
        x: (B, C, H, W) images; seeds: (B,) the chain's per-image seeds (the same noise as the
            copy being replayed); output_gradient: (B, C, H, W) the gradient at the purified image.

    Returns:
        (B, C, H, W) input gradient.
    """
    point = x.detach().requires_grad_(True)
    purified = chain.purify(point, noise=Noise.seeded(seeds))
    return torch.autograd.grad(purified, point, grad_outputs=output_gradient)[0]


def _evaluate_copies(chain: Defense, x: Tensor, y: Tensor, seeds: Tensor, loss: Loss) -> tuple[Tensor, Tensor, Tensor]:
    """N copies of each image: losses (N, b), gradients at the purified images (N, b, d), wrong (N, b).

    ``seeds`` (N, b): copy i of image k is purified with seed ``seeds[i, k]`` (votes=1 chain; the bare
    classifier's copies are the image itself).
    """
    copies, batch = seeds.shape
    with torch.no_grad():
        purified = chain.purify(x.repeat(copies, 1, 1, 1), noise=Noise.seeded(seeds.flatten()))
    point = purified.detach().requires_grad_(True)
    logits = chain.classify(point)
    labels = y.repeat(copies)
    losses = attack_loss(logits, labels, loss)
    grads = torch.autograd.grad(losses.sum(), point)[0]
    wrong = logits.argmax(dim=1) != labels
    return losses.detach().view(copies, batch), grads.view(copies, batch, -1), wrong.view(copies, batch)


def diffhammer(
    gradient_model: Defense,
    x: Tensor,
    y: Tensor,
    *,
    seeds: Tensor,
    eps: float,
    norm: Norm = "Linf",
    steps: int = 100,
    step_size: float | None = None,
    samples: int = DEFAULT_SAMPLES,
    loss: Loss = "ce",
    lam: float = DEFAULT_LAMBDA,
    alpha: float = DEFAULT_ALPHA,
    em_steps: int = DEFAULT_EM_STEPS,
    em_reference: bool = False,
) -> HammerResult:
    """The DiffHammer attack (module docstring) on (B, C, H, W) images in [0, 1] with labels (B,).

    Args:
        gradient_model: the defense (or a surrogate view) whose chain is attacked (a
            :class:`robustwrap.defense.BareClassifier`: the N copies are the image itself).
        seeds: (B,) per-image seeds: image i's start, copies and replays come from ``seeds[i]``.
        eps, norm, steps, step_size: the PGD budget (default step 2.5 * eps / steps).
        samples: N purifications per step; loss: per-copy loss (default CE, as the reference).
        lam, alpha, em_steps, em_reference: EM temperature, momentum exponent, EM rounds, and
            the reference's r-never-updated behaviour.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if samples < 1 or steps < 0:
        raise ValueError(f"need samples >= 1 and steps >= 0, got {samples} and {steps}")
    seeds = check_seeds(seeds, x.shape[0]).cpu()
    step_size = step_size if step_size is not None else default_step_size(eps, steps)
    chain = gradient_model.with_votes(1)
    x = x.detach()

    def copy_seeds(active_seeds: Tensor, step: int) -> Tensor:
        return torch.stack([derive_seeds(active_seeds, 1, step, i) for i in range(samples)])  # (N, b)

    current = random_start_point(x, eps, norm, seeds=derive_seeds(seeds, 0))
    best = current.clone()
    losses, grads, wrong = _evaluate_copies(chain, current, y, copy_seeds(seeds, 0), loss)
    best_wrong, best_loss = wrong.sum(dim=0), losses.mean(dim=0)
    broken = best_wrong > 0
    state = {"losses": losses, "grads": grads, "seeds": copy_seeds(seeds, 0)}
    previous = torch.zeros_like(x)
    for step in range(1, steps + 1):
        active = (best_wrong < samples).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        cols = active.cpu()
        losses, grads, chosen_seeds = state["losses"][:, cols], state["grads"][:, cols], state["seeds"][:, cols]
        pick = select_copy(losses, grads, eps, norm)
        rows = torch.arange(len(cols), device=grads.device)
        _, r = em_aggregate(losses, grads, grads[pick, rows], lam=lam, steps=em_steps, norm=norm,
                            reference=em_reference)
        points = current[active]
        output_gradient = r.view_as(points)
        grad = graft(chain, points, chosen_seeds[pick.cpu(), torch.arange(len(cols))], output_gradient)
        v = step ** -alpha
        grad = v * grad + (1 - v) * previous[active] if step > 1 else grad
        previous[active] = grad
        points = project(points + step_size * ascent_direction(grad, norm), x[active], eps, norm).detach()
        current[active] = points
        new_seeds = copy_seeds(seeds[cols], step)
        losses, grads, wrong = _evaluate_copies(chain, points, y[active], new_seeds, loss)
        count, mean_loss = wrong.sum(dim=0), losses.mean(dim=0)
        better = (count > best_wrong[active]) | ((count == best_wrong[active]) & (mean_loss > best_loss[active]))
        best[active[better]] = points[better]
        best_wrong[active[better]], best_loss[active[better]] = count[better], mean_loss[better]
        broken[active] |= count > 0
        state = {"losses": state["losses"].clone(), "grads": state["grads"].clone(), "seeds": state["seeds"].clone()}
        state["losses"][:, cols], state["grads"][:, cols], state["seeds"][:, cols] = losses, grads, new_seeds
    return HammerResult(best, broken, best_wrong)
