"""What an attack differentiates: ``model(x) -> logits`` views of a defended classifier.

Every view maps images (B, C, H, W) in [0, 1] to (B, K) logits-like scores (log mean
probabilities for the defense), the one seam shared with torchattacks and AutoAttack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..mask import attention_map
from ..wrapper import RobustWrapper

_TINY = 1e-12


class DefenseLogits(nn.Module):
    """Full gradient: log of the wrapper's mean vote probabilities (the defense as attacked)."""

    def __init__(self, wrapper: RobustWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, x: Tensor) -> Tensor:
        return self.wrapper(x).clamp_min(_TINY).log()


class Undefended(nn.Module):
    """The bare classifier (with its normalisation): the no-defense baseline."""

    def __init__(self, wrapper: RobustWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, x: Tensor) -> Tensor:
        return self.wrapper.classify(x)


class BPDALogits(nn.Module):
    """BPDA: purify without gradient, backward as identity through the purifier.

    Forward equals the defense (S votes); backward is the classifier's gradient at the
    purified images, passed straight to the input.
    """

    def __init__(self, wrapper: RobustWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, x: Tensor) -> Tensor:
        votes = self.wrapper.config.votes
        with torch.no_grad():
            purified = self.wrapper.purify_and_classify(x)[0]  # (S, B, C, H, W)
        straight_through = x.unsqueeze(0) + (purified - x.unsqueeze(0)).detach()
        probs = self.wrapper.classify(straight_through.flatten(0, 1)).softmax(dim=1)
        return probs.view(votes, x.shape[0], -1).mean(dim=0).clamp_min(_TINY).log()


class MaskAwareLogits(nn.Module):
    """The defense with a differentiable mask: the gradient also flows through mask building.

    The hard threshold (map >= tau) becomes ``sigmoid((map - tau) / temperature)``, and the
    top-fraction rule a sigmoid around each image's k-th largest value, so the attack can
    move the attention away from its perturbation. One purification per call (use EOT).
    """

    def __init__(self, wrapper: RobustWrapper, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.wrapper = wrapper
        self.temperature = temperature

    def soft_mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) mask in (0, 1), differentiable w.r.t. ``x``."""
        wrapper, cfg = self.wrapper, self.wrapper.config
        activations = wrapper._hooks.capture(wrapper.classifier, wrapper.normalize(x))
        attention = attention_map(activations, wrapper.diffusion_size_for(x), cfg.p, cfg.p_root, cfg.normalization)
        if cfg.mode == "uniform":
            return torch.ones_like(attention)
        if cfg.mask_rule == "threshold":
            cut = torch.full_like(attention[:, :1, :1, :1], cfg.tau)
        else:
            flat = attention.flatten(1)
            k = max(1, round(cfg.top_fraction * flat.shape[1]))
            cut = flat.topk(k, dim=1).values[:, -1].view(-1, 1, 1, 1).detach()
        return torch.sigmoid((attention - cut) / self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        purified = self.wrapper.purify(x, mask=self.soft_mask(x))
        return self.wrapper.classify(purified).softmax(dim=1).clamp_min(_TINY).log()
