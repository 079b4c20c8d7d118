"""`torch.compile` for a defended model: the networks, not the loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustwrap.stages import OwnStageMaps
from robustwrap.wrapper import RobustWrapper

from .modules import ClassifierWithStages


def graph_breaks(wrapper: RobustWrapper, x: Tensor, noise: Tensor | None = None) -> list[str]:
    """Reasons dynamo would break the wrapper's whole pipeline on input ``x`` (empty = one graph).

    A pipeline without breaks also exports as one unrolled ONNX graph
    (``export_bundle(..., unrolled=True)``).
    """
    with wrapper.stages.attached(wrapper.classifier):
        explanation = torch._dynamo.explain(lambda images, n: wrapper.vote_probabilities(images, noise=n))(x, noise)
    return [str(reason.reason) for reason in explanation.break_reasons]


def compile_networks(
    wrapper: RobustWrapper,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    **compile_options: Any,
) -> RobustWrapper:
    """The same defense with its two networks compiled, not its loop.

    The classifier (with its stage maps, as :class:`robustwrap.export.modules.ClassifierWithStages`:
    one graph returning logits and maps) and the epsilon model are each ``torch.compile``\\ d
    once; the DDIM loop, the noise and the mask stay eager. Cold compile time therefore does
    not grow with the number of denoiser calls. A new batch size (B * S rows for the denoiser)
    recompiles once unless ``dynamic=True``.

    Args:
        wrapper: the eager defense; its networks are shared, not copied.
        mode: ``torch.compile`` mode; ``"reduce-overhead"`` (CUDA graphs) needs the networks
            on a CUDA device.
        dynamic: passed to ``torch.compile``.
        **compile_options: more ``torch.compile`` options (``fullgraph=True`` by default).

    Returns:
        A :class:`RobustWrapper` view (same configuration, sizes, checks) that runs the compiled
        networks; differentiable like the eager wrapper.

    Raises:
        ValueError: ``mode="reduce-overhead"`` with networks on the CPU.
    """
    parameter = next(wrapper.eps_model.parameters(), None)
    if mode == "reduce-overhead" and (parameter is None or parameter.device.type != "cuda"):
        raise ValueError("mode='reduce-overhead' uses CUDA graphs: move the wrapper to a CUDA device first")
    options = {"fullgraph": True, "mode": mode, "dynamic": dynamic, **compile_options}
    view = wrapper.with_config(wrapper.config)
    view.classifier = CompiledClassifier(wrapper, options)
    view.eps_model = torch.compile(wrapper.eps_model, **options)
    view.normalize = nn.Identity()  # the normalisation is inside the compiled classifier
    view.stages = OwnStageMaps()
    return view


class CompiledClassifier(nn.Module):
    """``forward(x) -> logits`` and ``stage_maps(x)`` from one compiled (logits, *maps) graph.

    Args:
        wrapper: the eager defense whose classifier, normalisation and stage source are compiled.
        options: ``torch.compile`` options.
    """

    def __init__(self, wrapper: RobustWrapper, options: dict) -> None:
        super().__init__()
        self.combined = ClassifierWithStages(wrapper)
        self.in_channels = wrapper.channels
        self._run = torch.compile(self.combined, **options)

    def _outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        with self.combined.stages.attached(self.combined.classifier):  # hooks go on outside the graph
            return self._run(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._outputs(x)[0]

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        return list(self._outputs(x)[1:])
