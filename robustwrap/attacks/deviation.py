"""DiffAttack's deviated-reconstruction term (Kang et al., NeurIPS 2023), for any attack loss.

DiffAttack pushes the reverse chain away from where it should be: at each denoiser step k
(timestep t_k) the state x_k fed to the denoiser is compared with the input diffused to the
same level with the *same* noise as the chain's own initial diffusion,
x_k* = sqrt(abar_{t_k}) x0 + sqrt(1 - abar_{t_k}) z, and the attack ascends

    dev = sum_k w_k mean_pixels( m_k * (x_k - x_k*) )^2,     w_k = 1 / K (uniform over the K steps),

averaged over the S copies of each image. For the heterogeneous chain the stage-1 steps use
the mask-weighted form m_k = M (the un-attended pixels are reset from the input at every
stage-1 step, so their deviation says nothing), stage 2 the whole image (m_k = 1); the
uniform chain (M = 1) is DiffAttack's original form. With ``--dev-weight W`` the attacks
ascend ``loss + W * dev``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..noise import Noise
from ..schema import setting
from ..sampler import diffuse
from ..schedule import SamplingPlan
from ..wrapper import PurificationTrace, RobustWrapper
from .options import AttackOptions

WEIGHTS = "uniform: 1/K for each of the K denoiser steps (both stages)"


@dataclass(frozen=True)
class DeviationOptions(AttackOptions):
    """The options of the attacks that can add the deviation term (pgd-eot and pgd-vote)."""

    dev_weight: float = setting(0.0, ge=0, help="W: add DiffAttack's deviated-reconstruction term (squared distance "
                                "of each denoiser input from the input diffused with the same noise, mask-weighted "
                                "in stage 1, weight 1/K per step) times W to the loss of pgd-eot and pgd-vote; 0: off")

    def describe(self) -> str:
        return f"deviation weight {self.dev_weight:g}" if self.dev_weight else ""


def deviation(trace: PurificationTrace, plan: SamplingPlan) -> Tensor:
    """(B,) the deviated-reconstruction term of each image (module docstring), mean over its S copies.

    Args:
        trace: :meth:`RobustWrapper.purify_trace` of S copies of B images.
        plan: the wrapper's sampling plan (its ``abar``).
    """
    copies, batch = trace.purified.shape[:2]
    total = trace.x0.new_zeros(trace.x0.shape[0])
    for step, state in trace.states:
        diff = state - diffuse(trace.x0, plan.abar[step.t_model], trace.first_noise)
        if step.inpaint:
            diff = trace.mask * diff
        total = total + diff.pow(2).flatten(1).mean(dim=1) / len(trace.states)
    return total.view(copies, batch).mean(dim=0)


def logits_and_deviation(wrapper: RobustWrapper, x: Tensor, noise: Noise | None = None) -> tuple[Tensor, Tensor]:
    """One traced purification of ``x`` (B, C, H, W) in [0, 1]: each copy's (S, B, K) classifier
    logits and each image's (B,) deviation term, both differentiable w.r.t. ``x``.

    ``noise``: as in :meth:`RobustWrapper.purify_trace` (None: fresh draws).
    """
    trace = wrapper.purify_trace(x, noise=noise)
    copies, batch = trace.purified.shape[:2]
    logits = wrapper.classify(trace.purified.flatten(0, 1)).view(copies, batch, -1)
    return logits, deviation(trace, wrapper.plan)
