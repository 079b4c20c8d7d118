"""What ``robustwrap export`` takes, and how close what it wrote is to the eager defense it came from.

The targets (:data:`TARGETS`: ``onnx``, ``trt``, ``aoti``, ``openvino``, each the engine that runs
its bundle, and ``compile``, which writes nothing) with their precisions, checked together with
the serving choices by :func:`check_choice` before any work. Parity is measured on two random
images (seed 0) under one fixed noise (seed 1, :func:`parity_inputs`): the largest absolute
difference in class probability from the eager wrapper, for each thing written
(:func:`bundle_parity`, :func:`engine_parity`, :func:`compile_parity`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from robustwrap.noise import Noise

if TYPE_CHECKING:
    from robustwrap.wrapper import RobustWrapper

TARGETS = {"onnx": "onnxruntime", "trt": "tensorrt", "aoti": "aoti", "openvino": "openvino", "compile": None}
TARGET_HELP = ("onnx: the bundle (ONNX graphs, run by ONNX Runtime); trt: the bundle plus TensorRT engines (needs a GPU); "
               "aoti: the bundle plus AOTInductor packages of both networks for this machine's device (minutes to "
               "compile, nothing compiled at load time; --precision bf16: under bf16 autocast); openvino: the bundle, "
               "run by OpenVINO at --precision fp32 or bf16 (nothing more to build); compile: torch.compile the "
               "networks and compare with eager (writes nothing)")
PRECISION_HELP = ("TensorRT kernels: fp32, fp16 or bf16 (TensorRT 10); AOT packages and compile: fp32 or bf16 "
                  "(autocast); OpenVINO: fp32 or bf16 (what --verify checks), or int8 (both networks quantised by "
                  "NNCF, calibrated on 32 digits of mnist5k:train)")
INLINE_TARGETS = ("onnx", "aoti", "openvino")  # what the Triton pipeline can run itself (backend "inline")


def target_precisions(target: str) -> tuple[str, ...]:
    """The precisions ``target`` exports at (the first is the default): the engine registry's, TensorRT's
    builder's, or compile_networks'."""
    from .compile import COMPILE_PRECISIONS
    from .engines import ENGINE_SPECS
    from .engines.tensorrt import TRT_PRECISIONS

    if target not in TARGETS:
        raise ValueError(f"the export target must be one of {tuple(TARGETS)}, got {target!r}")
    if target == "compile":
        return COMPILE_PRECISIONS
    return TRT_PRECISIONS if target == "trt" else ENGINE_SPECS[TARGETS[target]].precisions


def check_choice(target: str, precision: str, *, triton_backend: str | None = None, triton_max_batch: int = 1,
                 max_request_batch: int = 1) -> None:
    """Refuse, before any work, an export that cannot be made.

    Raises:
        ValueError: a precision the target does not take, a Triton backend that cannot serve it, or a
            request limit below the pipeline's batch.
    """
    allowed = target_precisions(target)
    if precision not in allowed:
        raise ValueError(f"--engine {target} takes --precision {' or '.join(allowed)}, got {precision}")
    if triton_backend == "openvino" and (target != "openvino" or precision != "bf16"):
        raise ValueError("--triton-backend openvino serves bf16 only (Triton's openvino backend cannot pin fp32): add "
                         "--engine openvino --precision bf16, or use --triton-backend python --engine openvino for "
                         "fp32 and int8")
    if triton_backend == "inline" and target not in INLINE_TARGETS:
        raise ValueError(f"--triton-backend inline runs --engine {', '.join(INLINE_TARGETS)}, got --engine {target}")
    if max_request_batch < triton_max_batch:
        raise ValueError(f"--max-request-batch ({max_request_batch}) must be at least --triton-max-batch "
                         f"({triton_max_batch})")


@dataclass(frozen=True)
class Parity:
    """One comparison with the eager wrapper.

    Attributes:
        what: what was compared ("ONNX Runtime vs eager").
        gap: max |d prob| over the two images and the classes, in [0, 1]; None when nothing could be compared.
        note: what was checked instead, when ``gap`` is None.
    """

    what: str
    gap: float | None
    note: str = ""


def parity_inputs(wrapper: RobustWrapper, channels: int, size: int) -> tuple[Tensor, Noise]:
    """Two random (1, C, H, W)-shaped images in [0, 1] (seed 0) and one fixed noise for them (seed 1)."""
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    return x, Noise.given(torch.randn(wrapper.noise_shape(x), generator=torch.Generator().manual_seed(1)))


def _gap(got: Tensor, want: Tensor) -> float:
    return float((got.cpu() - want).abs().max())


@torch.no_grad()
def bundle_parity(wrapper: RobustWrapper, out: str | Path, x: Tensor, noise: Noise) -> list[Parity]:
    """The bundle in ``out`` on ONNX Runtime, each AOTInductor package in it, and its unrolled graph
    (compared with explicit noise; an in-graph one is run and its probabilities checked to sum to 1)."""
    from .bundle import load_bundle, load_unrolled, read_bundle
    from .format import UNROLLED, split_package_key

    want = wrapper(x, noise=noise)
    info = read_bundle(out)
    found = [Parity("ONNX Runtime vs eager", _gap(load_bundle(out)(x, noise=noise), want))]
    for key, package in info.packages.items():  # "aoti", "aoti-bf16"
        engine, precision = split_package_key(key)
        got = load_bundle(out, engine=engine, precision=precision)(x, noise=noise)
        found.append(Parity(f"{engine} {precision} packages ({package.device}) vs eager", _gap(got, want)))
    unrolled = info.components.get(UNROLLED)
    if unrolled is not None and unrolled.noise == "explicit":
        found.append(Parity("unrolled graph vs eager", _gap(load_unrolled(out)(x, noise.tensor)[0], want)))
    elif unrolled is not None:
        total = float(load_unrolled(out)(x)[0].sum(1).mean())
        found.append(Parity("unrolled graph vs eager", None, "n/a with in-graph noise (--noise explicit to compare); "
                            f"ran: probabilities sum to {total:.4f}"))
    return found


@torch.no_grad()
def engine_parity(wrapper: RobustWrapper, out: str | Path, x: Tensor, noise: Noise, *, engine: str = "tensorrt",
                  device: str = "cuda", label: str = "TensorRT") -> Parity:
    """The bundle's engines (``engine`` on ``device``, called ``label``) against eager."""
    from .bundle import load_bundle

    loaded = load_bundle(out, engine=engine, device=device)
    got = loaded(x.to(device), noise=Noise.given(noise.tensor.to(device)))
    return Parity(f"{label} vs eager", _gap(got, wrapper(x, noise=noise)))


def compile_parity(wrapper: RobustWrapper, x: Tensor, noise: Noise, precision: str) -> tuple[float, Parity]:
    """``torch.compile`` the two networks at ``precision``, run once and compare with eager; (seconds to compile
    and run once, the comparison)."""
    from .compile import compile_networks

    start = time.perf_counter()
    compiled = compile_networks(wrapper, precision=precision)
    with torch.no_grad():
        got = compiled(x, noise=noise)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        want = wrapper(x, noise=noise)
    what = "parity" if precision == "fp32" else f"{precision} (a changed function: verify its bundle)"
    return seconds, Parity(f"{what} vs eager (max |d prob|, fixed noise)", _gap(got, want))
