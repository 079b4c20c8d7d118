"""`torch.compile` for a defended model: the networks, not the loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustwrap.noise import Noise
from robustwrap.stages import OwnStageMaps
from robustwrap.wrapper import RobustWrapper

from .engines import PrecisionArg, per_network
from .format import CLASSIFIER, DENOISER
from .modules import AtPrecision, ClassifierWithStages

COMPILE_PRECISIONS = ("fp32", "bf16")


def graph_breaks(wrapper: RobustWrapper, x: Tensor, noise: Noise | None = None) -> list[str]:
    """Reasons dynamo would break the wrapper's whole pipeline on input ``x`` (empty = one graph), with ``noise``
    (None: fresh draws; ``Noise.given`` as the exported unrolled graph takes it).

    A pipeline without breaks also exports as one unrolled ONNX graph
    (``export_bundle(..., unrolled=True)``).
    """
    if noise is not None and noise.kind != "given":
        raise ValueError(f"graph_breaks traces fresh noise (None) or Noise.given, got {noise.kind} noise")
    draws = None if noise is None else noise.tensor
    with wrapper.stages.attached(wrapper.classifier):
        explanation = torch._dynamo.explain(
            lambda images, n: wrapper.vote_probabilities(images, noise=None if n is None else Noise.given(n)))(x, draws)
    return [str(reason.reason) for reason in explanation.break_reasons]


def compile_networks(
    wrapper: RobustWrapper,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    precision: PrecisionArg = None,
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
        precision: None or "fp32" (the eager function, to float rounding), "bf16" (convolutions and
            matrix products under bf16 autocast, :class:`~robustwrap.export.modules.AtPrecision`:
            about 2x eager on AVX-512 bf16 CPUs, see benchmarks/RESULTS.md), or one per network
            (``{"classifier": "fp32", "denoiser": "bf16"}``: the mask keeps fp32). A reduced precision
            changes the defense's function: export the bundle with ``aoti=("bf16",)`` and
            ``robustwrap verify`` it before deploying.
        **compile_options: more ``torch.compile`` options (``fullgraph=True`` by default).

    Returns:
        A :class:`RobustWrapper` view (same configuration, sizes, checks) that runs the compiled
        networks; differentiable like the eager wrapper.

    Raises:
        ValueError: ``mode="reduce-overhead"`` with networks on the CPU, an unknown precision.
    """
    precisions = per_network(precision or "fp32", COMPILE_PRECISIONS, "compile_networks")
    parameter = next(wrapper.eps_model.parameters(), None)
    if mode == "reduce-overhead" and (parameter is None or parameter.device.type != "cuda"):
        raise ValueError("mode='reduce-overhead' uses CUDA graphs: move the wrapper to a CUDA device first")
    options = {"fullgraph": True, "mode": mode, "dynamic": dynamic, **compile_options}
    view = wrapper.with_config(wrapper.config)
    view.classifier = CompiledClassifier(wrapper, options, precisions[CLASSIFIER])
    eps_model = wrapper.eps_model if precisions[DENOISER] == "fp32" else AtPrecision(wrapper.eps_model, precisions[DENOISER])
    view.eps_model = torch.compile(eps_model, **options)
    view.normalize = nn.Identity()  # the normalisation is inside the compiled classifier
    view.stages = OwnStageMaps()
    return view


class CompiledClassifier(nn.Module):
    """``forward(x) -> logits`` and ``stage_maps(x)`` from one compiled (logits, *maps) graph.

    Args:
        wrapper: the eager defense whose classifier, normalisation and stage source are compiled.
        options: ``torch.compile`` options.
        precision: "fp32", or a reduced precision the graph runs under (:class:`AtPrecision`).
    """

    def __init__(self, wrapper: RobustWrapper, options: dict, precision: str = "fp32") -> None:
        super().__init__()
        self.combined = ClassifierWithStages(wrapper)
        self.in_channels = wrapper.channels
        self._run = torch.compile(self.combined if precision == "fp32" else AtPrecision(self.combined, precision),
                                  **options)

    def _outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        with self.combined.stages.attached(self.combined.classifier):  # hooks go on outside the graph
            return self._run(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._outputs(x)[0]

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        return list(self._outputs(x)[1:])
