"""Export a :class:`RobustWrapper` to ONNX with the dynamo exporter, check it, write it atomically."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from robustwrap.wrapper import RobustWrapper

from ._optional import require
from .graph import ExportGraph

logger = logging.getLogger(__name__)

NoiseMode = Literal["in_graph", "explicit"]
METADATA_KEY = "robustwrap"


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    bytes: int
    nodes: int
    opset: int
    op_types: tuple[str, ...]
    noise: NoiseMode
    metadata: dict


def wrapper_metadata(wrapper: RobustWrapper, noise: NoiseMode, with_purified: bool) -> dict:
    """The configuration a deployed graph carries, as JSON-able data."""
    return {
        "config": dataclasses.asdict(wrapper.config),
        "noise": noise,
        "noise_draws": wrapper.plan.noise_draws,
        "denoiser_calls": wrapper.plan.denoiser_calls,
        "channels": wrapper.channels,
        "image_size": list(wrapper.image_size) if wrapper.image_size else None,
        "diffusion_size": list(wrapper.diffusion_size) if wrapper.diffusion_size else None,
        "stages": wrapper.stages.describe(),
        "with_purified": with_purified,
    }


def _example_inputs(wrapper: RobustWrapper, noise: NoiseMode, batch: int) -> tuple[torch.Tensor, ...]:
    if wrapper.channels is None or wrapper.image_size is None:
        raise ValueError(
            "export needs a fixed input shape: build the wrapper with image_size=(H, W) "
            "(and a classifier or diffusion model that declares its channels)"
        )
    images = torch.rand(batch, wrapper.channels, *wrapper.image_size)
    if noise == "in_graph":
        return (images,)
    k, votes, _, channels, height, width = wrapper.noise_shape(images)
    return images, torch.randn(batch, k, votes, channels, height, width)


def export_onnx(
    wrapper: RobustWrapper,
    path: str | os.PathLike,
    *,
    noise: NoiseMode = "in_graph",
    with_purified: bool = False,
    opset: int = 20,
    max_batch: int = 1024,
    external_data_threshold: int | None = None,
) -> OnnxExport:
    """Export the defended model as one ONNX graph with a dynamic batch axis.

    Steps and votes are fixed at export time (the loop is unrolled). ``noise="in_graph"``
    draws fresh noise per run (``RandomNormalLike``); ``"explicit"`` adds a ``noise`` input of
    shape (B, D, S, C, Hd, Wd) (D noise draws), making the graph deterministic and comparable with eager.

    The graph grows with the number of denoiser calls: for more than a few, export the
    networks instead (:func:`robustwrap.export.export_bundle`). Exporter metadata and doc
    strings are stripped. Weights above ``external_data_threshold`` bytes (default ~1.8 GB)
    go to ``<file>.data`` beside the graph, named after the final file (relative location).

    The file is written in a temporary folder beside the target, checked with
    ``onnx.checker`` (full check, with shape inference), then moved into place (its data
    file first): a failure leaves nothing behind.

    Raises:
        ValueError: bad noise mode or opset, or a wrapper without a fixed input shape.
        ImportError: the ``export`` extra is not installed.
    """
    onnx = require("onnx", "export")
    require("onnxscript", "export")
    if noise not in ("in_graph", "explicit"):
        raise ValueError(f"noise must be 'in_graph' or 'explicit', got {noise!r}")
    if not 18 <= opset <= 23:
        raise ValueError(f"the dynamo exporter writes opsets 18 to 23, got {opset}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {path.parent} is not writable")

    graph = ExportGraph(wrapper, explicit_noise=noise == "explicit", with_purified=with_purified).eval()
    inputs = _example_inputs(wrapper, noise, batch=2)  # not 1: export specialises size-1 axes
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic_shapes = {name: {0: batch} for name in graph.input_names}
    metadata = wrapper_metadata(wrapper, noise, with_purified)

    try:
        with torch.no_grad(), warnings.catch_warnings(), wrapper.stages.attached(wrapper.classifier):
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")  # images and noise share it
            program = torch.onnx.export(
                graph,
                inputs,
                dynamo=True,
                input_names=graph.input_names,
                output_names=graph.output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as error:  # torch.export / the ONNX translator: many error types, one meaning
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"torch.onnx.export could not capture this defended model ({type(error).__name__}: {first_line}). "
            "The classifier and diffusion model must trace without data-dependent Python control flow; "
            "robustwrap.export.graph_breaks(wrapper, x) shows where tracing stops."
        ) from error
    import onnx_ir

    from .bundle import EXTERNAL_DATA_THRESHOLD, _initializer_bytes, _strip

    _strip(program.model)
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    threshold = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold
    data_name = f"{path.name}.data" if _initializer_bytes(program.model) > threshold else None

    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        onnx_ir.save(program.model, folder / path.name, external_data=data_name)
        onnx.checker.check_model(str(folder / path.name), full_check=True)
        if data_name:
            os.replace(folder / data_name, path.parent / data_name)
        os.replace(folder / path.name, path)
    except BaseException:
        if data_name and not (folder / data_name).exists():  # moved already: the graph did not follow
            (path.parent / data_name).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    model = onnx.load(str(path), load_external_data=False)
    result = OnnxExport(
        path=path,
        bytes=path.stat().st_size + ((path.parent / data_name).stat().st_size if data_name else 0),
        nodes=len(model.graph.node),
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        op_types=tuple(sorted({node.op_type for node in model.graph.node})),
        noise=noise,
        metadata=metadata,
    )
    logger.info("exported %s: %d nodes, opset %d, %.1f MB", path, result.nodes, result.opset, result.bytes / 1e6)
    return result


def read_metadata(path: str | os.PathLike) -> dict:
    """The robustwrap metadata stored in an exported ONNX file."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path} has no robustwrap metadata: was it written by robustwrap.export.export_onnx?")
