"""Engines that run a bundle's graphs: one runner protocol, one module per engine.

A runner (:mod:`.runner`: the protocol every engine module implements, importing nothing from
this package's ``__init__``) takes named torch tensors and returns the graph's outputs in its
recorded order::

    runner({"x_t": x_t, "t": t}) -> [eps]

- :mod:`.onnxruntime` — :class:`OrtRunner`, an ONNX Runtime session (CPU, or CUDA with I/O binding).
- :mod:`.tensorrt` — :class:`TrtEngine`, a serialised TensorRT engine (CUDA), and the builder.
- :mod:`.aoti` — :class:`AotiRunner`, an AOTInductor ``.pt2`` package (CPU or CUDA), and its compiler.
- :mod:`.adapters` — the networks the library's wrapper runs over a runner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from ..format import BundleInfo
from .runner import Runner, like_caller

__all__ = ["ENGINES", "Engine", "Runner", "like_caller", "open_runner"]

Engine = Literal["onnxruntime", "tensorrt", "aoti"]
ENGINES = ("onnxruntime", "tensorrt", "aoti")


def open_runner(
    info: BundleInfo,
    folder: str | os.PathLike,
    component: str,
    engine: Engine,
    device: str | torch.device,
    *,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> Runner:
    """The runner for one component of the bundle in ``folder``.

    Raises:
        ValueError: an unknown engine, the bundle lacks the component or its packages, a package
            for another device or torch version.
        RuntimeError: TensorRT without a GPU or without a built engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    path = info.file(folder, component)
    spec = info.components[component]
    if engine == "aoti":
        from .aoti import AotiRunner

        package = info.packages.get("aoti")
        if package is None or component not in package.files:
            raise ValueError(f"{folder} has no AOTInductor package for the {component}: export it with "
                             "export_bundle(..., aoti=True) or `robustwrap export --engine aoti`")
        return AotiRunner(Path(folder) / package.files[component], spec, package, device)
    if engine == "onnxruntime":
        from .onnxruntime import OrtRunner

        return OrtRunner(path, spec, device, providers, threads)
    if engine == "tensorrt":
        from .tensorrt import TrtEngine, engine_path

        plan = engine_path(Path(folder), component)
        if not plan.is_file():
            raise RuntimeError(f"{plan} does not exist: build the engines with "
                               "robustwrap.export.build_bundle_engines(bundle) or `robustwrap export --engine trt`")
        return TrtEngine(plan, device)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
