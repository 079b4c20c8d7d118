"""TensorRT (CUDA only): engines built from a bundle's graphs, and the runner for them.

Written against the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``execute_async_v3``). TensorRT's ONNX parser implements ``RandomNormalLike`` (8.5 and later,
through IFillLayer, ignoring the seed), so an unrolled graph with in-graph noise parses; whether
an engine draws fresh noise on every inference is not verified.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import torch

from ..format import BundleInfo
from ..optional import require
from .runner import like_caller


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and none is visible to torch on this machine")


Precision = Literal["fp32", "fp16", "bf16"]
TRT_PRECISIONS = ("fp32", "fp16", "bf16")  # what build_bundle_engines builds


def _precision_flag(trt, precision: str):
    """The builder flag allowing ``precision`` kernels in a weakly typed network (TensorRT 10).

    TensorRT 11 removed ``BuilderFlag.FP16``/``BF16`` (reduced precision comes only from the
    types of a strongly typed network there): a clear error instead of an AttributeError.
    """
    name = {"fp16": "FP16", "bf16": "BF16"}[precision]
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise RuntimeError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name} (removed in TensorRT 11): install "
            "'tensorrt>=10,<11' (the robustwrap[gpu] extra pins it) or build fp32"
        )
    return flag


@dataclass(frozen=True)
class EngineBuild:
    """What :func:`build_engine` wrote."""

    path: Path
    bytes: int
    fp16: bool
    batch_range: tuple[int, int, int]
    precision: str = "fp32"


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
    precision: Precision | None = None,
) -> EngineBuild:
    """Parse an exported ONNX file and serialise a TensorRT engine for it.

    Every input's axis 0 is the batch: one optimisation profile covers
    ``min_batch <= B <= max_batch``, tuned for ``opt_batch``. The timing cache, when given, is
    read if present and written back, so rebuilds are fast. The engine is written under a
    temporary name and renamed on success. ``precision`` "fp16"/"bf16" (``fp16=True`` is
    "fp16") allows reduced-precision kernels through TensorRT 10's builder flags; inputs and
    outputs stay float32.

    Raises:
        RuntimeError: no CUDA device; the parser rejects the graph (with its messages); the
            build fails.
        ImportError: tensorrt is not installed (``pip install 'robustwrap[gpu]'``).
    """
    precision = precision or ("fp16" if fp16 else "fp32")
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16', got {precision!r}")
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
    if precision != "fp32":
        config.set_flag(_precision_flag(trt, precision))
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise RuntimeError(f"input {tensor.name} of {onnx_path} has dynamic axes besides the batch: {tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile for {onnx_path}")

    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError(f"TensorRT refused the timing cache {cache_path}: delete it and build again")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    engine_path = Path(engine_path)
    handle, temporary = tempfile.mkstemp(prefix=f".{engine_path.name}.", suffix=".partial", dir=engine_path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(serialized)
        os.replace(temporary, engine_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if cache_path:
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineBuild(engine_path, engine_path.stat().st_size, precision == "fp16", (min_batch, opt_batch, max_batch),
                       precision)


def _torch_dtype(trt, data_type) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if data_type not in table:
        raise RuntimeError(f"engine tensor type {data_type} is not supported by this runner")
    return table[data_type]


class TrtEngine:
    """One TensorRT engine with named torch CUDA tensors in and out (a bundle component).

    Tensors are passed by data pointer (no copies beyond a dtype/device cast) and the engine
    runs with ``execute_async_v3`` on its own (non-default) CUDA stream, ordered after the
    caller's current stream and before anything the caller queues next. Every shape and
    address call is checked.

    Args:
        engine_path: a serialised engine (``.plan``) built by :func:`build_bundle_engines`.
        device: the CUDA device the engine runs on.

    Call: ``runner({name: tensor}) -> [outputs in the engine's order]``, float outputs on the
    first input's device and dtype, integer outputs on its device.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda") -> None:
        _require_cuda()
        trt = require("tensorrt", "gpu")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT engines run on a CUDA device, got device={device!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{engine_path} is not a TensorRT engine for this TensorRT version and GPU")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {engine_path}")
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # inputs written on the caller's stream come first
        kept = []
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                value = feeds[name].detach().to(self.device, self.dtypes[name]).contiguous()
                value.record_stream(self.stream)
                kept.append(value)
                if not self.context.set_input_shape(name, tuple(value.shape)):
                    raise ValueError(f"engine input {name}: shape {tuple(value.shape)} is outside the engine's profile "
                                     f"{self.engine.get_tensor_profile_shape(name, 0)}")
                if not self.context.set_tensor_address(name, value.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of input {name}")
            outputs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT could not infer the shape of output {name}: {shape}")
                out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                if not self.context.set_tensor_address(name, out.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of output {name}")
                outputs.append(out)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        caller.wait_stream(self.stream)  # the caller's next work sees the outputs
        for out in outputs:
            out.record_stream(caller)
        return like_caller(outputs, first)


def engine_path(folder: Path, component: str) -> Path:
    """Where a bundle keeps the TensorRT engine of a component."""
    return folder / f"{component}.plan"


def build_bundle_engines(
    bundle: str | os.PathLike,
    *,
    precision: Precision = "fp32",
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 64,
    workspace_bytes: int = 4 << 30,
) -> dict[str, EngineBuild]:
    """Build ``<component>.plan`` for every graph of a bundle folder (CUDA only).

    The batch range is in networks' rows: the denoiser sees N = B * S (images times votes).
    A timing cache (``timing.cache``) in the bundle makes rebuilds fast.

    Raises:
        RuntimeError: no CUDA device, a graph TensorRT cannot parse, a failed build.
        ValueError: bad precision or batch range.
    """
    folder = Path(bundle)
    info = BundleInfo.read(folder)
    return {
        component: build_engine(info.file(folder, component), engine_path(folder, component),
                                min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                workspace_bytes=workspace_bytes, timing_cache=folder / "timing.cache",
                                precision=precision)
        for component in info.components
    }
