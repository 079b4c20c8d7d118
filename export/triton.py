"""A Triton Inference Server model repository for an exported defense.

Layout written (Triton's convention)::

    DIR/<model_name>/config.pbtxt
    DIR/<model_name>/1/model.onnx        (onnxruntime backend)   or   1/model.plan (tensorrt_plan)

Every input and output of the exported graph is batch-first, so Triton's dynamic batcher can
stack requests along axis 0.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Sequence

from ._optional import require

Backend = Literal["onnxruntime", "tensorrt"]
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64"}  # onnx.TensorProto element types

Tensor = tuple[str, str, Sequence[int]]  # (name, Triton data type, dims without the batch axis)


def _tensor_block(name: str, data_type: str, dims: Sequence[int]) -> str:
    # A per-item scalar (labels: (B,)) is declared as [1] and reshaped to [] for the model.
    dims_text = f"[ {', '.join(str(d) for d in dims)} ]" if dims else "[ 1 ]\n    reshape: { shape: [ ] }"
    return f"  {{\n    name: \"{name}\"\n    data_type: {data_type}\n    dims: {dims_text}\n  }}"


def triton_config(
    model_name: str,
    backend: Backend,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    max_batch_size: int,
    max_queue_delay_us: int = 100,
) -> str:
    """Text of ``config.pbtxt`` for tensors given as (name, Triton data type, dims without the batch)."""
    platform = 'backend: "onnxruntime"' if backend == "onnxruntime" else 'platform: "tensorrt_plan"'

    def blocks(tensors: Sequence[Tensor]) -> str:
        return ",\n".join(_tensor_block(*tensor) for tensor in tensors)

    return (
        f'name: "{model_name}"\n{platform}\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{blocks(inputs)}\n]\n"
        f"output [\n{blocks(outputs)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
    )


def write_triton_repository(
    repository: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    model_name: str = "robustwrap",
    backend: Backend = "onnxruntime",
    engine_path: str | os.PathLike | None = None,
    max_batch_size: int = 32,
    version: int = 1,
) -> Path:
    """Write (or update) a model folder for Triton and return its path.

    Args:
        repository: the model repository root (created if missing).
        onnx_path: the exported graph; its inputs and outputs define the config.
        backend: ``"onnxruntime"`` serves the ONNX file; ``"tensorrt"`` serves ``engine_path``.
    """
    onnx = require("onnx", "export")

    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
    if backend == "tensorrt" and engine_path is None:
        raise ValueError("the tensorrt backend needs engine_path (build it with robustwrap.export.build_engine)")
    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values) -> list[Tensor]:
        return [
            (v.name, _ONNX_TO_TRITON[v.type.tensor_type.elem_type], [d.dim_value for d in v.type.tensor_type.shape.dim][1:])
            for v in values
        ]

    folder = Path(repository) / model_name
    version_folder = folder / str(version)
    version_folder.mkdir(parents=True, exist_ok=True)
    source, target = (Path(onnx_path), "model.onnx") if backend == "onnxruntime" else (Path(engine_path), "model.plan")
    shutil.copyfile(source, version_folder / target)
    config = triton_config(model_name, backend, describe(model.graph.input), describe(model.graph.output), max_batch_size)
    (folder / "config.pbtxt").write_text(config)
    return folder
