"""`robustwrap export`: write the defended model as an ONNX component bundle, TensorRT engines, a
single graph or a Triton repository, and check what was written against eager."""

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
    compile = "compile"


class NoiseMode(str, Enum):
    in_graph = "in-graph"
    explicit = "explicit"


class GraphMode(str, Enum):
    components = "components"
    single = "single"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def export_command(
    engine: Engine = typer.Option(Engine.onnx, help="onnx (ONNX Runtime), trt (TensorRT engines, needs a GPU) or "
                                  "compile (torch.compile the networks and compare with eager)"),
    out: Optional[Path] = typer.Option(None, help="bundle folder to write (default robustwrap-bundle); with "
                                       "--graph single the .onnx file (default robustwrap.onnx)"),
    graph: GraphMode = typer.Option(GraphMode.components, help="components: the denoiser and the classifier as two "
                                    "graphs, the loop runs in robustwrap (steps, votes change at load time; export "
                                    "time does not grow with steps); single: the whole loop unrolled into one "
                                    "self-contained graph (small budgets only: size and export time grow with the calls)"),
    classifier: str = typer.Option("mnist", help=CLASSIFIER_SPECS),
    classifier_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    diffusion: str = typer.Option("mnist", help=DIFFUSION_SPECS),
    diffusion_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    num_classes: int = typer.Option(10, min=2),
    channels: Optional[int] = typer.Option(None, min=1, help=CHANNELS_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help="input size of the defended model (square); default: "
                                             "28 for mnist, else 32 (or what the classifier only takes)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + "; embedded in the bundle"),
    steps: Optional[int] = typer.Option(None, min=1, help=STEPS_HELP),
    t_l: Optional[float] = typer.Option(None, help=T_L_HELP),
    t_s: Optional[float] = typer.Option(None, help=T_S_HELP),
    votes: Optional[int] = typer.Option(None, min=1, help="S purifications per image; default 1"),
    noise: NoiseMode = typer.Option(NoiseMode.in_graph, help="--graph single: in-graph random ops, or noise as a graph input"),
    with_purified: bool = typer.Option(False, help="--graph single: also output the purified images"),
    max_batch: int = typer.Option(64, min=1, help="rows per network call for TensorRT profiles and Triton "
                                  "(the denoiser sees images x votes rows)"),
    precision: Precision = typer.Option(Precision.fp32, help="TensorRT kernels: fp32, fp16 or bf16 (TensorRT 10)"),
    fp16: bool = typer.Option(False, help="TensorRT: same as --precision fp16"),
    triton_repo: Optional[Path] = typer.Option(None, help="also write a Triton model repository here"),
    overwrite: bool = typer.Option(False, help="replace an existing bundle folder"),
    check: bool = typer.Option(True, help="load what was written and compare its probabilities with eager (same fixed "
                               "noise, batch 2)"),
) -> None:
    """Export the defended model: a component bundle (default), TensorRT engines, a single graph, or a compile check."""
    import torch

    require_finite(t_l=t_l, t_s=t_s)
    channels, size = input_defaults(classifier, channels, image_size)
    out = out or Path("robustwrap.onnx" if graph is GraphMode.single else "robustwrap-bundle")
    if engine is not Engine.compile and not out.parent.resolve().is_dir():
        fail(f"cannot write {out}: folder {out.parent} does not exist")
    if engine is not Engine.compile and graph is GraphMode.components and out.exists() and not overwrite:
        fail(f"{out} exists: choose another --out or pass --overwrite")
    config = defense_config(config_file, t_l=t_l, t_s=t_s, steps=steps, votes=votes)
    wrapper = build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights,
                            num_classes, channels, size, config)
    if image_size is None and wrapper.image_size:  # a classifier that only takes one size
        size = wrapper.image_size[0]
    channels = wrapper.channels or channels
    precision_name = "fp16" if fp16 else precision.value

    summary = Table(title=f"robustwrap export --engine {engine.value} --graph {graph.value}", show_header=False)
    summary.add_row("models", f"classifier {classifier}, diffusion {diffusion}: {channels} x {size} x {size}")
    summary.add_row("denoiser calls x votes", f"{wrapper.plan.denoiser_calls} x {config.votes}")
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    fixed = torch.randn(wrapper.noise_shape(x), generator=torch.Generator().manual_seed(1))
    if engine is Engine.compile:
        _compile_check(wrapper, x, fixed, summary)
    elif graph is GraphMode.components:
        specs = model_specs(classifier, classifier_weights, diffusion, diffusion_weights, num_classes=num_classes)
        _write_bundle(wrapper, out, size, specs, overwrite, check, engine, precision_name, max_batch, triton_repo,
                      x, fixed, summary)
    else:
        _write_single_graph(wrapper, out, engine, noise, with_purified, max_batch, check, precision_name,
                            triton_repo, (channels, size), summary)
    console.print(summary)


def _compile_check(wrapper, x, fixed, summary: Table) -> None:
    """torch.compile the two networks, run once and compare with eager (same fixed noise)."""
    import time

    import torch

    from robustwrap.export import compile_networks

    with console.status("compiling the two networks (cold compiles take a while on a CPU)..."):
        start = time.perf_counter()
        compiled = compile_networks(wrapper)
        with torch.no_grad():
            got = compiled(x, noise=fixed)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            want = wrapper(x, noise=fixed)
    summary.add_row("compile + first call (networks, not the loop)", f"{seconds:.1f} s")
    summary.add_row("parity vs eager (max |d prob|, fixed noise)", f"{float((got - want).abs().max()):.2e}")


