"""`robustwrap verify`: does a deployed engine, at its precision, still decide as the fp32 eager defense? (parse,
call robustwrap.export.verify, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from robustwrap.export.engines import ENGINE_SPECS, describe_precision, resolve_precision
from robustwrap.export.verification import describe_settings, format_rate

from .common import DATA_SPECS, console, fail, require_finite

ENGINE_HELP = "; ".join(f"{name}: {spec.help} ({', '.join(spec.precisions) or 'precision as built'})"
                        for name, spec in ENGINE_SPECS.items())


def parse_precision(text: Optional[str]):
    """'bf16' for both networks, or 'classifier=fp32,denoiser=bf16'; None for the engine's default."""
    if text is None or "=" not in text:
        return text
    try:
        return dict(part.strip().split("=", 1) for part in text.split(","))
    except ValueError:
        fail(f"--precision takes one precision or classifier=P,denoiser=P, got {text!r}")


def verify_command(
    bundle: Path = typer.Argument(..., help="a bundle folder written by `robustwrap export`"),
    engine: str = typer.Option("onnxruntime", help=ENGINE_HELP),
    precision: Optional[str] = typer.Option(None, help="one precision for both networks (e.g. bf16), or "
                                            "classifier=fp32,denoiser=bf16; default: the engine's fp32"),
    data: str = typer.Option("mnist5k:heldout", help=f"held-out images of the bundle's data spec: {DATA_SPECS}"),
    n: int = typer.Option(1000, min=1, help="images compared (a seeded stratified subset; all when larger): 1,000 "
                          "give about a ±0.5-point interval on an agreement near 99.5%"),
    n_attack: int = typer.Option(64, min=0, help="of those, how many are attacked (PGD+EOT against the eager defense)"),
    eps: Optional[float] = typer.Option(None, help="attack radius; default 0.3 (Linf) for MNIST data, else 8/255"),
    iters: int = typer.Option(10, min=0, help="PGD iterations"),
    eot: int = typer.Option(4, min=1, help="purified copies per PGD gradient"),
    seed: int = typer.Option(0, help="seeds the subsets, the attack and both defenses' noise (the same per image)"),
    batch_size: int = typer.Option(32, min=1, help="images per side-by-side call"),
    threads: Optional[int] = typer.Option(None, min=1, help="the engine's threads"),
    min_agreement: float = typer.Option(0.995, help="required fraction of images whose decision equals eager's"),
    max_clean_drop: float = typer.Option(0.005, help="largest allowed fall in clean accuracy (0.005 = 0.5 points)"),
    max_robust_drop: float = typer.Option(0.01, help="largest allowed fall in robust accuracy"),
    out: Optional[Path] = typer.Option(None, help="write verify.json and verify.png here (a new or empty folder, or "
                                       "an earlier verify's with --overwrite); default: the bundle's verified/"),
    overwrite: bool = typer.Option(False, help="replace an earlier verify's --out folder"),
) -> None:
    """Certify an engine and precision against the fp32 eager defense: decisions, accuracies, gaps, mask pixels."""
    import dataclasses

    from robustwrap.data import resolve_eps
    from robustwrap.export import Thresholds
    from robustwrap.export.verifier import VERIFY_ATTACK, verify_bundle

    require_finite(eps=eps, min_agreement=min_agreement, max_clean_drop=max_clean_drop, max_robust_drop=max_robust_drop)
    try:
        resolve_precision(engine, parse_precision(precision))
        thresholds = Thresholds(min_agreement, max_clean_drop, max_robust_drop)
        attack = dataclasses.replace(VERIFY_ATTACK, iters=iters, eot=eot, eps=resolve_eps(eps, data, "Linf"))
    except ValueError as error:
        fail(str(error))
    console.print(f"verifying {engine} at {precision or 'its default precision'} against the fp32 eager defense on "
                  f"{n} images of {data} (stratified, seed {seed}; all when fewer), {n_attack} of them attacked by "
                  f"pgd-eot (L-inf {attack.radius:g}, {iters} iterations x {eot} copies)")
    report, written = run_verify(verify_bundle, bundle, engine=engine, precision=parse_precision(precision), data=data,
                                 n=n, n_attack=n_attack, attack=attack, thresholds=thresholds, seed=seed,
                                 batch_size=batch_size, threads=threads, out=out, overwrite=overwrite)
    print_report(report, written)
    if not report.passed:
        raise typer.Exit(1)


def run_verify(verify_bundle, bundle: Path, **options):
    """verify_bundle with a progress bar; a bad bundle, spec, file or setting ends the command with one line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("verify"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("images", total=None)
        try:
            return verify_bundle(bundle, on_progress=lambda done, total: progress.update(task, completed=done,
                                                                                         total=total), **options)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError, OSError) as error:
            fail(str(error))


def print_report(report, written: Path) -> None:
    """The figures as a table, each check's line, and where the record went."""
    figures = report.figures
    table = Table(title=f"robustwrap verify: {report.engine} at {describe_precision(report.precisions)} vs fp32 eager "
                        "(same per-image seeds; rates with Wilson 95% intervals)",
                  caption=describe_settings(report.settings))
    table.add_column("figure")
    table.add_column("value")
    agreement = figures["decision_agreement"]
    table.add_row("decision agreement (clean)", format_rate(agreement))
    for group in ("clean", "robust"):
        if group in figures:
            table.add_row(f"{group} accuracy, eager", format_rate(figures[group]["eager"]))
            table.add_row(f"{group} accuracy, engine", format_rate(figures[group]["engine"]))
            table.add_row(f"{group}: lost / gained, McNemar p",
                          f"{figures[group]['lost']} / {figures[group]['gained']}, {figures[group]['mcnemar_p']:.3g}")
    table.add_row("probability gap, max / mean", f"{figures['probability_gap']['max']:.2e} / "
                  f"{figures['probability_gap']['mean']:.2e}")
    table.add_row("purified-pixel gap, max / mean", f"{figures['purified_pixel_gap']['max']:.2e} / "
                  f"{figures['purified_pixel_gap']['mean']:.2e}")
    mask = figures["mask_pixel_agreement"]
    table.add_row("mask pixels flipped", f"{mask['flipped']} of {mask['pixels']:,}")
    console.print(table)
    for check in report.checks:
        console.print(f"{'[green]pass[/green]' if check.passed else '[red]FAIL[/red]'} {check.line}", soft_wrap=True)
    console.print(f"{'verified' if report.passed else 'not verified'}: {written}")

