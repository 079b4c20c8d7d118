"""The `robustwrap` command line. Library code never prints; this module does, through rich."""

from __future__ import annotations

import dataclasses
import os
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich import box
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
    """Show where RobustWrapper reads a classifier's stage maps, their shapes, and its normalisation."""
    import timm
    import torch

    from robustwrap.inputs import classifier_fixed_size, infer_classifier_spec, infer_normalization
    from robustwrap.stages import infer_stage_source

    try:
        classifier = timm.create_model(model, pretrained=False).eval()
    except RuntimeError as error:  # timm: unknown model name
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    channels, declared_size = infer_classifier_spec(classifier)
    size = (image_size, image_size) if image_size else declared_size or (224, 224)
    try:
        source = infer_stage_source(classifier, probe_size=size)
        with torch.no_grad():
            shapes = [tuple(a.shape[1:]) for a in source.capture(classifier, torch.zeros(1, channels or 3, *size))]
    except (ValueError, RuntimeError, AssertionError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error

    table = Table(title=f"{model}: stage maps for the attention mask (input {size})")
    table.add_column("source")
    table.add_column("map (C, H, W)")
    for line, shape in zip(source.describe(), shapes):
        table.add_row(line, str(shape))
    console.print(table)
    fixed = classifier_fixed_size(classifier)
    console.print(f"input sizes: {'only ' + str(fixed) if fixed else 'any the network takes'}; "
                  f"normalization inside the wrapper: {infer_normalization(classifier)}")


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


def _build_wrapper(classifier: str, classifier_weights: Optional[Path], diffusion: str,
                   diffusion_weights: Optional[Path], num_classes: int, channels: int, image_size: int, config):
    """The defended model from CLI specs; a bad spec or weight file ends the command with exit code 2."""
    from robustwrap import RobustWrapper
    from robustwrap.specs import build_classifier, build_diffusion

    from robustwrap.store import SHIPPED_CLASSIFIERS, SHIPPED_DIFFUSION

    def carries_weights(spec: str, shipped: dict) -> bool:
        return spec in shipped or spec == "cifar10-resnet18" or spec.startswith(("checkpoint:", "robustbench:", "diffusers:", "hf:"))

    untrained = (classifier_weights is None and not carries_weights(classifier, SHIPPED_CLASSIFIERS)) or (
        diffusion_weights is None and not carries_weights(diffusion, SHIPPED_DIFFUSION)
    )
    try:
        wrapper = RobustWrapper(
            build_classifier(classifier, num_classes=num_classes, channels=channels,
                             weights=str(classifier_weights) if classifier_weights else None),
            build_diffusion(diffusion, channels=channels, image_size=image_size,
                            weights=str(diffusion_weights) if diffusion_weights else None),
            config,
            image_size=image_size,
        )
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
        _fail(str(error))
    if untrained and os.environ.get("RANK", "0") == "0":  # only once the specs are known to be valid
        console.print("[yellow]note:[/yellow] networks without --*-weights have random weights: "
                      "this exercises the pipeline, its accuracy means nothing")
    return wrapper


class GraphMode(str, Enum):
    components = "components"
    single = "single"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@app.command("export")
def export_command(
    engine: Engine = typer.Option(Engine.onnx, help="onnx (ONNX Runtime), trt (TensorRT engines, needs a GPU) or "
                                  "compile (torch.compile the networks and compare with eager)"),
    out: Optional[Path] = typer.Option(None, help="bundle folder to write (default robustwrap-bundle); with "
                                       "--graph single the .onnx file (default robustwrap.onnx)"),
    graph: GraphMode = typer.Option(GraphMode.components, help="components: the denoiser and the classifier as two "
                                    "graphs, the loop runs in robustwrap (steps, votes change at load time; export "
                                    "time does not grow with steps); single: the whole loop unrolled into one "
                                    "self-contained graph (small budgets only: size and export time grow with the calls)"),
    classifier: str = typer.Option("mnist", help="mnist (shipped), cifar10-resnet18, timm:<name>, torchvision:<name>, "
                                   "small-resnet, robustbench:<dataset>/<threat>/<name> or checkpoint:<file>"),
    classifier_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    diffusion: str = typer.Option("mnist", help="mnist (shipped), small-unet, diffusers:<local folder> or checkpoint:<file>"),
    diffusion_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    num_classes: int = typer.Option(10, min=2),
    channels: Optional[int] = typer.Option(None, min=1, help="the models' channels; default: 1 for mnist, else 3"),
    image_size: Optional[int] = typer.Option(None, min=8, help="input size of the defended model (square); default: "
                                             "28 for mnist, else 32 (or what the classifier only takes)"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="a PurifyConfig file (.json/.toml, e.g. "
                                               "`robustwrap tune`'s best.json), embedded in the bundle; --steps, "
                                               "--t-l, --t-s and --votes override it when given"),
    steps: Optional[int] = typer.Option(None, min=1, help="DDIM grid over 1000 steps (t_l=0.2: steps/5 denoiser "
                                        "calls); default 50"),
    t_l: Optional[float] = typer.Option(None, help="strong-noise level t_l, fraction of 1000; default 0.2"),
    t_s: Optional[float] = typer.Option(None, help="weak-noise level t_s, fraction of 1000; default 0.1"),
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
    import time

    import torch

    _require_finite(t_l=t_l, t_s=t_s)
    channels = channels or (1 if classifier == "mnist" else 3)
    size = image_size or (28 if classifier == "mnist" else 32)
    if graph is GraphMode.single:
        out = out or Path("robustwrap.onnx")
    else:
        out = out or Path("robustwrap-bundle")
    if engine is not Engine.compile and not out.parent.resolve().is_dir():
        _fail(f"cannot write {out}: folder {out.parent} does not exist")
    if engine is not Engine.compile and graph is GraphMode.components and out.exists() and not overwrite:
        _fail(f"{out} exists: choose another --out or pass --overwrite")
    config = _defense_config(config_file, t_l=t_l, t_s=t_s, steps=steps, votes=votes)
    wrapper = _build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights,
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
        console.print(summary)
        return

    if graph is GraphMode.components:
        from robustwrap.export import export_bundle, load_bundle

        specs = {"classifier": classifier, "diffusion": diffusion, "num_classes": num_classes,
                 "classifier_weights": str(classifier_weights) if classifier_weights else None,
                 "diffusion_weights": str(diffusion_weights) if diffusion_weights else None}
        try:
            with console.status("exporting the denoiser and the classifier..."):
                result = export_bundle(wrapper, out, image_size=size, specs=specs, overwrite=overwrite)
        except (ValueError, ImportError, OSError, RuntimeError) as error:
            _fail(str(error))
        files = result.config["files"]
        summary.add_row("bundle", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
        summary.add_row("nodes", f"denoiser {files['denoiser']['nodes']}, classifier {files['classifier']['nodes']}")
        summary.add_row("export time", f"{result.seconds:.1f} s (does not depend on steps)")
        if check:
            loaded = load_bundle(out)
            with torch.no_grad():
                gap = float((loaded(x, noise=fixed) - wrapper(x, noise=fixed)).abs().max())
            summary.add_row("ONNX Runtime vs eager: max |d prob|", f"{gap:.2e}")
        if engine is Engine.trt:
            if not torch.cuda.is_available():
                summary.add_row("TensorRT engines", "skipped: no CUDA GPU visible here (the ONNX bundle is written; "
                                "build later with robustwrap.export.build_bundle_engines on a GPU machine)")
            else:
                from robustwrap.export import build_bundle_engines

                try:
                    with console.status("building the TensorRT engines..."):
                        builds = build_bundle_engines(out, precision=precision_name, max_batch=max_batch,
                                                      opt_batch=min(8, max_batch))
                except (RuntimeError, ValueError, ImportError) as error:
                    _fail(str(error))
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
        console.print(summary)
        return

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
        _fail(str(error))
    summary.add_row("file", f"{result.path} ({result.bytes / 1e6:.1f} MB)")
    summary.add_row("nodes / opset", f"{result.nodes} / {result.opset}")
    summary.add_row("ops", ", ".join(result.op_types))
    summary.add_row("export time", f"{seconds:.1f} s")
    runner = OnnxRunner(onnx_path, providers=["CPUExecutionProvider"])
    if not check:
        pass
    elif runner.explicit_noise:
        summary.add_row("parity vs eager (max |d prob|, batch 3)", f"{onnx_parity(wrapper, runner):.2e}")
    else:
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
            _fail(str(error))
        built = True
        summary.add_row("engine", f"{build.path} ({build.bytes / 1e6:.1f} MB, {build.precision})")
    if triton_repo is not None:
        folder = write_triton_repository(
            triton_repo, onnx_path, backend="tensorrt" if built else "onnxruntime",
            engine_path=engine_path if built else None, max_batch_size=max_batch,
        )
        summary.add_row("triton model", str(folder))
    console.print(summary)


class NormName(str, Enum):
    linf = "Linf"
    l2 = "L2"


class LossName(str, Enum):
    ce = "ce"
    margin = "margin"
    dlr = "dlr"


DEFENSES = ("none", "uniform", "heterogeneous", "config")
CONFIG_HELP = ("a PurifyConfig file (.json/.toml, e.g. the best.json `robustwrap tune` writes): the defense's "
               "settings; --steps, --t-l, --t-s and --votes override it when given")


def _defense_config(config: Optional[Path], **overrides: object):
    """The PurifyConfig from --config (or the defaults) with the options given on the command line."""
    from robustwrap import PurifyConfig

    try:
        base = PurifyConfig.load(config) if config is not None else PurifyConfig(steps=50)
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
ATTACK_HELP = ("comma list of pgd-eot (full gradient through every denoiser call, with EOT), bpda (identity "
               "backward through the purifier), mask-aware (gradient through a relaxed mask too), autoattack "
               "(APGD-CE + APGD-DLR with EOT, needs pyautoattack) or none (clean); each is run, and an image "
               "counts as robust only if it survives every one")


def _num(value: float, stderr: float) -> str:
    """A fraction as a percentage with its standard error: '62.5 ± 8.6'."""
    return f"{100 * value:.1f} ± {100 * stderr:.1f}"


def _require_finite(**values: Optional[float]) -> None:
    """End the command (exit 2) on a NaN or infinite float option, before anything is built or written."""
    import math

    bad = [f"--{name.replace('_', '-')} {value}" for name, value in values.items()
           if value is not None and not math.isfinite(value)]
    if bad:
        _fail(f"{', '.join(bad)}: settings must be finite numbers")


def _subset_words(subset: dict) -> str:
    """'64 of 1000 images of mnist5k:heldout (stratified, seed 0; 6-7 per class)'."""
    counts = list(subset["per_class"].values())
    spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    how = "all" if subset["rule"] == "all" else f"stratified, seed {subset['seed']}"
    return (f"{subset['size']} of {subset['of']} images of {subset['data']} "
            f"({how}; {spread} per class, {len(counts)} classes)")


def _defense_view(wrapper, defense, name: str):
    """The wrapper for one --defenses entry: the bare one for none, the config as is for config,
    else the config in that mode (uniform: all-ones mask, the DiffPure baseline)."""
    if name in ("none", "config"):
        return wrapper
    return wrapper.with_config(dataclasses.replace(defense, mode=name))


@app.command("eval")
def eval_command(
    data: str = typer.Option("mnist5k:heldout", help="mnist5k:<train|heldout>, folder:<dir>, cifar10:<dir>, foolbox:<set>, tensors:<file>"),
    classifier: str = typer.Option("mnist", help="mnist (shipped), cifar10-resnet18, timm:<name>, torchvision:<name>, "
                                   "small-resnet, robustbench:<dataset>/<threat>/<name> or checkpoint:<file>"),
    classifier_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    diffusion: str = typer.Option("mnist", help="mnist (shipped), small-unet, diffusers:<local folder> or checkpoint:<file>"),
    diffusion_weights: Optional[Path] = typer.Option(None, help="safetensors / weights-only .pt state dict"),
    num_classes: int = typer.Option(10, min=2),
    defenses: Optional[str] = typer.Option(None, help="comma list of none (bare classifier), uniform (DiffPure "
                                           "baseline, same denoiser calls), heterogeneous, config (the --config "
                                           "file's defense as it is); default none,uniform,heterogeneous, or "
                                           "none,config with --config"),
    attack: str = typer.Option("pgd-eot", help=ATTACK_HELP),
    norm: NormName = typer.Option(NormName.linf, help="threat model: Linf (max pixel change) or L2 (Euclidean norm of the change)"),
    eps: Optional[float] = typer.Option(None, help="radius of the threat model; default 0.3 (Linf) for MNIST data "
                                        "(mnist5k:*, foolbox:mnist), else 8/255 (Linf) or 0.5 (L2)"),
    loss: LossName = typer.Option(LossName.ce, help="loss PGD ascends: ce (cross-entropy), margin (Carlini-Wagner "
                                  "margin on the scores), dlr (Croce & Hein's difference of logits ratio)"),
    n_samples: int = typer.Option(64, min=0, help="images drawn from the data by a seeded stratified sample "
                                  "(each class in proportion, see --seed); 0: all"),
    batch_size: int = typer.Option(16, min=1, help="images per batch (the unit of resumption); --sanity checks one batch"),
    iters: int = typer.Option(10, min=0, help="attack iterations (the paper: 200)"),
    step_size: Optional[float] = typer.Option(None, help="PGD step; default 2.5 * eps / iters, which can cross the "
                                              "ball within the budget (Madry et al.); the paper's Linf step is 0.007"),
    eot: int = typer.Option(2, min=1, help="EOT samples per iteration (the paper: 20)"),
    surrogate_steps: Optional[int] = typer.Option(None, min=1, help="attack through `steps`=this; defend at --steps"),
    runs: int = typer.Option(1, min=1, help="R repeated evaluations of the final adversarial examples"),
    seed: int = typer.Option(0, help="seeds the subset, every attack and the defense's noise"),
    config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
    steps: Optional[int] = typer.Option(None, min=1, help="defense DDIM grid (t_l=0.2: steps/5 denoiser calls; "
                                        "default 50; the paper: 500)"),
    t_l: Optional[float] = typer.Option(None, help="strong-noise level t_l as a fraction of the 1000 diffusion steps "
                                        "(attended pixels); default 0.2"),
    t_s: Optional[float] = typer.Option(None, help="weak-noise level t_s, fraction of 1000: below it the inpainting "
                                        "stage ends; default 0.1"),
    votes: Optional[int] = typer.Option(None, min=1, help="S purifications per image, combined by the vote rule "
                                        "(hard majority by default); default 1"),
    out: Path = typer.Option(Path("eval-results"), help="folder: one subfolder of results per defense"),
    resume: bool = typer.Option(False, help="continue the runs recorded in --out"),
    sanity: bool = typer.Option(False, help="run the reviewer's sanity checks on one stratified batch of each "
                                "--defenses instead (exit code 1 when any check fails)"),
) -> None:
    """Attack each defense and report clean and robust accuracy (resumable; torchrun-aware).

    With no options: the shipped MNIST models on 64 held-out digits (a stratified sample) under
    PGD+EOT (L-inf 0.3, 10 iterations, step 2.5 * eps / iters), for no defense, the uniform
    DiffPure baseline and the heterogeneous defense.
    """
    import dataclasses

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from robustwrap.data import describe_subset, is_mnist, load_dataset, stratified_subset
    from robustwrap.evaluation import EvalConfig, run_evaluation

    if defenses is None:
        defenses = "none,config" if config is not None else "none,uniform,heterogeneous"
    chosen = [d.strip() for d in defenses.split(",") if d.strip()]
    if not chosen or any(d not in DEFENSES for d in chosen):
        _fail(f"--defenses takes a comma list of {DEFENSES}, got {defenses!r}")
    if "config" in chosen and config is None:
        _fail("--defenses config needs --config FILE")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file: give a folder (one subfolder of results per defense)")
    _require_finite(eps=eps, step_size=step_size, t_l=t_l, t_s=t_s)
    if eps is None and norm is NormName.linf and is_mnist(data):
        eps = 0.3  # the standard MNIST threat model
    try:
        base = EvalConfig(attack=attack, norm=norm.value, eps=eps, iters=iters, step_size=step_size, eot=eot,
                          loss=loss.value, surrogate_steps=surrogate_steps, runs=runs, seed=seed, batch_size=batch_size)
        defense = _defense_config(config, steps=steps, t_l=t_l, t_s=t_s, votes=votes)
        all_images, all_labels = load_dataset(data)
        size = min(batch_size, n_samples or batch_size) if sanity else n_samples
        indices = stratified_subset(all_labels, size, seed)
    except (ValueError, ImportError, FileNotFoundError) as error:
        _fail(str(error))
    images, labels = all_images[indices], all_labels[indices]
    subset = describe_subset(all_labels, indices, seed=seed, requested=size, spec=data)
    wrapper = _build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights,
                             num_classes, images.shape[1], images.shape[-1], defense)
    budget = (f"{norm.value} eps={base.radius:.4g}, {iters} iterations, "
              f"step {'-' if base.step is None else f'{base.step:.3g}'}, EOT {eot}, loss {loss.value}"
              + (f", surrogate steps {surrogate_steps}" if surrogate_steps else ""))

    if sanity:
        from robustwrap.evaluation import check_inputs
        from robustwrap.sanity import sanity_attack, sanity_checks

        try:
            check_inputs(wrapper, images, labels, num_classes)
        except ValueError as error:
            _fail(str(error))
        failed = False
        for name in chosen:
            cfg = dataclasses.replace(base, defended=name != "none")
            view = _defense_view(wrapper, defense, name)
            with console.status(f"{name}: running sanity checks (each attacks the batch anew)..."):
                checks = sanity_checks(view, images, labels, cfg)
            table = Table(title=f"sanity checks, defense {name}: {sanity_attack(cfg)} ({budget})",
                          caption=f"on {_subset_words(subset)}; ± is one binomial standard error")
            for column in ("check", "result", "measured"):
                table.add_column(column)
            for check in checks:
                table.add_row(check.name, "[green]ok[/green]" if check.passed else "[red]FLAGGED[/red]", check.detail)
            console.print(table)
            failed = failed or not all(c.passed for c in checks)
        console.print("[red]some checks FLAGGED[/red]: exit code 1" if failed else "all checks passed")
        raise typer.Exit(1 if failed else 0)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    description = {"data": data, "classifier": classifier, "diffusion": diffusion,
                   "classifier_weights": str(classifier_weights), "diffusion_weights": str(diffusion_weights)}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    reports = {}
    try:
        with Progress(*columns, console=console, disable=rank != 0) as progress:
            for name in chosen:
                cfg = dataclasses.replace(base, defended=name != "none")
                view = _defense_view(wrapper, defense, name)
                task = progress.add_task(f"{name}: {base.attack} on {len(labels)} images", total=None)
                reports[name] = run_evaluation(
                    view, images, labels, cfg, out / name, num_classes=num_classes, resume=resume, subset=subset,
                    description={**description, "defense_name": name},
                    on_batch=lambda done, total, task=task: progress.update(task, completed=done, total=total),
                )
    except (ValueError, FileExistsError, RuntimeError, ImportError, FileNotFoundError, NotADirectoryError) as error:
        _fail(str(error))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank != 0:
        return
    attacks = base.attacks
    defended = [n for n in reports if n != "none"]
    calls = (f"; {' and '.join(defended)}: {wrapper.plan.denoiser_calls} denoiser calls x {defense.votes} vote(s)"
             if defended else "")
    times = ", ".join(f"{name} {report['seconds']:.0f} s" for name, report in reports.items())
    table = Table(title=f"accuracy (%) under {', '.join(attacks)} ({budget})", box=box.SIMPLE_HEAD, pad_edge=False)
    notes = (f"on {_subset_words(subset)}; ± is one binomial standard error over the images"
             + (f"; accuracies are means over {runs} runs" if runs > 1 else "")
             + ("; all attacks: robust to every attack (per-image worst case)" if len(attacks) > 1 else "")
             + (f"; worst run: the lowest of the {runs} runs; all {runs} runs: robust in every run"
                if runs > 1 else "") + calls + f"; time: {times}")
    for column in ("defense", "clean", "attack", "robust"):
        table.add_column(column, no_wrap=True)
    if runs > 1:
        table.add_column("worst run", no_wrap=True)
        table.add_column(f"all {runs} runs", no_wrap=True)
    for name, report in reports.items():
        clean = report["clean_accuracy"]
        rows = [(a, report["robust_accuracy_by_attack"][a]) for a in attacks]
        if len(attacks) > 1:
            rows.append(("all attacks", {**report["robust_accuracy"], "worst_run": report["robust_accuracy_worst_run"],
                                         "all_runs": report["robust_accuracy_all_runs"],
                                         "stderr_all_runs": report["robust_accuracy_all_runs_stderr"]}))
        for position, (label, stats) in enumerate(rows):
            row = [name if position == 0 else "", _num(clean["mean"], clean["stderr"]) if position == 0 else "",
                   label, _num(stats["mean"], stats["stderr"])]
            if runs > 1:
                worst = stats["worst_run"]
                row += [_num(worst, (worst * (1 - worst) / len(labels)) ** 0.5),
                        _num(stats["all_runs"], stats["stderr_all_runs"])]
            table.add_row(*row, end_section=position == len(rows) - 1 and len(rows) > 1)
    console.print(table)
    console.print(notes)
    console.print(f"reports: {out}/<defense>/report.json")


class Background(str, Enum):
    auto = "auto"
    black = "black"
    white = "white"


DARK_BACKGROUND_MODELS = ("mnist",)  # classifier specs trained on light digits on a dark background


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output stems, one per input, never the same twice (same-named inputs get -2, -3, ...)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 1
        while stem in used:
            count += 1
            stem = f"{path.stem}-{count}"
        used.add(stem)
        stems.append(stem)
    return stems


def load_picture(path: Path, *, channels: int, background: int, invert: bool = False):
    """An image file as a PIL image of ``channels`` (1: "L", else "RGB"), and warnings about it.

    Transparent pixels are composited on ``background`` (0 black, 255 white: what the model was
    trained on), after ``invert`` (which inverts colours, not alpha). On a black background
    (MNIST-like models: light strokes on dark) a mostly bright image is warned about, and so is
    an image whose opaque pixels are about as dark as the background (they would vanish).
    """
    import numpy as np
    from PIL import Image, ImageChops

    picture = Image.open(path)
    picture.load()
    warnings = []
    has_alpha = picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info)
    if has_alpha:
        rgba = picture.convert("RGBA")
        colour, alpha = rgba.convert("RGB"), rgba.getchannel("A")
        if invert:
            colour = ImageChops.invert(colour)
        grey, opacity = np.asarray(colour.convert("L"), dtype=np.float32), np.asarray(alpha)
        opaque = grey[opacity >= 128]
        if background == 0 and opaque.size and opaque.mean() < 64:
            warnings.append("its opaque pixels are about as dark as the model's black background, so the picture "
                            "all but vanishes once transparency is filled; pass --invert for dark strokes")
        picture = Image.composite(colour, Image.new("RGB", rgba.size, (background,) * 3), alpha)
    elif invert:
        picture = ImageChops.invert(picture.convert("RGB"))
    picture = picture.convert("L" if channels == 1 else "RGB")
    brightness = float(np.asarray(picture.convert("L"), dtype=np.float32).mean()) / 255
    if background == 0 and brightness > 0.5:
        warnings.append(f"it is mostly bright (mean {brightness:.2f}) but the model was trained on light strokes on "
                        "a dark background (MNIST): its labels and mask mean little; pass --invert for dark-on-light")
    return picture, warnings


@app.command("purify")
def purify_command(
    images: list[Path] = typer.Argument(..., help="image files (PNG, JPEG, ...)"),
    out: Path = typer.Option(Path("purified"), help="folder for <name>.purified.png and <name>.figure.png"),
    classifier: str = typer.Option("mnist", help="mnist (shipped), cifar10-resnet18, timm:<name>, torchvision:<name>, "
                                   "small-resnet, robustbench:<dataset>/<threat>/<name> or checkpoint:<file>"),
    classifier_weights: Optional[Path] = typer.Option(None),
    diffusion: str = typer.Option("mnist", help="mnist (shipped), small-unet, diffusers:<local folder> or checkpoint:<file>"),
    diffusion_weights: Optional[Path] = typer.Option(None),
    num_classes: int = typer.Option(10, min=2),
    channels: Optional[int] = typer.Option(None, min=1, help="the models' channels; default: 1 for mnist, else 3"),
    image_size: Optional[int] = typer.Option(None, min=8, help="the models' input size; default: 28 for mnist, "
                                             "32 for cifar10-resnet18 and small models, else what the classifier declares"),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    steps: Optional[int] = typer.Option(None, min=1, help="DDIM grid over 1000 steps (t_l=0.2: steps/5 denoiser "
                                        "calls); default 50"),
    t_l: Optional[float] = typer.Option(None, help="strong-noise level t_l as a fraction of the 1000 diffusion steps "
                                        "(attended pixels); default 0.2"),
    t_s: Optional[float] = typer.Option(None, help="weak-noise level t_s, fraction of 1000: below it the inpainting "
                                        "stage ends; default 0.1"),
    background: Background = typer.Option(Background.auto, help="what transparent pixels become: auto = the model's "
                                          "training background (black for mnist, else white)"),
    invert: bool = typer.Option(False, help="invert the images first (e.g. dark digits on white paper for mnist)"),
    seed: int = typer.Option(0, help="seeds the purification noise"),
) -> None:
    """Purify images and draw input | attention map | mask | purified for each (the paper's Figure 5)."""
    import numpy as np
    import torch
    from PIL import Image

    from robustwrap.figures import defense_figure

    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        _fail(f"no such image file: {', '.join(missing)}")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file: give a folder for the purified images and figures")
    _require_finite(t_l=t_l, t_s=t_s)
    channels = channels or (1 if classifier == "mnist" else 3)
    image_size = image_size or (28 if classifier == "mnist" else 32)
    config = _defense_config(config_file, steps=steps, t_l=t_l, t_s=t_s)
    wrapper = _build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights, num_classes, channels,
                             image_size, config)
    image_size = wrapper.image_size[0] if wrapper.image_size else image_size
    if background is Background.auto:
        background = Background.black if classifier in DARK_BACKGROUND_MODELS else Background.white
    fill = 0 if background is Background.black else 255
    pictures = []
    for path in images:
        try:
            picture, warnings = load_picture(path, channels=channels, background=fill, invert=invert)
        except OSError as error:
            _fail(f"{path} is not an image PIL can read ({error})")
        for warning in warnings:
            console.print(f"[yellow]warning:[/yellow] {path.name}: {warning}")
        pictures.append(picture)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title="purified")
    for column in ("image", "label before", "label after", "attended", "figure"):
        table.add_column(column)
    generator = torch.Generator().manual_seed(seed)
    for path, stem_name, picture in zip(images, _unique_stems(images), pictures):
        if picture.size != (image_size, image_size):
            console.print(f"note: {path.name} is {picture.size[0]}x{picture.size[1]}; resized to {image_size}x{image_size}")
            picture = picture.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(picture, dtype=np.float32) / 255.0
        x = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            attention, mask = wrapper.attention(x), wrapper.mask(x)
            purified = wrapper.purify(x, generator=generator)
            before, after = wrapper.classify(x).argmax(1).item(), wrapper.classify(purified).argmax(1).item()
        resize = torch.nn.functional.interpolate
        attention, mask = (resize(m, size=x.shape[-2:], mode="nearest") for m in (attention, mask))
        stem = out / stem_name
        purified_png = (purified[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(purified_png.squeeze(-1) if channels == 1 else purified_png).save(f"{stem}.purified.png")
        titles = (f"input: label {before}", "attention", f"mask ({mask.mean().item():.0%} attended)",
                  f"purified: label {after}")
        Image.fromarray(defense_figure(x[0], attention[0], mask[0], purified[0], titles=titles)).save(f"{stem}.figure.png")
        table.add_row(str(path), str(before), str(after), f"{mask.mean().item():.0%}", f"{stem}.figure.png")
    console.print(table)


models_app = typer.Typer(help="The model store and checkpoint files.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    store: Optional[Path] = typer.Option(None, help="model store folder (default: $ROBUSTWRAP_MODEL_DIR or the repository's models/)"),
) -> None:
    """List the checkpoints in the model store with their cards (<name>.md beside each file)."""
    from robustwrap.architectures import model_files
    from robustwrap.store import model_dir

    root = store or model_dir()
    if not root.is_dir():
        _fail(f"no model store at {root}: set ROBUSTWRAP_MODEL_DIR or pass --store")
    files = model_files(root)
    table = Table(title=f"model store {root}")
    table.add_column("file", overflow="fold")
    table.add_column("size", no_wrap=True)
    table.add_column("card", overflow="fold")
    for path in files:
        card = path.with_suffix(".md")
        lines = card.read_text().splitlines() if card.is_file() else []
        summary = lines[0].lstrip("# ").strip() if lines else "[dim]no card[/dim]"
        table.add_row(str(path.relative_to(root)), f"{path.stat().st_size / 2**20:.1f} MiB", summary)
    console.print(table if files else f"{root} holds no checkpoints (*.safetensors, *.pt, *.pth, *.ckpt, *.bin)")


@models_app.command("check")
def models_check(path: Path = typer.Argument(..., help="a checkpoint file (.safetensors, .pt, .pth, ...)")) -> None:
    """Detect a checkpoint's architecture and match every tensor name and shape, without loading it."""
    from robustwrap.architectures import check_checkpoint

    try:
        report = check_checkpoint(path)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    table = Table(title=str(path), show_header=False)
    table.add_row("architecture", f"{report.architecture or '[red]unrecognised[/red]'} ({report.kind or '?'})")
    table.add_row("configuration", report.config or "-")
    table.add_row("tensors in file", str(report.tensors))
    table.add_row("parameters", f"{report.parameters:,}" if report.config else "-")
    for name, items in (("missing", report.missing), ("unexpected", report.unexpected), ("other shape", report.mismatched)):
        if items:
            table.add_row(f"[red]{name}[/red]", f"{len(items)}: " + ", ".join(items[:5]) + (" ..." if len(items) > 5 else ""))
    for note in report.notes:
        table.add_row("note", note)
    table.add_row("result", "[green]all keys and shapes match[/green]" if report.ok else "[red]does not load strictly[/red]")
    console.print(table)
    raise typer.Exit(0 if report.ok else 1)


from . import tune as _tune  # noqa: E402,F401  (registers `robustwrap tune`; one module per new command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
