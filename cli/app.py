"""The `robustwrap` command line. Library code never prints; this module does, through rich."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Wrap image classifiers in a diffusion-purification defense.", no_args_is_help=True)
console = Console()


@app.command()
def version() -> None:
    """Print the versions of robustwrap and of the libraries it runs on."""
    import timm
    import torch

    import robustwrap

    console.print(f"robustwrap {robustwrap.__version__}, torch {torch.__version__}, timm {timm.__version__}")


@app.command()
def inspect(
    model: str = typer.Argument(..., help="a timm model name, e.g. resnet50 (built without weights)"),
    image_size: int = typer.Option(None, help="input size to probe; default: the model's declared size"),
) -> None:
    """Show what RobustWrapper infers for a classifier: stage modules, their maps, normalisation."""
    import timm
    import torch

    from robustwrap.hooks import StageHooks, infer_stage_modules
    from robustwrap.inputs import infer_classifier_spec, infer_normalization

    try:
        classifier = timm.create_model(model, pretrained=False).eval()
    except RuntimeError as error:  # timm: unknown model name
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    channels, declared_size = infer_classifier_spec(classifier)
    size = (image_size, image_size) if image_size else declared_size or (224, 224)
    try:
        blocks = infer_stage_modules(classifier)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    with StageHooks(classifier, blocks) as hooks, torch.no_grad():
        classifier(torch.zeros(1, channels or 3, *size))
        shapes = [tuple(a.shape[1:]) for a in hooks.pop()]

    table = Table(title=f"{model}: stages used for the attention mask (input {size})")
    table.add_column("module")
    table.add_column("output (C, H, W)")
    for name, shape in zip(blocks, shapes):
        table.add_row(name, str(shape))
    console.print(table)
    console.print(f"normalization inside the wrapper: {infer_normalization(classifier)}")


class Engine(str, Enum):
    onnx = "onnx"
    trt = "trt"
    compile = "compile"


class NoiseMode(str, Enum):
    in_graph = "in-graph"
    explicit = "explicit"


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command("export")
def export_command(
    engine: Engine = typer.Option(Engine.onnx, help="onnx (ONNX Runtime), trt (TensorRT engine, needs a GPU) or compile"),
    out: Path = typer.Option(Path("robustwrap.onnx"), help="file to write (.onnx, or .plan for trt)"),
    classifier: str = typer.Option("small-resnet", help="timm:<name>, torchvision:<name> or small-resnet"),
    classifier_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    diffusion: str = typer.Option("small-unet", help="small-unet or diffusers:<local folder>"),
    diffusion_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    num_classes: int = typer.Option(10, min=2),
    channels: int = typer.Option(3, min=1),
    image_size: int = typer.Option(32, min=8, help="input size of the defended model (square)"),
    steps: int = typer.Option(50, min=1, help="DDIM grid over 1000 steps (t_l=0.2: steps/5 denoiser calls)"),
    t_l: float = typer.Option(0.2),
    t_s: float = typer.Option(0.1),
    votes: int = typer.Option(1, min=1, help="S purifications per image"),
    noise: NoiseMode = typer.Option(NoiseMode.in_graph, help="in-graph random ops, or noise as a graph input"),
    with_purified: bool = typer.Option(False, help="also output the purified images"),
    max_batch: int = typer.Option(32, min=1),
    fp16: bool = typer.Option(False, help="TensorRT: allow fp16 kernels"),
    triton_repo: Optional[Path] = typer.Option(None, help="also write a Triton model repository here"),
) -> None:
    """Export the defended model: an ONNX graph, a TensorRT engine, or a compiled module check."""
    import time

    import torch

    from robustwrap import PurifyConfig, RobustWrapper
    from robustwrap.specs import build_classifier, build_diffusion

    if engine is Engine.trt and not torch.cuda.is_available():
        _fail("a TensorRT engine needs a CUDA GPU and none is visible here; export --engine onnx instead")
    if engine is not Engine.compile and not out.parent.resolve().is_dir():
        _fail(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        config = PurifyConfig(t_l=t_l, t_s=t_s, steps=steps, votes=votes)
        wrapper = RobustWrapper(
            build_classifier(classifier, num_classes=num_classes, channels=channels,
                             weights=str(classifier_weights) if classifier_weights else None),
            build_diffusion(diffusion, channels=channels, image_size=image_size,
                            weights=str(diffusion_weights) if diffusion_weights else None),
            config,
            image_size=image_size,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))

    summary = Table(title=f"robustwrap export --engine {engine.value}", show_header=False)
    summary.add_row("denoiser calls x votes", f"{wrapper.plan.denoiser_calls} x {config.votes}")
    if engine is Engine.compile:
        from robustwrap.export import compile_wrapper, graph_breaks

        x = torch.rand(3, channels, image_size, image_size)
        fixed = torch.randn(wrapper.noise_shape(x))
        breaks = graph_breaks(wrapper, x, fixed)
        with console.status("compiling (cold compiles take about a minute on a CPU)..."):
            start = time.perf_counter()
            compiled = compile_wrapper(wrapper)
            with torch.no_grad():
                got = compiled(x, noise=fixed)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                want = wrapper(x, noise=fixed)
        summary.add_row("graph breaks", str(len(breaks)) + (f": {breaks}" if breaks else ""))
        summary.add_row("compile + first call", f"{seconds:.1f} s")
        summary.add_row("parity vs eager (max |d prob|, fixed noise)", f"{float((got - want).abs().max()):.2e}")
        console.print(summary)
        return

    from robustwrap.export import OnnxRunner, export_onnx, onnx_parity, write_triton_repository

    onnx_path = out if engine is Engine.onnx else out.with_suffix(".onnx")
    mode = "explicit" if noise is NoiseMode.explicit else "in_graph"
    try:
        with console.status(f"exporting to ONNX ({wrapper.plan.denoiser_calls} unrolled denoiser calls)..."):
            start = time.perf_counter()
            result = export_onnx(wrapper, onnx_path, noise=mode, with_purified=with_purified, max_batch=max_batch)
            seconds = time.perf_counter() - start
    except (ValueError, ImportError, OSError, RuntimeError) as error:
        _fail(str(error))
    summary.add_row("file", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes / opset", f"{result.nodes} / {result.opset}")
    summary.add_row("ops", ", ".join(result.op_types))
    summary.add_row("export time", f"{seconds:.1f} s")
    runner = OnnxRunner(onnx_path, providers=["CPUExecutionProvider"])
    if runner.explicit_noise:
        summary.add_row("parity vs eager (max |d prob|, batch 3)", f"{onnx_parity(wrapper, runner):.2e}")
    else:
        scores = runner(torch.rand(2, channels, image_size, image_size))[0]
        summary.add_row("parity vs eager", "n/a with in-graph noise (export --noise explicit to compare); "
                        f"ran: scores sum to {float(scores.sum(1).mean()):.4f}")
    if engine is Engine.trt:
        from robustwrap.export import build_engine

        with console.status("building the TensorRT engine..."):
            build = build_engine(onnx_path, out, max_batch=max_batch, opt_batch=min(8, max_batch), fp16=fp16,
                                 timing_cache=out.with_suffix(".timing-cache"))
        summary.add_row("engine", f"{build.path} ({build.bytes / 1e6:.1f} MB, fp16={build.fp16})")
    if triton_repo is not None:
        folder = write_triton_repository(
            triton_repo, onnx_path, backend="tensorrt" if engine is Engine.trt else "onnxruntime",
            engine_path=out if engine is Engine.trt else None, max_batch_size=max_batch,
        )
        summary.add_row("triton model", str(folder))
    console.print(summary)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
