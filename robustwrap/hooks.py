"""Which modules of a classifier end its stages, and forward hooks that capture their outputs.

Inference covers torchvision / timm ResNets and wide ResNets (``layer1..layerN``), the
RobustBench WideResNet-28-10 layout (``block1..block3`` + final ``relu``), the DeepMind-style
WideResNet-70-16 layout (``layer[i].block[-1]`` + final ``relu``) and any timm model with
``feature_info``. Anything else takes an explicit list of module names.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

_HOW_TO_OVERRIDE = (
    "pass the names of the modules whose outputs end each stage, e.g. "
    "RobustWrapper(model, diffusion, blocks=['layer1', 'layer2', 'layer3']); "
    "`[name for name, _ in model.named_modules()]` lists the candidates"
)


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
    names = []
    for index, group in enumerate(groups):
        inner = getattr(group, "block", None)
        if not isinstance(inner, nn.Sequential) or len(inner) == 0:
            return None
        names.append(f"layer.{index}.block.{len(inner) - 1}")
    return [*names, "relu"] if names else None


def _timm_feature_info(model: nn.Module) -> list[str] | None:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    # Stages at stride >= 4: the stem (stride 2) is not a stage of the network body.
    names = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("reduction", 4) >= 4]
    return names or None


_LAYOUTS = (_resnet_layers, _robustbench_wrn, _deepmind_wrn, _timm_feature_info)


def infer_stage_modules(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the modules whose outputs end each stage.

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


class StageHooks:
    """Forward hooks on named modules, registered once; outputs are read and cleared per call.

    Args:
        model: the classifier.
        names: module names from ``model.named_modules()``, in stage order.

    :meth:`capture` runs the model with capturing on and returns the stage outputs (other
    passes through the model store nothing); :meth:`remove` (or ``with StageHooks(...)``)
    takes the hooks off the model.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        if not names:
            raise ValueError(f"need at least one stage module name: {_HOW_TO_OVERRIDE}")
        modules = dict(model.named_modules())
        unknown = [name for name in names if name not in modules]
        if unknown:
            raise ValueError(f"{type(model).__name__} has no module named {unknown}: {_HOW_TO_OVERRIDE}")
        self.names = tuple(names)
        self.capturing = True
        self._captured: dict[str, Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._capture_as(name)) for name in self.names]

    def _capture_as(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if self.capturing:
                self._captured[name] = output

        return hook

    def capture(self, model: nn.Module, x: Tensor) -> list[Tensor]:
        """Run ``model(x)`` and return its stage outputs in order; only this pass is captured."""
        self.capturing = True
        try:
            model(x)
            return self.pop()
        finally:
            self.capturing = False

    def pop(self) -> list[Tensor]:
        """The captured outputs in stage order; the store is empty afterwards."""
        missing = [name for name in self.names if name not in self._captured]
        if missing:
            self._captured.clear()
            raise RuntimeError(f"stage modules {missing} did not run in the last forward pass")
        outputs = [self._captured[name] for name in self.names]
        self._captured.clear()
        return outputs

    def clear(self) -> None:
        """Drop whatever the last forward pass captured."""
        self._captured.clear()

    def remove(self) -> None:
        """Take the hooks off the model (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured.clear()

    def __enter__(self) -> "StageHooks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
