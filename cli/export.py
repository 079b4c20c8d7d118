"""`robustwrap export`: write the defended model as a bundle (the two networks, optionally the
unrolled loop), its TensorRT engines and a Triton repository, and check each against eager."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional, get_args

import typer
from rich.table import Table

from .common import CHANNELS_HELP, CONFIG_HELP, console, fail, input_defaults
from .groups import MODELS, SERVING, DefenseSetting, Models, defense_group, takes
from robustwrap.export.bundle import NoiseMode as UnrolledNoise
from robustwrap.export.parity import PRECISION_HELP, TARGET_HELP, TARGETS, target_precisions
from robustwrap.export.triton.repository import BACKEND_HELP, COMPONENT_BACKENDS


def _choices(name: str, values) -> type[Enum]:
    """A typer choice whose values are the library's own names."""
    return Enum(name, [(v, v) for v in values], type=str)


Engine = _choices("Engine", TARGETS)
NoiseMode = _choices("NoiseMode", get_args(UnrolledNoise))
Precision = _choices("Precision", dict.fromkeys(p for t in TARGETS for p in target_precisions(t)))
TritonBackend = _choices("TritonBackend", COMPONENT_BACKENDS)


@takes(models=MODELS, setting=defense_group(config_help=CONFIG_HELP + "; saved in the bundle"), serving=SERVING)
def export_command(
    engine: Engine = typer.Option("onnx", help=TARGET_HELP),
    out: Path = typer.Option(Path("robustwrap-bundle"), help="the bundle folder to write"),
    models: Models = None,
    channels: Optional[int] = typer.Option(None, min=1, help=CHANNELS_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help="input size of the defended model (square); default: "
                                             "28 for mnist, else 32 (or what the classifier only takes)"),
    setting: DefenseSetting = None,
    unrolled: bool = typer.Option(False, help="also write unrolled.onnx in the bundle: the whole loop at these "
                                  "settings in one graph, no Python at serving time (size and export time grow with "
                                  "the denoiser calls: a few calls only)"),
    noise: NoiseMode = typer.Option("in_graph", help="--unrolled: in-graph random ops, or noise as an input"),
    max_batch: int = typer.Option(64, min=1, help="rows per network call for TensorRT profiles and the Triton "
                                  "component models (the denoiser sees images x votes rows)"),
    precision: Precision = typer.Option("fp32", help=PRECISION_HELP),
    fp16: bool = typer.Option(False, help="TensorRT: same as --precision fp16"),
    triton_repo: Optional[Path] = typer.Option(None, help="also write this defense's models into this Triton model "
                                               "repository (other models in it stay)"),
    triton_backend: Optional[TritonBackend] = typer.Option(None, help=BACKEND_HELP),
    name: Optional[str] = typer.Option(None, help="the Triton model name (components NAME-classifier, "
                                       "NAME-denoiser); default from the specs, e.g. mnist-mnist"),
    serving: dict = None,
    overwrite: bool = typer.Option(False, help="replace a bundle (and Triton models) an earlier export wrote; "
                                   "nothing else is ever replaced"),
    check: bool = typer.Option(True, help="load what was written and compare its probabilities with eager (same "
                               "fixed noise, batch 2)"),
    verify: bool = typer.Option(False, help="then run `robustwrap verify` on the engine and precision exported, with "
                                "its defaults (1,000 held-out MNIST digits, 64 attacked; minutes): exit 1 if it fails"),
) -> None:
    """Export the defended model as a bundle (+ TensorRT engines, + a Triton repository), or check torch.compile."""
    from robustwrap.export.parity import bundle_parity, check_choice, compile_parity, parity_inputs

    chosen = "fp16" if fp16 else precision.value
    backend = triton_backend.value if triton_backend else None
    try:
        check_choice(engine.value, chosen, triton_backend=backend, triton_max_batch=serving["max_batch_size"],
                     max_request_batch=serving["max_request_batch"])
    except ValueError as error:
        fail(str(error))
    channels, size = input_defaults(models.classifier, channels, image_size)
    specs = models.record(num_classes=models.num_classes)
    if engine.value != "compile":
        _check_targets(out, triton_repo, name, specs, overwrite)
    config = setting.build()
    wrapper = models.build(channels, size, config)
    size = wrapper.image_size[0] if image_size is None and wrapper.image_size else size  # a one-size classifier
    channels = wrapper.channels or channels
    summary = Table(title=f"robustwrap export --engine {engine.value}", show_header=False,
                    caption="every |d prob| compares with the eager wrapper on 2 random images (seed 0) under the "
                            "same fixed noise (seed 1): the largest absolute difference in class probability")
    summary.add_row("models", f"classifier {models.classifier}, diffusion {models.diffusion}: {channels} x {size} x {size}")
    summary.add_row("denoiser calls x votes", f"{wrapper.plan.denoiser_calls} x {config.votes}")
    x, fixed = parity_inputs(wrapper, channels, size)
    if engine.value == "compile":
        with console.status("compiling the two networks (cold compiles take a while on a CPU)..."):
            seconds, parity = compile_parity(wrapper, x, fixed, chosen)
        summary.add_row("compile + first call (networks, not the loop)", f"{seconds:.1f} s")
        _add(summary, [parity])
        console.print(summary)
        return
    console.print(f"writing: {out}" + (f" and Triton models in {triton_repo}" if triton_repo else ""))
    try:
        _write_bundle(wrapper, out, size, specs, overwrite, unrolled, noise.value, chosen if engine.value == "aoti"
                      else None, summary)
        if check:
            with console.status("comparing what was written with eager..."):
                _add(summary, bundle_parity(wrapper, out, x, fixed))
        built = _build_engines(wrapper, out, engine.value, chosen, max_batch, check, x, fixed, summary)
        if engine.value == "openvino" and chosen == "int8":
            from robustwrap.export import quantize_bundle

            with console.status("quantising both networks to int8 (NNCF, 32 calibration digits of mnist5k:train)..."):
                package = quantize_bundle(out, wrapper)
            summary.add_row("OpenVINO int8 models", ", ".join(package.files.values()) + f" (calibration samples "
                            f"{package.calibration['samples']})")
        if triton_repo is not None:
            from robustwrap.export.triton import ServingOptions, write_triton_bundle

            backend = backend or ("tensorrt" if built else "onnxruntime")
            options = ServingOptions(**serving, component_max_batch=max_batch)
            served_by = {"engine": TARGETS[engine.value], "precision": chosen} \
                if engine.value == "openvino" or backend == "inline" else {}
            folders = write_triton_bundle(triton_repo, out, component_backend=backend, name=name, options=options,
                                          overwrite=overwrite, **served_by)
            summary.add_row(f"triton models ({backend} components)", ", ".join(str(f) for f in folders.values()))
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        fail(str(error))
    console.print(summary)
    if verify:
        _verify(out, TARGETS[engine.value], chosen)


