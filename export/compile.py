"""`torch.compile` for a defended model: one graph, hooks and in-graph noise included."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustwrap.vote import vote_labels
from robustwrap.wrapper import RobustWrapper


class CompiledWrapper(nn.Module):
    """A :class:`RobustWrapper` whose pipeline runs as one compiled graph.

    Inputs are validated eagerly (outside the graph) exactly as the wrapper does, then the
    compiled pipeline runs. Noise is in-graph or explicit ((K, S, B, C, Hd, Wd), as for the
    wrapper); generators are not supported under compilation.

    Args:
        wrapper: the eager defense; shared, not copied.
        **compile_options: passed to ``torch.compile`` (``fullgraph=True`` by default).
    """

    def __init__(self, wrapper: RobustWrapper, **compile_options: Any) -> None:
        super().__init__()
        self.wrapper = wrapper
        options = {"fullgraph": True, **compile_options}
        self._pipeline = torch.compile(self._probabilities, **options)

    def _probabilities(self, x: Tensor, noise: Tensor | None) -> Tensor:
        return self.wrapper.vote_probabilities(x, noise=noise)

    def vote_probabilities(self, x: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """(S, B, K) class probabilities of each purification."""
        x = self.wrapper.validate(x, noise=noise)
        with self.wrapper.stages.attached(self.wrapper.classifier):  # any hooks go on outside the graph
            return self._pipeline(x, noise)

    def forward(self, x: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """(B, K) mean class probabilities over the votes, as ``RobustWrapper.forward``."""
        return self.vote_probabilities(x, noise=noise).mean(dim=0)

    @torch.no_grad()
    def predict(self, x: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """(B,) labels by the configured vote rule."""
        return vote_labels(self.vote_probabilities(x, noise=noise), self.wrapper.config.vote)


def compile_wrapper(wrapper: RobustWrapper, **compile_options: Any) -> CompiledWrapper:
    """``torch.compile`` the defense (``fullgraph=True``: a graph break is an error)."""
    return CompiledWrapper(wrapper, **compile_options)


def graph_breaks(wrapper: RobustWrapper, x: Tensor, noise: Tensor | None = None) -> list[str]:
    """Reasons dynamo would break the wrapper's graph on input ``x`` (empty = one graph)."""
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

    The classifier (with its stage maps, as :class:`robustwrap.export.bundle.ClassifierWithStages`:
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
    from .bundle import ClassifierWithStages

    parameter = next(wrapper.eps_model.parameters(), None)
    if mode == "reduce-overhead" and (parameter is None or parameter.device.type != "cuda"):
        raise ValueError("mode='reduce-overhead' uses CUDA graphs: move the wrapper to a CUDA device first")
    options = {"fullgraph": True, "mode": mode, "dynamic": dynamic, **compile_options}
    view = wrapper.with_config(wrapper.config)
    view.classifier = _CompiledClassifier(ClassifierWithStages(wrapper), options)
    view.eps_model = torch.compile(wrapper.eps_model, **options)
    view.normalize = nn.Identity()  # the normalisation is inside the compiled classifier
    from robustwrap.stages import OwnStageMaps

    view.stages = OwnStageMaps()
    return view


class _CompiledClassifier(nn.Module):
    """``forward(x) -> logits`` and ``stage_maps(x)`` from one compiled (logits, *maps) graph."""

    def __init__(self, combined: nn.Module, options: dict) -> None:
        super().__init__()
        self.combined = combined
        self.in_channels = next((m.in_channels for m in combined.classifier.modules() if isinstance(m, nn.Conv2d)), None)
        self._run = torch.compile(combined, **options)

    def _outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        with self.combined.attached():  # hooks go on outside the graph
            return self._run(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._outputs(x)[0]

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        return list(self._outputs(x)[1:])