def _write_bundle(wrapper, out: Path, size: int, specs: dict, overwrite: bool, check: bool, engine: Engine,
                  precision_name: str, max_batch: int, triton_repo: Optional[Path], x, fixed, summary: Table) -> None:
    """The component bundle (denoiser + classifier graphs), its engines and Triton models, each checked."""
    import torch

    from robustwrap.export import export_bundle, load_bundle

    try:
        with console.status("exporting the denoiser and the classifier..."):
            result = export_bundle(wrapper, out, image_size=size, specs=specs, overwrite=overwrite)
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        fail(str(error))
    files = result.config["files"]
    summary.add_row("bundle", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes", f"denoiser {files['denoiser']['nodes']}, classifier {files['classifier']['nodes']}")
    summary.add_row("export time", f"{result.seconds:.1f} s (does not depend on steps)")
    if check:
        loaded = load_bundle(out)
        with torch.no_grad():
            gap = float((loaded(x, noise=fixed) - wrapper(x, noise=fixed)).abs().max())
        summary.add_row("ONNX Runtime vs eager: max |d prob|", f"{gap:.2e}")
    if engine is Engine.trt and not torch.cuda.is_available():
        summary.add_row("TensorRT engines", "skipped: no CUDA GPU visible here (the ONNX bundle is written; "
                        "build later with robustwrap.export.build_bundle_engines on a GPU machine)")
    elif engine is Engine.trt:
        from robustwrap.export import build_bundle_engines

        try:
            with console.status("building the TensorRT engines..."):
                builds = build_bundle_engines(out, precision=precision_name, max_batch=max_batch,
                                              opt_batch=min(8, max_batch))
        except (RuntimeError, ValueError, ImportError) as error:
            fail(str(error))
        summary.add_row("TensorRT engines", ", ".join(f"{b.path.name} ({b.bytes / 1e6:.1f} MB)"
                                                     for b in builds.values()) + f", {precision_name}")
        if check:
            engines = load_bundle(out, engine="tensorrt", device="cuda")
            with torch.no_grad():
                gap = float((engines(x.cuda(), noise=fixed.cuda()).cpu() - wrapper(x, noise=fixed)).abs().max())
            summary.add_row("TensorRT vs eager: max |d prob|", f"{gap:.2e}")
    if triton_repo is not None:
        from robustwrap.export import write_triton_bundle

        built = engine is Engine.trt and (out / "denoiser.plan").is_file()
        folders = write_triton_bundle(triton_repo, out, backend="tensorrt" if built else "onnxruntime",
                                      max_batch_size=max_batch)
        summary.add_row("triton models", ", ".join(str(f) for f in folders.values()))


def _write_single_graph(wrapper, out: Path, engine: Engine, noise: NoiseMode, with_purified: bool, max_batch: int,
                        check: bool, precision_name: str, triton_repo: Optional[Path], shape: tuple[int, int],
                        summary: Table) -> None:
    """The whole loop unrolled into one ONNX graph, its engine and Triton model, checked where possible."""
    import time

    import torch

    from robustwrap.export import OnnxRunner, export_onnx, onnx_parity, write_triton_repository

    onnx_path = out if engine is Engine.onnx else out.with_suffix(".onnx")
    engine_path = out.with_suffix(".plan")  # trt: never over the ONNX file it is built from
    mode = "explicit" if noise is NoiseMode.explicit else "in_graph"
    try:
        with console.status(f"exporting to ONNX ({wrapper.plan.denoiser_calls} unrolled denoiser calls)..."):
            start = time.perf_counter()
            result = export_onnx(wrapper, onnx_path, noise=mode, with_purified=with_purified, max_batch=max_batch)
            seconds = time.perf_counter() - start
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        fail(str(error))
    summary.add_row("file", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes / opset", f"{result.nodes} / {result.opset}")
    summary.add_row("ops", ", ".join(result.op_types))
    summary.add_row("export time", f"{seconds:.1f} s")
    runner = OnnxRunner(onnx_path, providers=["CPUExecutionProvider"])
    if check and runner.explicit_noise:
        summary.add_row("parity vs eager (max |d prob|, batch 3)", f"{onnx_parity(wrapper, runner):.2e}")
    elif check:
        channels, size = shape
        scores = runner(torch.rand(2, channels, size, size))[0]
        summary.add_row("parity vs eager", "n/a with in-graph noise (export --noise explicit to compare); "
                        f"ran: scores sum to {float(scores.sum(1).mean()):.4f}")
    built = False
    if engine is Engine.trt and not torch.cuda.is_available():
        summary.add_row("TensorRT engine", "skipped: no CUDA GPU visible here (the ONNX graph is written)")
    elif engine is Engine.trt:
        from robustwrap.export import build_engine

        try:
            with console.status("building the TensorRT engine..."):
                build = build_engine(onnx_path, engine_path, max_batch=max_batch, opt_batch=min(8, max_batch),
                                     precision=precision_name, timing_cache=out.with_suffix(".timing-cache"))
        except (RuntimeError, ValueError, ImportError) as error:
            fail(str(error))
        built = True
        summary.add_row("engine", f"{build.path} ({build.bytes / 1e6:.1f} MB, {build.precision})")
    if triton_repo is not None:
        folder = write_triton_repository(
            triton_repo, onnx_path, backend="tensorrt" if built else "onnxruntime",
            engine_path=engine_path if built else None, max_batch_size=max_batch,
        )
        summary.add_row("triton model", str(folder))
