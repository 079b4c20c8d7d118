"""Heterogeneous forward diffusion, two-stage denoising and single-step resampling (Alg. 1).

A pure function in the style of k-diffusion's samplers: ``(eps_model, x0, mask, plan, noise)``.
Gradients are decided at the call site; nothing here disables or forces autograd.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from .noise import NoiseSource
from .schedule import SamplingPlan, Step, ddim_coefficients

EpsFn = Callable[[Tensor, Tensor], Tensor]


def diffuse(x0: Tensor, abar_t: float, z: Tensor) -> Tensor:
    """q(x_t | x_0): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) z``."""
    return math.sqrt(abar_t) * x0 + math.sqrt(1.0 - abar_t) * z


def purify_latent(
    eps_model: EpsFn,
    x0: Tensor,
    mask: Tensor,
    plan: SamplingPlan,
    noise: NoiseSource,
    checkpoint: bool = False,
    observe: Callable[[Step, Tensor], None] | None = None,
) -> Tensor:
    """Purify images in diffusion space.

    Args:
        eps_model: ``eps_model(x_t, t) -> eps`` with x_t (N, C, H, W) and t a float tensor (N,)
            of integer timesteps in [0, 999].
        x0: (N, C, H, W) images to purify, in [-1, 1].
        mask: (N, 1, H, W) or broadcastable, 1 where the strong noise goes (held constant).
        plan: the fixed loop from :func:`robustwrap.schedule.make_plan`.
        noise: the source of Gaussian draws, consumed in the plan's order.
        checkpoint: recompute each denoiser call in backward instead of storing its activations.
        observe: called once per grid step with the step and the state fed to its (last)
            denoiser call, (N, C, H, W) at timestep ``step.t_model`` (differentiable; for
            DiffAttack's deviated-reconstruction loss).

    Returns:
        (N, C, H, W) purified images in [-1, 1].
    """
    abar = plan.abar
    keep = 1.0 - mask

    def denoise(x: Tensor, t: int, s: int) -> Tensor:
        timesteps = x.new_full((x.shape[0],), float(t), dtype=torch.float32)  # exact in float32, not bf16
        if checkpoint and torch.is_grad_enabled():
            eps = _checkpoint(eps_model, x, timesteps, use_reentrant=False)
        else:
            eps = eps_model(x, timesteps)
        a, b, sigma = ddim_coefficients(abar[t], abar[s], plan.eta)
        x = a * x + b * eps
        return x + sigma * noise(x) if sigma > 0 else x

    def inpaint(x: Tensor, t: int) -> Tensor:
        return mask * x + keep * diffuse(x0, abar[t], noise(x0))

    x = diffuse(x0, abar[plan.t_start], noise(x0))
    for step in plan.steps:
        if step.inpaint:
            for _ in range(step.repaint_jumps):  # RePaint: denoise, jump back to t, repeat
                x_s = denoise(inpaint(x, step.t), step.t, step.s)
                x = diffuse(x_s, abar[step.t] / abar[step.s], noise(x_s))
            x = inpaint(x, step.t)
            for alpha in step.resample_alphas:  # single-step resampling: t -> t + U
                x = diffuse(x, alpha, noise(x))
        if observe is not None:
            observe(step, x)
        x = denoise(x, step.t_model, step.s)
    return x.clamp(-1.0, 1.0)
