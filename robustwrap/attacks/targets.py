"""What an attack differentiates: ``model(x) -> logits`` views of a defended classifier.

Every view maps images (B, C, H, W) in [0, 1] to (B, K) logits-like scores over K classes
(log mean vote probabilities for the defense, computed stably by
:func:`robustwrap.vote.log_mean_probability`), the one seam shared with torchattacks and
AutoAttack. Each view takes an optional ``generator`` for the defense's noise, so that an
attack is reproducible from a seed without touching torch's global random state, or
per-image ``seeds`` (B,): then call c of the view purifies image i with the seed
``derive_seeds(seeds, c)[i]`` (:func:`robustwrap.noise.derive_seeds`), so an image's attack
depends on its own seed only, not on the batch it is attacked in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..mask import soft_mask
from ..noise import Noise, check_seeds, derive_seeds
from ..schema import setting
from ..vote import log_mean_probability
from ..defense import Defense
from ..wrapper import RobustWrapper
from .deviation import logits_and_deviation
from .options import AttackOptions


class NoisyView(nn.Module):
    """Base of the views: hands out the :class:`~robustwrap.noise.Noise` of each call (a stream, per-image seeds
    or fresh draws).

    Args:
        wrapper: the :class:`~robustwrap.defense.Defense` attacked (the wrapper, or a bare classifier).
        generator: one stream for the whole batch (the image's noise depends on its batch).
        seeds: (B,) per-image seeds; call c uses ``derive_seeds(seeds, c)``. Each call must then
            get the same B images, in order.
    """

    def __init__(self, wrapper: Defense, generator: torch.Generator | None = None,
                 seeds: Tensor | None = None) -> None:
        super().__init__()
        if generator is not None and seeds is not None:
            raise ValueError("pass a generator or per-image seeds, not both")
        self.wrapper = wrapper
        self.generator = generator
        self.seeds = None if seeds is None else check_seeds(seeds)
        self.calls = 0

    def noise(self, x: Tensor) -> Noise:
        """The noise of the wrapper's next purification of ``x`` (B, ...): the generator's stream, the next
        per-image seeds, or fresh draws."""
        if self.seeds is None:
            return Noise.stream(self.generator) if self.generator is not None else Noise.fresh()
        if x.shape[0] != self.seeds.shape[0]:
            raise ValueError(f"this view has seeds for {self.seeds.shape[0]} images, got a batch of {x.shape[0]}")
        self.calls += 1
        return Noise.seeded(derive_seeds(self.seeds, self.calls - 1))


class DefenseLogits(NoisyView):
    """Full gradient: the defense's own scores (:meth:`RobustWrapper.scores`: the log of its mean vote
    probability; a :class:`robustwrap.defense.BareClassifier`'s are its logits)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.wrapper.scores(x, noise=self.noise(x))


class DeviationLogits(NoisyView):
    """:class:`DefenseLogits` plus DiffAttack's deviated-reconstruction term (:mod:`.deviation`).

    ``forward`` returns ``(scores, bonus)``: the (B, K) log mean vote probabilities and the (B,)
    ``weight * deviation`` that :func:`robustwrap.attacks.pgd.eot_gradient` adds to each image's loss.
    """

    def __init__(self, wrapper: RobustWrapper, weight: float, generator: torch.Generator | None = None,
                 seeds: Tensor | None = None) -> None:
        super().__init__(wrapper, generator, seeds)
        self.weight = weight

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, dev = logits_and_deviation(self.wrapper, x, self.noise(x))
        return log_mean_probability(logits), self.weight * dev


class BPDALogits(NoisyView):
    """BPDA: purify without gradient, backward as identity through the purifier.

    Forward equals the defense (S votes); backward is the classifier's gradient at the
    purified images, passed straight to the input.
    """

    def forward(self, x: Tensor) -> Tensor:
        votes = self.wrapper.config.votes
        with torch.no_grad():
            purified = self.wrapper.purify_and_classify(x, noise=self.noise(x))[0]  # (S, B, C, H, W)
        straight_through = x.unsqueeze(0) + (purified - x.unsqueeze(0)).detach()
        logits = self.wrapper.classify(straight_through.flatten(0, 1))
        return log_mean_probability(logits.view(votes, x.shape[0], -1))


@dataclass(frozen=True)
class MaskAwareOptions(AttackOptions):
    """The options of ``--attack mask-aware``."""

    mask_temperature: float = setting(0.05, gt=0, help="mask-aware: temperature of the sigmoid that relaxes the "
                                      "mask's hard cut (smaller: closer to the cut)")

    def describe(self) -> str:
        return f"mask temperature {self.mask_temperature:g}"


class MaskAwareLogits(NoisyView):
    """The defense with a differentiable mask: the gradient also flows through mask building.

    The mask is :func:`robustwrap.mask.soft_mask` of the wrapper's (differentiable)
    :meth:`~RobustWrapper.attention`: the hard cut becomes a sigmoid of the given
    temperature, so the attack can move the attention away from its perturbation.
    One purification per call (use EOT).
    """

    def __init__(self, wrapper: RobustWrapper, temperature: float = 0.05, generator: torch.Generator | None = None,
                 seeds: Tensor | None = None) -> None:
        super().__init__(wrapper, generator, seeds)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def soft_mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) mask in (0, 1), differentiable w.r.t. ``x`` (all ones in uniform mode)."""
        cfg = self.wrapper.config
        if cfg.mode == "uniform":
            return x.new_ones(x.shape[0], 1, *self.wrapper.diffusion_size_for(x))
        return soft_mask(self.wrapper.attention(x), cfg.mask_rule, cfg.tau, cfg.top_fraction, self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        purified = self.wrapper.purify(x, mask=self.soft_mask(x), noise=self.noise(x))
        return self.wrapper.classify(purified).log_softmax(dim=1)
