"""The defense's configuration: one frozen dataclass, changed with `dataclasses.replace`."""

from __future__ import annotations

import warnings
from dataclasses import InitVar, dataclass, field
from typing import Literal

NUM_TRAIN_STEPS = 1000  # the DDPM schedule the diffusion models were trained with

MaskRule = Literal["threshold", "top_fraction"]
MaskNormalization = Literal["minmax", "softmax"]
Resampling = Literal["single", "repaint", "none"]
Mode = Literal["heterogeneous", "uniform"]
VoteRule = Literal["hard", "soft"]


@dataclass(frozen=True)
class PurifyConfig:
    """Everything that decides what the defense computes (docs/algorithm.md).

    Timesteps are fractions of the 1000 training steps: ``t_l = 0.2`` is timestep 200.
    The defaults are the reference code's CIFAR-10 settings; :meth:`imagenet` gives the
    ImageNet ones (top-15% mask).

    Example:
        >>> from dataclasses import replace
        >>> fast = replace(PurifyConfig(), steps=50, votes=4)
    """

    t_l: float = 0.2                      # strong noise level (attended pixels), fraction of 1000
    t_s: float = 0.1                      # weak noise level; stage 1 (inpainting) runs while s >= t_s
    steps: int = 500                      # DDIM grid resolution over 1000 steps (stride 1000 // steps)
    resample_steps: int = 3               # U: forward single steps per stage-1 step (paper: 10)
    resampling: Resampling = "single"     # "single" (the paper), "repaint" (multi-step, costly), "none"
    eta: float = 0.0                      # DDIM stochasticity; 0 = deterministic DDIM
    mode: Mode = "heterogeneous"          # "uniform" = all-ones mask: DiffPure-style baseline at t_l
    mask_rule: MaskRule = "threshold"     # "threshold" at tau, or keep the "top_fraction" of pixels
    tau: float = 0.9                      # threshold on the [0, 1] attention map
    top_fraction: float = 0.15            # fraction of pixels per image marked as attended
    p: float = 2.0                        # G = sum_c |A_c|^p
    p_root: bool = False                  # take the p-th root of G (the paper's text; not the code)
    attention_norm: MaskNormalization = "minmax"  # per-image map normalisation before the union
    votes: int = 1                        # S stochastic purifications per image, run as one batch
    vote: VoteRule = "hard"               # "hard" majority of labels or "soft" mean probability
    grad_checkpoint: bool = False         # recompute each denoiser call in backward (saves memory)
    # Deprecated keyword aliases (one release): normalization= -> attention_norm=, checkpoint= -> grad_checkpoint=.
    normalization: InitVar[MaskNormalization | None] = field(default=None, repr=False)
    checkpoint: InitVar[bool | None] = field(default=None, repr=False)

    def __post_init__(self, normalization: MaskNormalization | None, checkpoint: bool | None) -> None:
        for old, new, value in (("normalization", "attention_norm", normalization), ("checkpoint", "grad_checkpoint", checkpoint)):
            if value is not None:
                warnings.warn(f"PurifyConfig({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
                object.__setattr__(self, new, value)
        problems = []
        if not 0.0 < self.t_l < 1.0:
            problems.append(f"t_l must be in (0, 1), got {self.t_l}")
        if not 0.0 <= self.t_s <= self.t_l:
            problems.append(f"t_s must be in [0, t_l={self.t_l}], got {self.t_s}")
        if not 1 <= self.steps <= NUM_TRAIN_STEPS:
            problems.append(f"steps must be in [1, {NUM_TRAIN_STEPS}], got {self.steps}")
        elif int(round(self.steps * self.t_l, 9)) < 1:
            problems.append(f"steps * t_l must be >= 1 so that there is a denoising step, got {self.steps} * {self.t_l}")
        if self.resample_steps < 0:
            problems.append(f"resample_steps must be >= 0, got {self.resample_steps}")
        if round(self.t_l * NUM_TRAIN_STEPS) + self.resample_steps >= NUM_TRAIN_STEPS:
            problems.append("t_l * 1000 + resample_steps must stay below 1000")
        if self.eta < 0:
            problems.append(f"eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.tau <= 1.0:
            problems.append(f"tau must be in [0, 1], got {self.tau}")
        if not 0.0 < self.top_fraction <= 1.0:
            problems.append(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.p <= 0:
            problems.append(f"p must be > 0, got {self.p}")
        if self.votes < 1:
            problems.append(f"votes must be >= 1, got {self.votes}")
        for name, allowed in (
            ("resampling", Resampling.__args__),
            ("mode", Mode.__args__),
            ("mask_rule", MaskRule.__args__),
            ("attention_norm", MaskNormalization.__args__),
            ("vote", VoteRule.__args__),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid PurifyConfig: " + "; ".join(problems))

    @classmethod
    def imagenet(cls, **overrides: object) -> "PurifyConfig":
        """The reference ImageNet settings: the top 15% of pixels get the strong noise."""
        return cls(**{"mask_rule": "top_fraction", "top_fraction": 0.15, **overrides})  # type: ignore[arg-type]
