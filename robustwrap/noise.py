"""Where the sampler's Gaussian noise comes from: in-graph, a seeded generator, or given tensors.

A :class:`NoiseSource` is made per call and hands out draws in the fixed order of the
sampling plan, so the same source (same seed or same tensors) gives the same purification
in eager mode, under ``torch.compile`` and in an exported graph.
"""

from __future__ import annotations

import torch
from torch import Tensor


class NoiseSource:
    """Hands out standard-normal tensors shaped like the sampler's state, one per draw.

    Args:
        generator: draw with ``torch.randn(..., generator=generator)`` (reproducible from a seed;
            the generator must live on the images' device).
        explicit: a tensor of shape (D, N, C, H, W) whose D slices are returned in order;
            D must equal the plan's ``noise_draws`` and N the batch the sampler runs on.
        With neither, draws use ``torch.randn_like`` (exports to ONNX ``RandomNormalLike``).
    """

    def __init__(self, generator: torch.Generator | None = None, explicit: Tensor | None = None) -> None:
        if generator is not None and explicit is not None:
            raise ValueError("pass either a generator or explicit noise, not both")
        self._generator = generator
        self._explicit = explicit
        self.drawn = 0

    def __call__(self, like: Tensor) -> Tensor:
        """A standard-normal tensor with ``like``'s shape, dtype and device."""
        index = self.drawn
        self.drawn += 1
        if self._explicit is not None:
            return self._explicit[index].to(like)
        if self._generator is not None:
            return torch.randn(like.shape, generator=self._generator, device=self._generator.device).to(like)
        return torch.randn_like(like)
