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
