"""Where a classifier's stage maps come from: the one seam the attention mask is built on.

A stage source is chosen once, when the wrapper is built (:func:`infer_stage_source`):

- :class:`TimmIntermediates` — timm models with ``forward_intermediates`` (ViT, DeiT, BEiT,
  Swin, ConvNeXt, ResNet, EfficientNet, ...): timm returns each stage's output as a
  (B, C, H, W) map, prefix tokens dropped and tokens reshaped to their grid. No hooks.
- :class:`~robustwrap.hooks.HookedStages` — torchvision, RobustBench and DeepMind layouts,
  and explicit module names: forward hooks attached only for the length of one capture.
- :class:`OwnStageMaps` — a classifier that computes its stage maps itself
  (``classifier.stage_maps(x) -> list[Tensor]``), e.g. an engine-backed adapter.

Every source has ``capture(model, x) -> list[Tensor]`` (each (B, C_m, H_m, W_m), differentiable
when grad is enabled), ``logits_and_maps(model, x) -> (model(x), maps)`` (one forward pass where
the source allows it: what the exported and compiled classifiers run), ``attached(model)`` (a context for compiled / exported callers) and
``describe() -> list[str]``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from .hooks import HookedStages, infer_stage_modules, last_activations

logger = logging.getLogger(__name__)

MAX_TIMM_STAGES = 4  # transformers list every block: the mask reads four, evenly spaced, the last included


@runtime_checkable
class StageSource(Protocol):
    """What the wrapper needs from a stage source."""

    def capture(self, model: nn.Module, x: Tensor) -> list[Tensor]: ...

    def logits_and_maps(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]: ...

    def attached(self, model: nn.Module) -> contextlib.AbstractContextManager: ...

    def describe(self) -> list[str]: ...


class TimmIntermediates:
    """Stage maps from timm's ``forward_intermediates`` at the given feature indices.

    Args:
        indices: positions in the model's ``feature_info`` (as ``forward_intermediates`` counts).
        names: the ``feature_info`` module names of those positions (for reports only).
    """

    def __init__(self, indices: Sequence[int], names: Sequence[str] = ()) -> None:
        if not indices:
            raise ValueError("need at least one feature index")
        self.indices = [int(i) for i in indices]
        self.names = tuple(names)

    @classmethod
    def default_for(cls, model: nn.Module) -> "TimmIntermediates":
        """The stages at stride >= 4 of ``model.feature_info``; at most four, evenly spaced."""
        info = list(model.feature_info)
        body = [i for i, entry in enumerate(info) if entry.get("reduction", 4) >= 4] or list(range(len(info)))
        if len(body) > MAX_TIMM_STAGES:
            body = [body[round((k + 1) * len(body) / MAX_TIMM_STAGES) - 1] for k in range(MAX_TIMM_STAGES)]
        return cls(body, [info[i].get("module", str(i)) for i in body])

    def capture(self, model: nn.Module, x: Tensor) -> list[Tensor]:
        maps = model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return list(maps)

    def logits_and_maps(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The classifier's output ``model(x)`` and :meth:`capture`'s maps from one forward pass
        (timm's ``forward_head`` on the final features ``forward_intermediates`` returns)."""
        final, maps = model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=False)
        return model.forward_head(final), list(maps)

    def attached(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def describe(self) -> list[str]:
        names = self.names or [str(i) for i in self.indices]
        return [f"forward_intermediates index {i} ({name})" for i, name in zip(self.indices, names)]


class OwnStageMaps:
    """The classifier's own ``stage_maps(x) -> list[Tensor]`` (engine-backed classifiers)."""

    def capture(self, model: nn.Module, x: Tensor) -> list[Tensor]:
        return list(model.stage_maps(x))

    def logits_and_maps(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``model(x)`` and ``model.stage_maps(x)`` (two calls: such a classifier is never exported)."""
        return model(x), self.capture(model, x)

    def attached(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def describe(self) -> list[str]:
        return ["classifier.stage_maps(x)"]


def _probe(model: nn.Module, size: tuple[int, int] | None) -> Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    return torch.zeros(1, channels, *(size or (32, 32)), device=device, dtype=dtype)


def infer_stage_source(
    classifier: nn.Module,
    stages: Sequence[str] | Sequence[int] | StageSource | None = None,
    probe_size: tuple[int, int] | None = None,
) -> StageSource:
    """The stage source for ``classifier``, decided once.

    Args:
        stages: None (infer), module names (hooked as named), ``forward_intermediates``
            indices (timm models), or a ready source.
        probe_size: (H, W) of a dummy input used once to find each inferred stage's last
            activation (default 32 x 32; the probe runs without gradient).

    Raises:
        ValueError: nothing to infer from, or a named module does not exist; the message
            says what to pass.
    """
    if isinstance(stages, StageSource):
        return stages
    if stages is not None:
        stages = list(stages)
        if stages and all(isinstance(s, int) for s in stages):
            if not hasattr(classifier, "forward_intermediates"):
                raise ValueError(f"{type(classifier).__name__} has no forward_intermediates: pass module names instead")
            return TimmIntermediates(stages)
        source = HookedStages([str(s) for s in stages])
        source.check(classifier)
        return source
    if callable(getattr(classifier, "stage_maps", None)):
        return OwnStageMaps()
    if callable(getattr(classifier, "forward_intermediates", None)) and getattr(classifier, "feature_info", None):
        return TimmIntermediates.default_for(classifier)
    containers = infer_stage_modules(classifier)
    try:
        names = last_activations(classifier, containers, _probe(classifier, probe_size))
    except Exception as error:  # a model the probe cannot run: read the stage outputs instead
        logger.warning("could not probe %s for its last activations (%s); reading stage outputs %s",
                       type(classifier).__name__, error, containers)
        names = containers
    return HookedStages(names)
