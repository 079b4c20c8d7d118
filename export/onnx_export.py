"""The one ONNX exporter: a module with a dynamic batch axis to a checked, stripped ``.onnx`` file.

Every graph a bundle holds (denoiser, classifier, unrolled loop) is written here, into the
bundle's temporary folder (the bundle is renamed into place only after every file is written,
so a failure leaves nothing behind). Exporter metadata (stack traces with source paths) and doc
strings are stripped and shared initializers stored once; weights above a threshold go to
``<file>.data`` named after the final file (a relative location), so the folder can move.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .format import BATCH, FORMAT, FORMAT_VERSION, TensorSpec
from .optional import require

METADATA_KEY = "robustwrap"
# A protobuf message cannot exceed 2 GiB: weights above this many bytes go to <file>.data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_ONNX_DTYPES = {1: "float32", 7: "int64"}  # onnx.TensorProto element types a bundle uses


@dataclass(frozen=True)
class GraphFile:
    """What :func:`export_graph` wrote: the graph's tensors, node count and bytes on disk."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    nodes: int
    bytes: int


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    component: str,
    opset: int = 20,
    max_batch: int = 4096,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> GraphFile:
    """Export ``module(*args)`` to ``path`` with axis 0 of every input as one dynamic batch axis.

    Args:
        module: traced by the dynamo exporter under ``torch.no_grad``; hooks it needs must be
            registered before the call (outside the traced region).
        args: example inputs, batch-first, with a batch of at least 2 (size-1 axes specialise).
        path: the file to write (its folder must exist: the bundle's temporary folder).
        component: the component's name, recorded in the graph's only metadata entry.
        opset: 18 to 23 (TensorRT 10 reads up to 20).
        max_batch: the largest batch the graph declares.
        external_data_threshold: weights above this many bytes go to ``<file>.data``.

    Raises:
        RuntimeError: the module does not trace (the first line of the exporter's message).
        ValueError: a bad opset.
        ImportError: the ``export`` extra is missing.
    """
    onnx = require("onnx", "export")
    require("onnxscript", "export")
    import onnx_ir

    if not 18 <= opset <= 23:
        raise ValueError(f"the dynamo exporter writes opsets 18 to 23, got {opset}")
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")  # inputs share it
            program = torch.onnx.export(module, args, dynamo=True, input_names=list(input_names),
                                        output_names=list(output_names),
                                        dynamic_shapes=tuple({0: batch} for _ in args),
                                        opset_version=opset, optimize=True, verbose=False)
    except Exception as error:  # torch.export / the ONNX translator: many error types, one meaning
        text = str(error).strip()
        raise RuntimeError(
            f"torch.onnx.export could not capture the {component} ({type(error).__name__}: "
            f"{text.splitlines()[0][:300] if text else ''}); it must trace without data-dependent Python control "
            "flow (robustwrap.export.graph_breaks shows where tracing stops)"
        ) from error
    model = program.model
    _strip(model)
    model.metadata_props[METADATA_KEY] = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                     "component": component})
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data_name = f"{path.name}.data" if weights > external_data_threshold else None
    onnx_ir.save(model, path, external_data=data_name)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    size = path.stat().st_size + ((path.parent / data_name).stat().st_size if data_name else 0)
    return GraphFile(path, _tensors(proto.graph.input), _tensors(proto.graph.output), len(proto.graph.node), size)


def _strip(model) -> None:
    """Exporter metadata and doc strings out; shared initializers stored once."""
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass, DeduplicateInitializersPass

    ClearMetadataAndDocStringPass()(model)
    DeduplicateInitializersPass()(model)
    model.metadata_props.clear()
    model.doc_string = None
    model.graph.doc_string = None


def _tensors(values) -> tuple[TensorSpec, ...]:
    """The graph's inputs or outputs as specs (batch axis named ``N``)."""
    specs = []
    for value in values:
        kind = value.type.tensor_type
        if kind.elem_type not in _ONNX_DTYPES:
            raise RuntimeError(f"graph tensor {value.name} has ONNX element type {kind.elem_type}: a bundle carries "
                               f"only {sorted(_ONNX_DTYPES.values())}")
        dims = [d.dim_value for d in kind.shape.dim]
        specs.append(TensorSpec(value.name, (BATCH, *dims[1:]), _ONNX_DTYPES[kind.elem_type]))
    return tuple(specs)


def graph_files(path: str | Path) -> list[Path]:
    """The files a graph needs: itself and the external data files it names (for copies)."""
    onnx = require("onnx", "export")
    graph = Path(path)
    model = onnx.load(str(graph), load_external_data=False)
    locations: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            if entry.get("location") and entry["location"] not in locations:
                locations.append(entry["location"])
    return [graph] + [graph.parent / location for location in locations]
