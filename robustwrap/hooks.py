"""Stage modules of a classifier, the last activation executed in each, and capture by hooks.

Layouts recognised (stage containers, in order): torchvision / timm ResNets and wide ResNets
(``layer1..layerN``), the RobustBench WideResNet-28-10 layout (``block1..block3`` + the final
``relu``), the DeepMind-style WideResNet-70-16 layout (``layer.0..layer.N`` + ``relu``) and
timm's ``feature_info`` (stages at stride >= 4). The mask reads each stage's *last activation*
(docs/algorithm.md, "Mask"): :func:`last_activations` finds it by running the model once and
recording the order in which activation modules execute. Hooks are registered only for the
length of one capture (:meth:`HookedStages.attached`), so nothing stays on the user's model.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

_HOW_TO_OVERRIDE = (
    "pass the names of the modules whose outputs are the stage maps, e.g. "
    "RobustWrapper(model, diffusion, stages=['layer1', 'layer2', 'layer3']); "
    "`[name for name, _ in model.named_modules()]` lists the candidates"
)
_NOT_ACTIVATIONS = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention"}


def _resnet_layers(model: nn.Module) -> list[str] | None:
    names = []
    while isinstance(getattr(model, f"layer{len(names) + 1}", None), nn.Module):
        names.append(f"layer{len(names) + 1}")
    return names or None


def _robustbench_wrn(model: nn.Module) -> list[str] | None:
    blocks = [f"block{i}" for i in (1, 2, 3)]
    if all(isinstance(getattr(model, b, None), nn.Module) for b in blocks) and isinstance(
        getattr(model, "relu", None), nn.Module
    ):
        return [*blocks, "relu"]
    return None


def _deepmind_wrn(model: nn.Module) -> list[str] | None:
    groups = getattr(model, "layer", None)
    if not isinstance(groups, nn.Sequential) or not isinstance(getattr(model, "relu", None), nn.Module):
        return None
    if not all(isinstance(getattr(group, "block", None), nn.Sequential) for group in groups):
        return None
    return [*(f"layer.{index}" for index in range(len(groups))), "relu"] if len(groups) else None


def _timm_feature_info(model: nn.Module) -> list[str] | None:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    # Stages at stride >= 4: the stem (stride 2) is not a stage of the network body.
    names = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("reduction", 4) >= 4]
    return names or None


_LAYOUTS = (_resnet_layers, _robustbench_wrn, _deepmind_wrn, _timm_feature_info)


def infer_stage_modules(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the modules that make up each stage.

    Looks at the model itself, then at each direct child (a model wrapped with its
    normalisation, say), and returns prefixed names from the first layout that matches.

    Raises:
        ValueError: no known layout; the message says how to pass the names.
    """
    candidates = [("", model)] + [(f"{name}.", child) for name, child in model.named_children()]
    for prefix, module in candidates:
        for layout in _LAYOUTS:
            names = layout(module)
            if names:
                return [prefix + name for name in names]
    raise ValueError(f"cannot infer the stages of {type(model).__name__}: {_HOW_TO_OVERRIDE}")


def is_activation(module: nn.Module) -> bool:
    """True for element-wise activation modules (torch's ReLU, GELU, SiLU, ... and timm's)."""
    cls = type(module)
    return cls.__name__ not in _NOT_ACTIVATIONS and (
        cls.__module__ == "torch.nn.modules.activation" or cls.__module__.startswith("timm.layers.activations")
    )


def last_activations(model: nn.Module, stages: Sequence[str], probe: Tensor) -> list[str]:
    """For each stage module, the activation module that executes last inside it.

    Runs ``model(probe)`` once (without gradient) with hooks on every activation module and
    keeps, per stage, the one whose (last) call comes last. A module called several times
    (torchvision's shared ``Bottleneck.relu``) counts by its last call, which is then the
    output read at capture. A stage that is itself an activation, or contains none, is
    read at its own output.

    Args:
        stages: names of the stage modules (:func:`infer_stage_modules`).
        probe: (1, C, H, W) input the model accepts (its values do not matter).

    Returns:
        One module name per stage.
    """
    modules = dict(model.named_modules())
    order: dict[str, int] = {}  # module name -> rank of its latest call
    calls = itertools.count()

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            order[name] = next(calls)

        return hook

    inside_a_stage = [
        name for name, module in modules.items()
        if is_activation(module) and any(name == s or name.startswith(s + ".") for s in stages)
    ]
    handles = [modules[name].register_forward_hook(record(name)) for name in inside_a_stage]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    chosen = []
    for stage in stages:
        inside = [(rank, name) for name, rank in order.items() if name == stage or name.startswith(stage + ".")]
        chosen.append(max(inside)[1] if inside else stage)
    return chosen


class HookedStages:
    """Stage maps read by forward hooks on named modules, attached only while capturing.

    Args:
        names: module names from ``model.named_modules()``, in stage order. A module that
            runs several times in one forward pass is read at its last call.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError(f"need at least one stage module name: {_HOW_TO_OVERRIDE}")
        self.names = tuple(names)
        self._captured: dict[str, Tensor] = {}
        self._attached_to: nn.Module | None = None
        # One fixed hook object per name (no recompiles under torch.compile); partials of a method
        # so that the source deep-copies and pickles with the wrapper.
        self._hooks = {name: functools.partial(HookedStages._record, self, name) for name in self.names}

    def _record(self, name: str, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self._captured[name] = output

    def check(self, model: nn.Module) -> dict[str, nn.Module]:
        """The named stage modules of ``model``; ValueError naming those it lacks."""
        modules = dict(model.named_modules())
        unknown = [name for name in self.names if name not in modules]
        if unknown:
            raise ValueError(f"{type(model).__name__} has no module named {unknown}: {_HOW_TO_OVERRIDE}")
        return {name: modules[name] for name in self.names}

    def describe(self) -> list[str]:
        """One line per stage: the module read."""
        return [f"hook on {name}" for name in self.names]

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Keep the hooks on ``model`` for the ``with`` block (re-entrant); removed on exit.

        Compiled or exported callers enter it around the traced call, so that the hooks are
        registered outside the graph.
        """
        if self._attached_to is model:
            yield
            return
        handles = [module.register_forward_hook(self._hooks[name]) for name, module in self.check(model).items()]
        self._attached_to = model
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._attached_to = None
            self._captured.clear()

    def capture(self, model: nn.Module, x: Tensor) -> list[Tensor]:
        """Run ``model(x)`` and return the stage maps in order (differentiable if grad is on)."""
        return self.logits_and_maps(model, x)[1]

    def logits_and_maps(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``model(x)`` and the stage maps, from one forward pass."""
        if self._attached_to is model:
            return self._run(model, x)
        with self.attached(model):
            return self._run(model, x)

    def _run(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        output = model(x)
        missing = [name for name in self.names if name not in self._captured]
        if missing:
            self._captured.clear()
            raise RuntimeError(f"stage modules {missing} did not run in the forward pass")
        maps = [self._captured[name] for name in self.names]
        self._captured.clear()
        return output, maps
