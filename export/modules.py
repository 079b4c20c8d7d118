"""The modules that leave Python: the classifier with its stage maps, and the whole loop unrolled."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustwrap.cpus import warn_if_emulated
from robustwrap.noise import Noise
from robustwrap.vote import vote_labels
from robustwrap.wrapper import RobustWrapper


class ClassifierWithStages(nn.Module):
    """``images in [0, 1] -> (logits, *stage maps)``: the wrapper's normalisation, then one
    classifier forward pass read by the wrapper's stage source (``logits_and_maps``).

    Hooked stage sources need their hooks registered outside a traced region: enter
    ``wrapper.stages.attached(wrapper.classifier)`` around tracing or compiling.

    Args:
        wrapper: the eager defense whose ``classifier``, ``normalize`` and ``stages`` are used (shared).
    """

    def __init__(self, wrapper: RobustWrapper) -> None:
        super().__init__()
        self.classifier = wrapper.classifier
        self.normalize = wrapper.normalize
        self.stages = wrapper.stages

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        logits, maps = self.stages.logits_and_maps(self.classifier, self.normalize(images))
        return (logits, *maps)


REDUCED_DTYPES = {"bf16": torch.bfloat16}  # the reduced precisions the torch paths run (CPU AVX-512 bf16 / AMX, GPUs)


class AtPrecision(nn.Module):
    """``module(*inputs)`` under torch autocast at a reduced precision; floating outputs back in float32.

    Convolutions and matrix products run in ``precision``; what autocast keeps in float32 stays
    there (the timestep embedding's sin / cos, normalisations, softmax), and the inputs the caller
    passes (images, timesteps) enter in float32. The weights are shared, not copied. Used by
    ``compile_networks(precision=)`` and the bundle's reduced-precision AOTInductor packages, so both
    run one definition of "bf16".

    Args:
        module: the network; its inputs and outputs are tensors (or a tuple of tensors).
        precision: a name of :data:`REDUCED_DTYPES` ("bf16").
    """

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        if precision not in REDUCED_DTYPES:
            raise ValueError(f"precision must be one of {list(REDUCED_DTYPES)}, got {precision!r}")
        warn_if_emulated(precision, next(module.parameters(), torch.empty(0)).device.type)
        self.module = module
        self.precision = precision

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        with torch.autocast(inputs[0].device.type, dtype=REDUCED_DTYPES[self.precision]):
            outputs = self.module(*inputs)
        if isinstance(outputs, Tensor):
            return outputs.float() if outputs.is_floating_point() else outputs
        return tuple(o.float() if o.is_floating_point() else o for o in outputs)


class UnrolledDefense(nn.Module):
    """The defended model with its configuration fixed, every denoiser call unrolled, batch first.

    Inputs:
        images: (B, C, H, W) float32 in [0, 1].
        noise: only when ``explicit_noise``: (B, D, S, C, Hd, Wd) standard normal, where
            D = ``wrapper.plan.noise_draws`` and S = ``wrapper.config.votes``.

    Outputs:
        probabilities: (B, K) mean class probability over the S votes.
        labels: (B,) int64 labels by the configured vote rule.
    """

    def __init__(self, wrapper: RobustWrapper, explicit_noise: bool = False) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.explicit_noise = explicit_noise

    @property
    def input_names(self) -> list[str]:
        return ["images", "noise"] if self.explicit_noise else ["images"]

    output_names = ["probabilities", "labels"]

    def forward(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        probs = self.wrapper.vote_probabilities(images, noise=None if noise is None else Noise.given(noise))
        return probs.mean(dim=0), vote_labels(probs, self.wrapper.config.vote)