def _add(summary: Table, parities) -> None:
    """One row per comparison: its max |d prob|, or what was checked instead."""
    for parity in parities:
        summary.add_row(f"{parity.what}" + (": max |d prob|" if parity.gap is not None and "max" not in parity.what
                                            else ""), parity.note if parity.gap is None else f"{parity.gap:.2e}")


def _verify(out: Path, engine: str, precision: str) -> None:
    """`robustwrap verify` of what was exported, with its defaults; exit 1 when it fails."""
    from robustwrap.export.verifier import verify_bundle

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


def _write_bundle(wrapper, out: Path, size: int, specs: dict, overwrite: bool, unrolled: bool, noise: str,
                  aoti: Optional[str], summary: Table) -> None:
    """The bundle: the two graphs, optionally the unrolled loop and AOTInductor packages at precision ``aoti``."""
    from robustwrap.export import export_bundle

    what = f"the denoiser, the classifier{f' and {wrapper.plan.denoiser_calls} unrolled calls' if unrolled else ''}"
    what += " (and compiling their AOTInductor packages: minutes)" if aoti else ""
    with console.status(f"exporting {what}..."):
        result = export_bundle(wrapper, out, image_size=size, specs=specs, overwrite=overwrite, unrolled=unrolled,
                               unrolled_noise=noise, aoti=(aoti,) if aoti else False)
    summary.add_row("bundle", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes", ", ".join(f"{name} {spec.nodes}" for name, spec in result.info.components.items()))
    summary.add_row("export time", f"{result.seconds:.1f} s" + ("" if unrolled else " (does not depend on steps)"))


def _build_engines(wrapper, out: Path, engine: str, precision: str, max_batch: int, check: bool, x, fixed,
                   summary: Table) -> bool:
    """TensorRT engines for every graph of the bundle (--engine trt on a GPU); True when built."""
    import torch

    if engine != "trt":
        return False
    if not torch.cuda.is_available():
        summary.add_row("TensorRT engines", "skipped: no CUDA GPU visible here (the ONNX bundle is written; "
                        "build later with robustwrap.export.build_bundle_engines on a GPU machine)")
        return False
    from robustwrap.export import build_bundle_engines
    from robustwrap.export.parity import engine_parity

    with console.status("building the TensorRT engines..."):
        builds = build_bundle_engines(out, precision=precision, max_batch=max_batch, opt_batch=min(8, max_batch))
    summary.add_row("TensorRT engines", ", ".join(f"{b.path.name} ({b.bytes / 1e6:.1f} MB)"
                                                 for b in builds.values()) + f", {precision}")
    if check:
        _add(summary, [engine_parity(wrapper, out, x, fixed)])
    return True
