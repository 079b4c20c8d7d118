"""`robustwrap export`: write the defended model as a bundle (the two networks, optionally the
unrolled loop), its TensorRT engines and a Triton repository, and check each against eager."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import (CHANNELS_HELP, CLASSIFIER_SPECS, CONFIG_HELP, DIFFUSION_SPECS, STEPS_HELP, T_L_HELP, T_S_HELP,
                     WEIGHTS_HELP, build_wrapper, console, defense_config, fail, input_defaults, model_specs,
                     require_finite)


class Engine(str, Enum):
    onnx = "onnx"
    trt = "trt"
    aoti = "aoti"
    openvino = "openvino"
    compile = "compile"


VERIFIED_ENGINE = {"onnx": "onnxruntime", "trt": "tensorrt", "aoti": "aoti", "openvino": "openvino"}  # --verify
INLINE_ENGINES = ("onnx", "aoti", "openvino")  # what --triton-backend inline runs


def engine_precisions(engine: str) -> tuple[str, ...]:
    """What --precision each --engine takes: the registry's (TensorRT's builder's, compile_networks')."""
    from robustwrap.export.compile import COMPILE_PRECISIONS
    from robustwrap.export.engines import ENGINE_SPECS
    from robustwrap.export.engines.tensorrt import TRT_PRECISIONS

    if engine == "compile":
        return COMPILE_PRECISIONS
    return TRT_PRECISIONS if engine == "trt" else ENGINE_SPECS[VERIFIED_ENGINE[engine]].precisions


class NoiseMode(str, Enum):
    in_graph = "in-graph"
    explicit = "explicit"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


class TritonBackend(str, Enum):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    python = "python"
    openvino = "openvino"
    inline = "inline"


def export_command(
    engine: Engine = typer.Option(Engine.onnx, help="onnx: the bundle (ONNX graphs, run by ONNX Runtime); trt: the "
                                  "bundle plus TensorRT engines (needs a GPU); aoti: the bundle plus AOTInductor "
                                  "packages of both networks for this machine's device (minutes to compile, nothing "
                                  "compiled at load time; --precision bf16: under bf16 autocast); openvino: the "
                                  "bundle, run by OpenVINO at --precision fp32 "
                                  "or bf16 (nothing more to build); compile: torch.compile the networks and compare "
                                  "with eager (writes nothing)"),
    out: Path = typer.Option(Path("robustwrap-bundle"), help="the bundle folder to write"),
    classifier: str = typer.Option("mnist", help=CLASSIFIER_SPECS),
    classifier_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    diffusion: str = typer.Option("mnist", help=DIFFUSION_SPECS),
    diffusion_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    num_classes: int = typer.Option(10, min=2),
    channels: Optional[int] = typer.Option(None, min=1, help=CHANNELS_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help="input size of the defended model (square); default: "
                                             "28 for mnist, else 32 (or what the classifier only takes)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + "; saved in the bundle"),
    steps: Optional[int] = typer.Option(None, min=1, help=STEPS_HELP),
    t_l: Optional[float] = typer.Option(None, help=T_L_HELP),
    t_s: Optional[float] = typer.Option(None, help=T_S_HELP),
    votes: Optional[int] = typer.Option(None, min=1, help="S purifications per image; default 1"),
    unrolled: bool = typer.Option(False, help="also write unrolled.onnx in the bundle: the whole loop at these "
                                  "settings in one graph, no Python at serving time (size and export time grow with "
                                  "the denoiser calls: a few calls only)"),
    noise: NoiseMode = typer.Option(NoiseMode.in_graph, help="--unrolled: in-graph random ops, or noise as an input"),
    max_batch: int = typer.Option(64, min=1, help="rows per network call for TensorRT profiles and the Triton "
                                  "component models (the denoiser sees images x votes rows)"),
    precision: Precision = typer.Option(Precision.fp32, help="TensorRT kernels: fp32, fp16 or bf16 (TensorRT 10); "
                                        "AOT packages and compile: fp32 or bf16 (autocast); "
                                        "OpenVINO: fp32 or bf16 (what --verify checks), or int8 (both networks "
                                        "quantised by NNCF, calibrated on 32 digits of mnist5k:train)"),
    fp16: bool = typer.Option(False, help="TensorRT: same as --precision fp16"),
    triton_repo: Optional[Path] = typer.Option(None, help="also write this defense's models into this Triton model "
                                               "repository (other models in it stay)"),
    triton_backend: Optional[TritonBackend] = typer.Option(
        None, help="how Triton runs the two networks: onnxruntime (NVIDIA's containers), tensorrt (the engines; the "
        "default with --engine trt), openvino (Triton's openvino backend, --engine openvino --precision bf16 only), "
        "python (ONNX Runtime, or OpenVINO with --engine openvino, in the Python backend: PyTriton's server, "
        "`robustwrap serve`) or inline (no component models: the pipeline runs the bundle itself with --engine "
        "onnx, openvino or aoti; no BLS round trip per network call)"),
    name: Optional[str] = typer.Option(None, help="the Triton model name (components NAME-classifier, "
                                       "NAME-denoiser); default from the specs, e.g. mnist-mnist"),
    triton_max_batch: int = typer.Option(8, min=1, help="images the Triton pipeline runs at once (requests are "
                                         "batched up to it; larger requests run in chunks of it)"),
    max_request_batch: int = typer.Option(256, min=1, help="the most images one request to the pipeline may hold"),
    max_queue_size: int = typer.Option(64, min=1, help="requests the pipeline queues; more are refused at once "
                                       "(UNAVAILABLE, HTTP 503)"),
    queue_timeout_ms: int = typer.Option(30_000, min=1, help="ms a request may wait in the queue before it is "
                                         "refused (UNAVAILABLE)"),
    instances: int = typer.Option(1, min=1, help="Triton pipeline model instances (stub processes)"),
    component_instances: int = typer.Option(1, min=1, help="instances of each Triton component model"),
    overwrite: bool = typer.Option(False, help="replace a bundle (and Triton models) an earlier export wrote; "
                                   "nothing else is ever replaced"),
    check: bool = typer.Option(True, help="load what was written and compare its probabilities with eager (same "
                               "fixed noise, batch 2)"),
    verify: bool = typer.Option(False, help="then run `robustwrap verify` on the engine and precision exported, with "
                                "its defaults (1,000 held-out MNIST digits, 64 attacked; minutes): exit 1 if it fails"),
) -> None:
    """Export the defended model as a bundle (+ TensorRT engines, + a Triton repository), or check torch.compile."""
    import torch

    from robustwrap.noise import Noise

    require_finite(t_l=t_l, t_s=t_s)
    chosen = "fp16" if fp16 else precision.value
    allowed = engine_precisions(engine.value)
    if chosen not in allowed or (fp16 and engine is not Engine.trt):
        fail(f"--engine {engine.value} takes --precision {' or '.join(allowed)}, got {chosen}")
    if triton_backend is TritonBackend.openvino and (engine is not Engine.openvino or chosen != "bf16"):
        fail("--triton-backend openvino serves bf16 only (Triton's openvino backend cannot pin fp32): add --engine "
             "openvino --precision bf16, or use --triton-backend python --engine openvino for fp32 and int8")
    if triton_backend is TritonBackend.inline and engine.value not in INLINE_ENGINES:
        fail(f"--triton-backend inline runs --engine {', '.join(INLINE_ENGINES)}, got --engine {engine.value}")
    if max_request_batch < triton_max_batch:
        fail(f"--max-request-batch ({max_request_batch}) must be at least --triton-max-batch ({triton_max_batch})")
    channels, size = input_defaults(classifier, channels, image_size)
    specs = model_specs(classifier, classifier_weights, diffusion, diffusion_weights, num_classes=num_classes)
    if engine is not Engine.compile:
        _check_targets(out, triton_repo, name, specs, overwrite)
    config = defense_config(config_file, t_l=t_l, t_s=t_s, steps=steps, votes=votes)
    wrapper = build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights,
                            num_classes, channels, size, config)
    if image_size is None and wrapper.image_size:  # a classifier that only takes one size
        size = wrapper.image_size[0]
    channels = wrapper.channels or channels

    summary = Table(title=f"robustwrap export --engine {engine.value}", show_header=False,
                    caption="every |d prob| compares with the eager wrapper on 2 random images (seed 0) under the "
                            "same fixed noise (seed 1): the largest absolute difference in class probability")
    summary.add_row("models", f"classifier {classifier}, diffusion {diffusion}: {channels} x {size} x {size}")
    summary.add_row("denoiser calls x votes", f"{wrapper.plan.denoiser_calls} x {config.votes}")
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    fixed = Noise.given(torch.randn(wrapper.noise_shape(x), generator=torch.Generator().manual_seed(1)))
    if engine is Engine.compile:
        _compile_check(wrapper, x, fixed, summary, chosen)
        console.print(summary)
        return
    try:
        _write_bundle(wrapper, out, size, specs, overwrite, unrolled, noise, (chosen,) if engine is Engine.aoti else (),
                      check, x, fixed, summary)
        built = _build_engines(wrapper, out, engine, chosen, max_batch, check, x, fixed, summary)
        if engine is Engine.openvino and precision is Precision.int8:
            from robustwrap.export import quantize_bundle

            with console.status("quantising both networks to int8 (NNCF, 32 calibration digits of mnist5k:train)..."):
                package = quantize_bundle(out, wrapper)
            summary.add_row("OpenVINO int8 models", ", ".join(package.files.values()) + f" (calibration samples "
                            f"{package.calibration['samples']})")
        if triton_repo is not None:
            from robustwrap.export.triton import ServingOptions, write_triton_bundle

            backend = triton_backend.value if triton_backend else ("tensorrt" if built else "onnxruntime")
            options = ServingOptions(max_batch_size=triton_max_batch, component_max_batch=max_batch,
                                     instances=instances, component_instances=component_instances,
                                     max_request_batch=max_request_batch,
                                     max_queue_size=max_queue_size, queue_timeout_ms=queue_timeout_ms)
            served_by = {"engine": VERIFIED_ENGINE[engine.value], "precision": chosen} \
                if engine is Engine.openvino or backend == "inline" else {}
            folders = write_triton_bundle(triton_repo, out, component_backend=backend, name=name, options=options,
                                          overwrite=overwrite, **served_by)
            summary.add_row(f"triton models ({backend} components)", ", ".join(str(f) for f in folders.values()))
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        fail(str(error))
    console.print(summary)
    if verify:
        _verify(out, VERIFIED_ENGINE[engine.value], chosen)


def _verify(out: Path, engine: str, precision: str) -> None:
    """`robustwrap verify` of what was exported, with its defaults; exit 1 when it fails."""
    from robustwrap.export.verify import verify_bundle

    from .verify import print_report, run_verify

    report, written = run_verify(verify_bundle, out, engine=engine,
                                 precision=None if engine == "tensorrt" else precision)
    print_report(report, written)
    if not report.passed:
        raise typer.Exit(1)


def _check_targets(out: Path, triton_repo: Optional[Path], name: Optional[str], specs: dict, overwrite: bool) -> None:
    """Refuse, before any work, targets that may not be written (robustwrap.outputs' rule)."""
    from robustwrap.export.format import BUNDLE_LAYOUT
    from robustwrap.outputs import check_output

    try:
        check_output(out, overwrite=overwrite, layout=BUNDLE_LAYOUT)
        if triton_repo is not None:
            from robustwrap.export.triton import check_repository, default_name

            check_repository(triton_repo, name if name is not None else default_name(specs), overwrite)
    except ValueError as error:
        fail(str(error))


def _compile_check(wrapper, x, fixed, summary: Table, precision: str) -> None:
    """torch.compile the two networks (at ``precision``), run once and compare with eager (same fixed noise)."""
    import time

    import torch

    from robustwrap.export import compile_networks

    with console.status("compiling the two networks (cold compiles take a while on a CPU)..."):
        start = time.perf_counter()
        compiled = compile_networks(wrapper, precision=precision)
        with torch.no_grad():
            got = compiled(x, noise=fixed)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            want = wrapper(x, noise=fixed)
    summary.add_row("compile + first call (networks, not the loop)", f"{seconds:.1f} s")
    what = "parity" if precision == "fp32" else f"{precision} (a changed function: verify its bundle)"
    summary.add_row(f"{what} vs eager (max |d prob|, fixed noise)", f"{float((got - want).abs().max()):.2e}")


def _write_bundle(wrapper, out: Path, size: int, specs: dict, overwrite: bool, unrolled: bool, noise: NoiseMode,
                  aoti: tuple[str, ...], check: bool, x, fixed, summary: Table) -> None:
    """The bundle (the two graphs, optionally the unrolled loop and AOTInductor packages at the precisions
    ``aoti`` names), checked against eager."""
    import torch

    from robustwrap.export import export_bundle, load_bundle, load_unrolled

    mode = "explicit" if noise is NoiseMode.explicit else "in_graph"
    what = f"the denoiser, the classifier{f' and {wrapper.plan.denoiser_calls} unrolled calls' if unrolled else ''}"
    what += " (and compiling their AOTInductor packages: minutes)" if aoti else ""
    with console.status(f"exporting {what}..."):
        result = export_bundle(wrapper, out, image_size=size, specs=specs, overwrite=overwrite, unrolled=unrolled,
                               unrolled_noise=mode, aoti=aoti or False)
    parts = result.info.components
    summary.add_row("bundle", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes", ", ".join(f"{name} {spec.nodes}" for name, spec in parts.items()))
    summary.add_row("export time", f"{result.seconds:.1f} s" + ("" if unrolled else " (does not depend on steps)"))
    if not check:
        return
    loaded = load_bundle(out)
    with torch.no_grad():
        gap = float((loaded(x, noise=fixed) - wrapper(x, noise=fixed)).abs().max())
    summary.add_row("ONNX Runtime vs eager: max |d prob|", f"{gap:.2e}")
    from robustwrap.export.format import split_package_key

    for key, package in result.info.packages.items():  # "aoti", "aoti-bf16"
        engine, precision = split_package_key(key)
        packaged = load_bundle(out, engine=engine, precision=precision)
        with torch.no_grad():
            gap = float((packaged(x, noise=fixed) - wrapper(x, noise=fixed)).abs().max())
        summary.add_row(f"{engine} {precision} packages ({package.device}) vs eager: max |d prob|", f"{gap:.2e}")
    if unrolled and mode == "explicit":
        graph = load_unrolled(out)
        with torch.no_grad():
            gap = float((graph(x, fixed.tensor)[0] - wrapper(x, noise=fixed)).abs().max())
        summary.add_row("unrolled graph vs eager: max |d prob|", f"{gap:.2e}")
    elif unrolled:
        probabilities = load_unrolled(out)(x)[0]
        summary.add_row("unrolled graph vs eager", "n/a with in-graph noise (--noise explicit to compare); ran: "
                        f"probabilities sum to {float(probabilities.sum(1).mean()):.4f}")


def _build_engines(wrapper, out: Path, engine: Engine, precision_name: str, max_batch: int, check: bool, x, fixed,
                   summary: Table) -> bool:
    """TensorRT engines for every graph of the bundle (--engine trt on a GPU); True when built."""
    import torch

    from robustwrap.noise import Noise

    if engine is not Engine.trt:
        return False
    if not torch.cuda.is_available():
        summary.add_row("TensorRT engines", "skipped: no CUDA GPU visible here (the ONNX bundle is written; "
                        "build later with robustwrap.export.build_bundle_engines on a GPU machine)")
        return False
    from robustwrap.export import build_bundle_engines, load_bundle

    with console.status("building the TensorRT engines..."):
        builds = build_bundle_engines(out, precision=precision_name, max_batch=max_batch, opt_batch=min(8, max_batch))
    summary.add_row("TensorRT engines", ", ".join(f"{b.path.name} ({b.bytes / 1e6:.1f} MB)"
                                                 for b in builds.values()) + f", {precision_name}")
    if check:
        engines = load_bundle(out, engine="tensorrt", device="cuda")
        with torch.no_grad():
            gap = float((engines(x.cuda(), noise=Noise.given(fixed.tensor.cuda())).cpu() - wrapper(x, noise=fixed)).abs().max())
        summary.add_row("TensorRT vs eager: max |d prob|", f"{gap:.2e}")
    return True
