"""What an attack differentiates: ``model(x) -> logits`` views of a defended classifier.

Every view maps images (B, C, H, W) in [0, 1] to (B, K) logits-like scores over K classes
(log mean vote probabilities for the defense, computed stably by
:func:`robustwrap.vote.log_mean_probability`), the one seam shared with torchattacks and
AutoAttack. Each view takes an optional ``generator`` for the defense's noise, so that an
attack is reproducible from a seed without touching torch's global random state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..mask import soft_mask
from ..vote import log_mean_probability
from ..wrapper import RobustWrapper


class DefenseLogits(nn.Module):
    """Full gradient: log of the wrapper's mean vote probabilities (the defense as attacked)."""

    def __init__(self, wrapper: RobustWrapper, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return log_mean_probability(self.wrapper.vote_logits(x, generator=self.generator))


class Undefended(nn.Module):
    """The bare classifier (with its normalisation): the no-defense baseline.

    ``generator`` is accepted so that every view is built alike; the bare classifier draws no noise.
    """

    def __init__(self, wrapper: RobustWrapper, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, x: Tensor) -> Tensor:
        return self.wrapper.classify(x)


class BPDALogits(nn.Module):
    """BPDA: purify without gradient, backward as identity through the purifier.

    Forward equals the defense (S votes); backward is the classifier's gradient at the
    purified images, passed straight to the input.
    """

    def __init__(self, wrapper: RobustWrapper, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        votes = self.wrapper.config.votes
        with torch.no_grad():
            purified = self.wrapper.purify_and_classify(x, generator=self.generator)[0]  # (S, B, C, H, W)
        straight_through = x.unsqueeze(0) + (purified - x.unsqueeze(0)).detach()
        logits = self.wrapper.classify(straight_through.flatten(0, 1))
        return log_mean_probability(logits.view(votes, x.shape[0], -1))


class MaskAwareLogits(nn.Module):
    """The defense with a differentiable mask: the gradient also flows through mask building.

    The mask is :func:`robustwrap.mask.soft_mask` of the wrapper's (differentiable)
    :meth:`~RobustWrapper.attention`: the hard cut becomes a sigmoid of the given
    temperature, so the attack can move the attention away from its perturbation.
    One purification per call (use EOT).
    """

    def __init__(self, wrapper: RobustWrapper, temperature: float = 0.05, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.wrapper = wrapper
        self.temperature = temperature
        self.generator = generator

    def soft_mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) mask in (0, 1), differentiable w.r.t. ``x`` (all ones in uniform mode)."""
        cfg = self.wrapper.config
        if cfg.mode == "uniform":
            return x.new_ones(x.shape[0], 1, *self.wrapper.diffusion_size_for(x))
        return soft_mask(self.wrapper.attention(x), cfg.mask_rule, cfg.tau, cfg.top_fraction, self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        purified = self.wrapper.purify(x, mask=self.soft_mask(x), generator=self.generator)
        return self.wrapper.classify(purified).log_softmax(dim=1)
