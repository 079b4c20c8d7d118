"""OpenVINO: a bundle's ONNX graphs compiled for the CPU, at fp32 or bf16 (AMX / AVX-512 where the CPU has them).

OpenVINO reads the bundle's ``.onnx`` files as they are (dynamic batch included): nothing is
exported again. Compiled models are cached (OpenVINO's ``CACHE_DIR``), so a warm start skips
compilation. The precision is OpenVINO's ``INFERENCE_PRECISION_HINT``, always set explicitly:
on a CPU with bf16 units an unset hint means bf16, which would change the defense silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..format import TORCH_DTYPES, ComponentSpec
from ..optional import require
from .runner import like_caller

HINTS = {"fp32": "f32", "bf16": "bf16"}  # our precision names -> OpenVINO's inference precision hints


def default_cache_dir() -> Path:
    """Where compiled models are cached: ``$ROBUSTWRAP_CACHE/openvino``, else ``~/.cache/robustwrap/openvino``."""
    root = os.environ.get("ROBUSTWRAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "robustwrap")
    return Path(root) / "openvino"


class OpenVinoRunner:
    """One OpenVINO compiled model behind the :class:`~robustwrap.export.engines.Runner` protocol.

    Tensors go through numpy; outputs are copied (OpenVINO reuses its output buffers between
    calls) and come back on the first input's device, floats in its dtype.

    Args:
        path: the ONNX file.
        spec: the graph's recorded contract (names, shapes, dtypes).
        precision: "fp32" or "bf16" (the kernels' precision; inputs and outputs stay float32).
        threads: inference threads; None for OpenVINO's default.
        cache_dir: the compiled-model cache; None for :func:`default_cache_dir`.

    Raises:
        ValueError: a precision OpenVINO does not run here, or a graph whose tensors differ from
            the recorded contract.
        ImportError: the ``openvino`` extra is missing.
    """

    def __init__(self, path: str | os.PathLike, spec: ComponentSpec, precision: str = "fp32",
                 threads: int | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        ov = require("openvino", "openvino")
        if precision not in HINTS:
            raise ValueError(f"OpenVINO runs the bundle's graphs at {sorted(HINTS)}, got precision={precision!r}")
        core = ov.Core()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        properties = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(path), "CPU", properties)
        self.precision = precision
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        if self.input_names != spec.input_names or self.output_names != spec.output_names:
            raise ValueError(f"{path} has inputs {self.input_names} and outputs {self.output_names}, but the bundle "
                             f"records {spec.input_names} and {spec.output_names}: a file was replaced; export again")
        self.spec = spec
        self.request = self.compiled.create_infer_request()

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        arrays = {t.name: feeds[t.name].detach().to("cpu", TORCH_DTYPES[t.dtype]).contiguous().numpy()
                  for t in self.spec.inputs}
        results = self.request.infer(arrays)
        outputs = [torch.from_numpy(results[port].copy()) for port in self.compiled.outputs]
        return like_caller(outputs, first)
