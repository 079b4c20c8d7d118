"""`robustwrap tune`: calibrate the defense to a classifier (parse, call robustwrap.tune, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from robustwrap.config import MODES as FAMILIES

from .common import DATA_SPECS, LossName, NormName, console, fail, require_finite
from .groups import MODELS, Models, takes


@takes(models=MODELS)
def tune_command(
    data: str = typer.Option("mnist5k:heldout", help=f"held-out data to tune on: {DATA_SPECS}"),
    models: Models = None,
    config: Optional[Path] = typer.Option(None, help="base PurifyConfig file (.json/.toml): mask rule, U, votes, ... "
                                          "the sweep changes t_l, t_s, the cut, mode and steps"),
    calls: int = typer.Option(10, min=1, help="denoiser calls per image and vote, the same for every candidate"),
    n_attack: int = typer.Option(64, min=0, help="images attacked: a seeded stratified subset (0 = all); clean "
                                 "accuracy is measured on all images unless --n-clean is given"),
    n_clean: Optional[int] = typer.Option(None, help="images for clean accuracy: a seeded stratified subset of this "
                                          "many (drawn like the attacked one); default: all"),
    eps: Optional[float] = typer.Option(None, help="attack radius; default 0.3 (Linf) for MNIST data, else 8/255 "
                                        "(Linf) or 0.5 (L2)"),
    norm: NormName = typer.Option(NormName.linf, help="threat model: Linf or L2"),
    iters: int = typer.Option(10, min=1, help="PGD iterations per candidate"),
    eot: int = typer.Option(1, min=1, help="EOT samples per PGD iteration"),
    step_size: Optional[float] = typer.Option(None, help="PGD step; default 2.5 * eps / iters"),
    loss: LossName = typer.Option(LossName.ce, help="PGD loss: ce, margin or dlr"),
    surrogate: bool = typer.Option(False, help="attack with BPDA (a cheaper surrogate) instead of the full gradient"),
    min_clean: float = typer.Option(0.97, help="the chosen setting keeps at least this fraction of the undefended "
                                    "clean accuracy"),
    families: str = typer.Option(",".join(FAMILIES), help="comma list: uniform (DiffPure baseline over t*) "
                                 "and/or heterogeneous (over t_l and the cut)"),
    refine: bool = typer.Option(True, help="after the coarse grid, try the neighbours of each family's best point"),
    seed: int = typer.Option(0, help="seeds the subset, the attack and the defense's noise"),
    batch_size: int = typer.Option(64, min=1, help="images per attacked batch (the unit of resumption)"),
    out: Path = typer.Option(Path("tune-results"), help="folder for the evaluations, table.md, frontier.png, best.json"),
    resume: bool = typer.Option(False, help="continue the sweep recorded in --out (same settings, data and weights: "
                                "their fingerprints are checked)"),
    overwrite: bool = typer.Option(False, help="replace --out when it holds an earlier sweep (its tune.json); a "
                                   "folder with anything else is never replaced"),
) -> None:
    """Sweep noise levels and the mask cut at a fixed denoiser budget; write the best setting as a config file.

    With no options: the shipped MNIST models, 1,000 held-out digits for clean accuracy (--n-clean: fewer), 64 of them
    (stratified) under full-gradient PGD (L-inf 0.3, 10 iterations), 10 denoiser calls per image.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from robustwrap import PurifyConfig
    from robustwrap.data import load_dataset, resolve_eps
    from robustwrap.evaluation import EvalConfig
    from robustwrap.statistics import format_accuracy
    from robustwrap.outputs import check_resumable_output
    from robustwrap.tune import TUNE_LAYOUT, TuneSettings, describe_attack, tune

    require_finite(eps=eps, step_size=step_size, min_clean=min_clean)
    try:
        check_resumable_output(out, resume=resume, overwrite=overwrite, layout=TUNE_LAYOUT)
    except (ValueError, FileExistsError) as error:
        fail(str(error))
    try:
        base = PurifyConfig.load(config) if config is not None else PurifyConfig()
        attack = EvalConfig(attack="bpda" if surrogate else "pgd-eot", norm=norm.value,
                            eps=resolve_eps(eps, data, norm.value), iters=iters, eot=eot, step_size=step_size,
                            loss=loss.value, seed=seed, batch_size=batch_size)
        settings = TuneSettings(calls=calls, n_attack=n_attack, n_clean=n_clean, evaluation=attack,
                                min_clean=min_clean, refine=refine,
                                families=tuple(f.strip() for f in families.split(",") if f.strip()))
        images, labels = load_dataset(data)
        settings.check_data_size(len(labels))
    except (ValueError, ImportError, FileNotFoundError) as error:
        fail(str(error))
    wrapper = models.build(images.shape[1], images.shape[-1], base)
    description = {"data": data, **models.record()}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        console.print(f"results: {out}/<candidate>/ as each is scored (resumable), then best.json, table.md and "
                      "frontier.png")
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("tuning (candidates scored)", total=None)

            def advance(done: int, planned: int, name: str) -> None:
                progress.update(task, completed=done, total=planned, description=f"tuning: {name} done")

            result = tune(wrapper, images, labels, out, settings, num_classes=models.num_classes, resume=resume,
                          overwrite=overwrite,
                          description=description, on_progress=advance)
    except (ValueError, FileExistsError) as error:
        fail(str(error))

    table = Table(title=f"robustwrap tune on {data}: {describe_attack(settings, result.baseline.n_robust, result.baseline.n_clean, result.n_images)}")
    for column in ("setting", "calls", "clean [95%]", "robust [95%]"):
        table.add_column(column, no_wrap=column == "setting")
    for point in [result.baseline, *sorted(result.points, key=lambda p: (p.candidate.family, p.candidate.t_l, p.candidate.cut))]:
        name = point.candidate.name + (" [bold](chosen)[/bold]" if point is result.chosen else "")
        table.add_row(name, str(point.calls), format_accuracy(point.clean, point.n_clean),
                      format_accuracy(point.robust, point.n_robust))
    console.print(table)
    verdict = "" if result.meets_min_clean else " [yellow](no setting reaches the clean floor: the cleanest is chosen)[/yellow]"
    console.print(f"clean floor {min_clean:g} x {result.baseline.clean:.1%} = {result.clean_floor:.1%}; "
                  f"chosen {result.chosen.candidate.name}{verdict}")
    for family, (point, meets) in result.by_family.items():
        console.print(f"best {family}: {point.candidate.name}" + ("" if meets else " (below the clean floor)"))
    families_written = ", ".join(str(out / f"best-{family}.json") for family in result.by_family)
    console.print(f"wrote {out / 'best.json'} (use it with --config), {families_written} (each family's own "
                  f"choice: compare them with eval --defenses), {out / 'table.md'}, {out / 'frontier.png'}")
