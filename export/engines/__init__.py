"""Engines that run a bundle's graphs: one runner protocol, one module per engine, one registry.

A runner (:mod:`.runner`: the protocol every engine module implements, importing nothing from
this package's ``__init__``) takes named torch tensors and returns the graph's outputs in its
recorded order::

    runner({"x_t": x_t, "t": t}) -> [eps]

- :mod:`.onnxruntime` — :class:`OrtRunner`, an ONNX Runtime session (CPU, or CUDA with I/O binding).
- :mod:`.tensorrt` — :class:`TrtEngine`, a serialised TensorRT engine (CUDA), and the builder.
- :mod:`.aoti` — :class:`AotiRunner`, an AOTInductor ``.pt2`` package (CPU or CUDA; fp32 or bf16), and its compiler.
- :mod:`.openvino` — :class:`OpenVinoRunner`, the ONNX graphs compiled by OpenVINO (CPU, fp32 / bf16).
- :mod:`.adapters` — the networks the library's wrapper runs over a runner.

:data:`ENGINE_SPECS` is the one list of engines: each name with its opener, the precisions it
runs, the devices it runs on and the extra it needs. Precisions are named ``"fp32"``,
``"bf16"``, ``"fp16"`` everywhere (TensorRT's builder included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from robustwrap.cpus import warn_if_emulated

from ..format import CLASSIFIER, DENOISER, BundleInfo, package_key
from .runner import Runner, like_caller

__all__ = ["ENGINES", "ENGINE_SPECS", "Engine", "EngineSpec", "PrecisionArg", "Runner", "describe_precision",
           "is_reduced", "like_caller", "open_runner", "per_network", "resolve_precision"]

Engine = Literal["onnxruntime", "tensorrt", "aoti", "openvino"]
PrecisionArg = str | Mapping[str, str] | None


@dataclass(frozen=True)
class OpenRequest:
    """What an opener gets: one component of one bundle, where and how to run it."""

    info: BundleInfo
    folder: Path
    component: str
    device: torch.device
    precision: str
    providers: Sequence[Any] | None
    threads: int | None


@dataclass(frozen=True)
class EngineSpec:
    """One engine of the registry.

    Attributes:
        open: builds the runner for an :class:`OpenRequest`.
        precisions: what it runs at load time (the first is the default); empty when the precision is
            fixed when the engine files are built (TensorRT: ``build_bundle_engines(precision=)``).
        devices: the device types it runs on.
        extra: the ``pip install 'robustwrap[extra]'`` that brings it.
        help: one line for listings.
    """

    open: Callable[[OpenRequest], Runner]
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    extra: str
    help: str


def _open_onnxruntime(request: OpenRequest) -> Runner:
    from .onnxruntime import OrtRunner

    return OrtRunner(request.info.file(request.folder, request.component), request.info.components[request.component],
                     request.device, request.providers, request.threads)


def _open_tensorrt(request: OpenRequest) -> Runner:
    from .tensorrt import TrtEngine, engine_path

    plan = engine_path(request.folder, request.component)
    if not plan.is_file():
        raise RuntimeError(f"{plan} does not exist: build the engines with "
                           "robustwrap.export.build_bundle_engines(bundle) or `robustwrap export --engine trt`")
    return TrtEngine(plan, request.device)


def _open_aoti(request: OpenRequest) -> Runner:
    from .aoti import AotiRunner

    package = request.info.packages.get(package_key("aoti", request.precision))
    if package is None or request.component not in package.files:
        at = "" if request.precision == "fp32" else f" at {request.precision}"
        raise ValueError(f"{request.folder} has no AOTInductor package for the {request.component}{at}: export it "
                         f"with export_bundle(..., aoti=({request.precision!r},)) or `robustwrap export --engine aoti "
                         f"--precision {request.precision}`")
    warn_if_emulated(request.precision, request.device.type)
    return AotiRunner(request.folder / package.files[request.component], request.info.components[request.component],
                      package, request.device)


def _open_openvino(request: OpenRequest) -> Runner:
    from .openvino import OpenVinoRunner

    path = request.info.file(request.folder, request.component)
    if request.precision == "int8":
        package = request.info.packages.get(package_key("openvino", "int8"))
        if package is None or request.component not in package.files:
            raise ValueError(f"{request.folder} has no int8 model of the {request.component}: quantise it with "
                             "robustwrap.export.quantize_bundle or `robustwrap export --engine openvino --precision int8`")
        path = request.folder / package.files[request.component]
    return OpenVinoRunner(path, request.info.components[request.component], request.precision, request.threads)


ENGINE_SPECS: dict[str, EngineSpec] = {
    "onnxruntime": EngineSpec(_open_onnxruntime, ("fp32",), ("cpu", "cuda"), "export",
                              "ONNX Runtime over the bundle's .onnx graphs"),
    "tensorrt": EngineSpec(_open_tensorrt, (), ("cuda",), "gpu", "TensorRT engines built from the graphs (CUDA)"),
    "aoti": EngineSpec(_open_aoti, ("fp32", "bf16"), ("cpu", "cuda"), "export",
                       "AOTInductor packages compiled at export for one device and torch version (bf16: under "
                       "autocast, packages compiled with --precision bf16)"),
    "openvino": EngineSpec(_open_openvino, ("fp32", "bf16", "int8"), ("cpu",), "openvino",
                           "OpenVINO over the bundle's .onnx graphs (CPU; bf16 on AMX / AVX-512 CPUs; int8 models "
                           "quantised at export)"),
}
ENGINES = tuple(ENGINE_SPECS)


def resolve_precision(engine: str, precision: PrecisionArg) -> dict[str, str]:
    """The precision each network runs at: ``{"classifier": ..., "denoiser": ...}``.

    Args:
        engine: a name of :data:`ENGINE_SPECS`.
        precision: None (the engine's default: fp32, or as built for TensorRT), one precision for both
            networks, or one per network (``{"classifier": "fp32", "denoiser": "bf16"}``).

    Raises:
        ValueError: an unknown engine, network or precision, naming what the engine runs.
    """
    if engine not in ENGINE_SPECS:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    allowed = ENGINE_SPECS[engine].precisions
    if precision is None:
        return {component: allowed[0] if allowed else "as built" for component in (CLASSIFIER, DENOISER)}
    if not allowed:
        _split(precision)  # a malformed mapping is named first
        raise ValueError(f"{engine} engines run at the precision they were built with: pass it to "
                         "build_bundle_engines(precision=...) (`robustwrap export --engine trt --precision ...`)")
    return per_network(precision, allowed, engine)


def per_network(precision: str | Mapping[str, str], allowed: Sequence[str], what: str) -> dict[str, str]:
    """``precision`` for both networks, or one per network, checked against ``allowed``.

    Args:
        precision: one precision ("bf16") or ``{"classifier": ..., "denoiser": ...}``.
        allowed: the precisions ``what`` runs.
        what: named in errors ("openvino", "compile_networks").

    Raises:
        ValueError: a mapping that does not name exactly the two networks, or a precision not allowed.
    """
    chosen = _split(precision)
    bad = {name: value for name, value in chosen.items() if value not in allowed}
    if bad:
        got = repr(precision) if isinstance(precision, str) else str(bad)
        raise ValueError(f"{what} runs at {list(allowed)}, got precision {got}")
    return chosen


def _split(precision: str | Mapping[str, str]) -> dict[str, str]:
    chosen = dict(precision) if isinstance(precision, Mapping) else {CLASSIFIER: precision, DENOISER: precision}
    unknown = sorted(set(chosen) - {CLASSIFIER, DENOISER})
    if unknown or len(chosen) != 2:
        raise ValueError(f"precision per network names exactly {[CLASSIFIER, DENOISER]}, got {sorted(chosen)}")
    return chosen


def is_reduced(precisions: Mapping[str, str]) -> bool:
    """Whether a network runs below fp32 (TensorRT's "as built" counts as not known to be reduced)."""
    return any(value not in ("fp32", "as built") for value in precisions.values())


def describe_precision(precisions: Mapping[str, str]) -> str:
    """"bf16", or "classifier fp32, denoiser bf16" when the networks differ."""
    if len(set(precisions.values())) == 1:
        return next(iter(precisions.values()))
    return ", ".join(f"{component} {value}" for component, value in precisions.items())


def open_runner(
    info: BundleInfo,
    folder: str | os.PathLike,
    component: str,
    engine: Engine,
    device: str | torch.device,
    *,
    precision: str | None = None,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> Runner:
    """The runner for one component of the bundle in ``folder``.

    Args:
        precision: one of the engine's precisions (None: its default).

    Raises:
        ValueError: an unknown engine or precision, a device the engine does not run on, the bundle
            lacks the component or its packages, a package for another device or torch version.
        RuntimeError: TensorRT without a GPU or without a built engine.
    """
    if engine not in ENGINE_SPECS:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    spec = ENGINE_SPECS[engine]
    device = torch.device(device)
    if device.type not in spec.devices:
        raise ValueError(f"{engine} runs on {list(spec.devices)}, not on {device.type}")
    if precision is None:
        precision = spec.precisions[0] if spec.precisions else "as built"
    else:
        precision = resolve_precision(engine, precision)[CLASSIFIER]  # one precision, checked
    info.file(folder, component)  # a component the bundle lacks is named here, whatever the engine
    return spec.open(OpenRequest(info, Path(folder), component, device, precision, providers, threads))
