"""The linear DDPM schedule and the fixed sampling plan derived from a :class:`PurifyConfig`.

The plan is plain Python data (ints and floats) computed once at construction, so the
sampler's loop has a trip count known before any tensor is seen: it unrolls identically in
eager mode, under ``torch.compile`` and in an exported ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import NUM_TRAIN_STEPS, PurifyConfig


def linear_alphas_cumprod(num_steps: int = NUM_TRAIN_STEPS) -> torch.Tensor:
    """abar_t = prod_{i<=t} (1 - beta_i) with betas = linspace(1e-4, 2e-2, num_steps).

    Returns:
        float64 tensor of shape (num_steps,), decreasing from ~1 to ~4e-5; index t is timestep t.
    """
    betas = torch.linspace(1e-4, 2e-2, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_grid(steps: int, t_l: float) -> list[int]:
    """Timesteps visited by the sampler, from the start level down to 0.

    Stride ``k = 1000 // steps``; the grid ``[0, k, 2k, ...]`` keeps its first
    ``int(steps * t_l) + 1`` entries and is reversed: ``ddim_grid(500, 0.2) == [200, 198, ..., 0]``.
    """
    stride = NUM_TRAIN_STEPS // steps
    entries = int(round(steps * t_l, 9)) + 1  # round(., 9): 100 * 0.29 is 28.999999999999996 in floats
    return list(range(0, stride * entries, stride))[::-1]


@dataclass(frozen=True)
class Step:
    """One DDIM step from timestep ``t`` to ``s < t``.

    Attributes:
        t: grid timestep the step starts from (the inpainting re-noise level).
        s: timestep the step lands on.
        inpaint: stage 1: re-noise the un-attended pixels from the input before denoising.
        resample_alphas: alpha_{t+1..t+U} of the single forward steps taken after inpainting.
        repaint_jumps: RePaint repeats (denoise to s, diffuse back to t, inpaint again).
        t_model: timestep of the state fed to the denoiser (``t + U`` after resampling).
    """

    t: int
    s: int
    inpaint: bool
    resample_alphas: tuple[float, ...]
    repaint_jumps: int
    t_model: int


@dataclass(frozen=True)
class SamplingPlan:
    """The whole purification loop as data: start level, steps and coefficient table."""

    t_start: int
    steps: tuple[Step, ...]
    abar: tuple[float, ...]   # abar_t for t = 0..999 (float64 precision kept in Python floats)
    eta: float

    @property
    def denoiser_calls(self) -> int:
        """Calls of the epsilon model per purification of one image."""
        return sum(1 + step.repaint_jumps for step in self.steps)

    @property
    def noise_draws(self) -> int:
        """Gaussian tensors drawn per purification (the leading axis D of explicit noise)."""
        draws = 1  # the initial forward diffusion to t_start
        for step in self.steps:
            if step.inpaint:
                draws += 1 + len(step.resample_alphas) + 2 * step.repaint_jumps
            if self.eta > 0:
                draws += 1 + step.repaint_jumps
        return draws


def make_plan(config: PurifyConfig) -> SamplingPlan:
    """Turn a configuration into the fixed list of steps of docs/algorithm.md ("Purification")."""
    abar = linear_alphas_cumprod()
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    grid = ddim_grid(config.steps, config.t_l)
    stage1_floor = config.t_s * NUM_TRAIN_STEPS
    steps = []
    for t, s in zip(grid[:-1], grid[1:]):
        inpaint = s >= stage1_floor
        single = inpaint and config.resampling == "single"
        u = config.resample_steps if single else 0
        steps.append(
            Step(
                t=t,
                s=s,
                inpaint=inpaint,
                resample_alphas=tuple(float(alphas[t + i]) for i in range(1, u + 1)),
                repaint_jumps=config.resample_steps if inpaint and config.resampling == "repaint" else 0,
                t_model=t + u,
            )
        )
    return SamplingPlan(t_start=grid[0], steps=tuple(steps), abar=tuple(abar.tolist()), eta=config.eta)


def describe_defense(config: PurifyConfig) -> str:
    """A defense in a few words, e.g. 't_l 0.4, t_s 0.2, tau 0.9, steps 25 (10 denoiser calls), 1 vote (hard)'."""
    if config.mode == "uniform":
        levels = f"t* {config.t_l:g}"
    else:
        cut = f"tau {config.tau:g}" if config.mask_rule == "threshold" else f"top fraction {config.top_fraction:g}"
        levels = f"t_l {config.t_l:g}, t_s {config.t_s:g}, {cut}"
    votes = f"{config.votes} vote{'s' if config.votes > 1 else ''} ({config.vote})"
    return f"{levels}, steps {config.steps} ({make_plan(config).denoiser_calls} denoiser calls), {votes}"


def ddim_coefficients(abar_t: float, abar_s: float, eta: float) -> tuple[float, float, float]:
    """Coefficients of ``x_s = a * x_t + b * eps + sigma * z`` for a DDIM step t -> s.

    With ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``:
    ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z``.

    Returns:
        (a, b, sigma) as Python floats.
    """
    sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
    a = math.sqrt(abar_s / abar_t)
    b = math.sqrt(max(1 - abar_s - sigma**2, 0.0)) - a * math.sqrt(1 - abar_t)
    return a, b, sigma
