"""TensorRT engines from the exported ONNX graph, and a runner for them (CUDA only).

Written against the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``execute_async_v3``). TensorRT's ONNX parser implements ``RandomNormalLike`` (8.5 and later,
through IFillLayer, ignoring the seed), so the in-graph-noise graph parses; whether an engine
draws fresh noise on every inference is not verified: export with ``noise="explicit"`` for an
engine that is deterministic and comparable with eager.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ._optional import require


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and none is visible to torch on this machine")


@dataclass(frozen=True)
class EngineBuild:
    """What :func:`build_engine` wrote."""

    path: Path
    bytes: int
    fp16: bool
    batch_range: tuple[int, int, int]


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    fp16: bool = False,
    workspace_bytes: int = 4 << 30,
    timing_cache: str | os.PathLike | None = None,
) -> EngineBuild:
    """Parse an exported ONNX file and serialise a TensorRT engine for it.

    Every input's axis 0 is the batch: one optimisation profile covers
    ``min_batch <= B <= max_batch``, tuned for ``opt_batch``. The timing cache, when given, is
    read if present and written back, so rebuilds are fast. The engine is written under a
    temporary name and renamed on success.

    Raises:
        RuntimeError: no CUDA device; the parser rejects the graph (with its messages); the
            build fails.
        ImportError: tensorrt is not installed (``pip install 'robustwrap[gpu]'``).
    """
    _require_cuda()
    trt = require("tensorrt", "gpu")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    engine_path = Path(engine_path)
    handle, temporary = tempfile.mkstemp(prefix=f".{engine_path.name}.", suffix=".partial", dir=engine_path.parent)
    with os.fdopen(handle, "wb") as file:
        file.write(serialized)
    os.replace(temporary, engine_path)
    if cache_path:
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineBuild(engine_path, engine_path.stat().st_size, fp16, (min_batch, opt_batch, max_batch))


class TrtRunner:
    """A TensorRT engine behind ``runner(images[, noise]) -> (scores, labels[, purified])``.

    Inputs are torch tensors (moved to the GPU); outputs are CUDA tensors.
    """

    def __init__(self, engine_path: str | os.PathLike) -> None:
        _require_cuda()
        trt = require("tensorrt", "gpu")
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path} is not a TensorRT engine for this TensorRT version and GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _dtype(self, name: str) -> torch.dtype:
        return {
            self._trt.DataType.FLOAT: torch.float32,
            self._trt.DataType.HALF: torch.float16,
            self._trt.DataType.INT32: torch.int32,
            self._trt.DataType.INT64: torch.int64,
        }[self.engine.get_tensor_dtype(name)]

    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        feeds = {"images": images}
        if "noise" in self.input_names:
            if noise is None:
                raise ValueError("this engine takes explicit noise (B, K, S, C, Hd, Wd)")
            feeds["noise"] = noise
        elif noise is not None:
            raise ValueError("this engine draws its noise in-graph: do not pass noise")
        stream = torch.cuda.current_stream()
        for name, value in feeds.items():
            value = value.to("cuda", self._dtype(name)).contiguous()
            feeds[name] = value
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, value.data_ptr())
        outputs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return tuple(outputs)
