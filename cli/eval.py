"""`robustwrap eval`: attack each defense and print clean and robust accuracy with Wilson 95% intervals."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .common import DATA_SPECS, LossName, NormName, console, fail, percent, require_finite
from .groups import ATTACK_OPTIONS, MODELS, DefenseSetting, Models, defense_group, takes
from robustwrap.attacks.registry import describe_attacks
from robustwrap.data import subset_sentence
from robustwrap.evaluation.config import choose_defenses, defense_view
from robustwrap.statistics import INTERVAL_NOTE

ATTACK_HELP = (f"comma list of: {describe_attacks()}. Each is run; an image counts as robust only if it survives "
               "every one, and every verdict is the vote on held-out runs whose noise no attack used")


@takes(models=MODELS, attack_options=ATTACK_OPTIONS, setting=defense_group())
def eval_command(
    data: str = typer.Option("mnist5k:heldout", help=DATA_SPECS),
    models: Models = None,
    defenses: Optional[str] = typer.Option(None, help="comma list of none (bare classifier), uniform (DiffPure "
                                           "baseline, same denoiser calls), heterogeneous, config (the --config "
                                           "file's defense as it is); default none,uniform,heterogeneous, or "
                                           "none,config with --config. With the shipped models, uniform and "
                                           "heterogeneous run at the configs `robustwrap tune` calibrated to them "
                                           "(same denoiser calls, same clean floor) unless --config, --steps, "
                                           "--t-l or --t-s is given"),
    attack: str = typer.Option("pgd-eot", help=ATTACK_HELP),
    attack_options: dict = None,
    norm: NormName = typer.Option(NormName.linf, help="threat model: Linf (max pixel change) or L2 (Euclidean norm of the change)"),
    eps: Optional[float] = typer.Option(None, help="radius of the threat model; default 0.3 (Linf) for MNIST data "
                                        "(mnist5k:*, foolbox:mnist), else 8/255 (Linf) or 0.5 (L2)"),
    loss: Optional[LossName] = typer.Option(None, help="default: margin for pgd-vote, ce for the other PGD attacks. "
                                            "Loss PGD ascends: ce (cross-entropy), margin (Carlini-Wagner "
                                            "margin on the scores), dlr (Croce & Hein's difference of logits ratio)"),
    n_samples: int = typer.Option(64, min=0, help="images drawn from the data by a seeded stratified sample "
                                  "(each class in proportion, see --seed); 0: all"),
    batch_size: int = typer.Option(16, min=1, help="images per batch (the unit of resumption); --sanity checks one batch"),
    iters: int = typer.Option(10, min=0, help="attack iterations (the paper: 200)"),
    step_size: Optional[float] = typer.Option(None, help="PGD step; default 2.5 * eps / iters, which can cross the "
                                              "ball within the budget (Madry et al.); the paper's Linf step is 0.007"),
    eot: int = typer.Option(2, min=1, help="EOT samples per iteration (the paper: 20); for pgd-vote, K purified "
                            "copies averaged per gradient in one batched pass (DiffBreak: 128 on CIFAR-10)"),
    surrogate_steps: Optional[int] = typer.Option(None, min=1, help="attack through `steps`=this; defend at --steps"),
    runs: int = typer.Option(1, min=1, help="R repeated evaluations of the final adversarial examples"),
    seed: int = typer.Option(0, help="seeds the subset, every attack and the defense's noise"),
    setting: DefenseSetting = None,
    out: Path = typer.Option(Path("eval-results"), help="folder: one subfolder of results per defense"),
    resume: bool = typer.Option(False, help="continue the runs recorded in --out (same settings, data and weights: "
                                "their fingerprints are checked)"),
    overwrite: bool = typer.Option(False, help="replace the chosen defenses' results in --out; only folders an "
                                   "earlier eval wrote are replaced, never anything else"),
    sanity: bool = typer.Option(False, help="run the reviewer's sanity checks on one stratified batch of each "
                                "--defenses instead (exit code 1 when any check fails)"),
) -> None:
    """Attack each defense and report clean and robust accuracy (resumable; torchrun-aware).

    With no options: the shipped MNIST models on 64 held-out digits (a stratified sample) under
    PGD+EOT (L-inf 0.3, 10 iterations, step 2.5 * eps / iters), for no defense, the uniform
    DiffPure baseline and the heterogeneous defense, each at the setting `robustwrap tune`
    calibrated to these models (the same denoiser calls, the same clean floor). Writes
    accuracy.png (clean and robust accuracy per defense and attack, Wilson 95% bars) in --out.
    """
    from robustwrap.attacks.registry import options_from_values
    from robustwrap.data import draw_subset, load_dataset, resolve_eps
    from robustwrap.evaluation import EvalConfig
    from robustwrap.evaluation.comparison import calibrated_defenses, check_comparison_folder
    from robustwrap.store import calibrated_configs

    require_finite(eps=eps, step_size=step_size, **{k: v for k, v in attack_options.items() if isinstance(v, float)})
    defense = setting.build()
    try:
        chosen = choose_defenses(defenses, has_config=setting.config_file is not None)
        if not sanity:
            check_comparison_folder(out, chosen, resume=resume, overwrite=overwrite)
        cfg = EvalConfig(attack=attack, norm=norm.value, eps=resolve_eps(eps, data, norm.value), iters=iters,
                         step_size=step_size, eot=eot, loss=loss.value if loss else None,
                         surrogate_steps=surrogate_steps, runs=runs, seed=seed, batch_size=batch_size)
        cfg = dataclasses.replace(cfg, options=options_from_values(cfg.attack, attack_options))
        calibrated = {} if models.own_weights else calibrated_configs(models.classifier, models.diffusion)
        configs, calibration = calibrated_defenses(chosen, defense, calibrated, own_defense=setting.given)
        images, labels = load_dataset(data)
        indices, subset = draw_subset(labels, min(batch_size, n_samples or batch_size) if sanity else n_samples,
                                      seed, spec=data)
    except (ValueError, ImportError, FileNotFoundError, FileExistsError) as error:
        fail(str(error))
    images, labels = images[indices], labels[indices]
    wrapper = models.build(images.shape[1], images.shape[-1], defense)
    views = {name: defense_view(wrapper, configs[name], name) for name in chosen}
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        if calibration:
            console.print(f"defenses: {calibration}")
        if not sanity:
            console.print(f"results: {out}/<defense>/results.jsonl as each batch ends, then report.json and "
                          f"{out}/accuracy.png")
    if sanity:
        _sanity(views, images, labels, cfg, num_classes=models.num_classes, subset=subset)
    description = {"data": data, **models.record()}  # recorded in every report header (resume compares it)
    reports, rank = _evaluate(views, images, labels, cfg, models.num_classes, out, resume, subset, description,
                              overwrite=overwrite)
    if rank == 0:
        _print_results(reports, views, cfg, subset, out)


def _sanity(views: dict, images, labels, cfg, *, num_classes: int, subset: dict) -> None:
    """Run the sanity checks on each defense, print them and exit (1 when any check is flagged)."""
    from robustwrap.evaluation import check_inputs
    from robustwrap.sanity import sanity_attack, sanity_checks

    try:
        check_inputs(next(iter(views.values())), images, labels, num_classes)
    except ValueError as error:
        fail(str(error))
    failed = False
    for name, view in views.items():
        with console.status(f"{name}: running sanity checks (each attacks the batch anew)..."):
            try:
                checks = sanity_checks(view, images, labels, cfg)
            except ValueError as error:  # e.g. a network's bad output (robustwrap.network_checks)
                fail(str(error))
        table = Table(title=f"sanity checks, defense {name}: {sanity_attack(cfg)} ({cfg.describe()})",
                      caption=f"on {subset_sentence(subset)}; {INTERVAL_NOTE}")
        for column in ("check", "result", "measured"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, "[green]ok[/green]" if check.passed else "[red]FLAGGED[/red]", check.detail)
        console.print(table)
        failed = failed or not all(c.passed for c in checks)
    console.print("[red]some checks FLAGGED[/red]: exit code 1" if failed else "all checks passed")
    raise typer.Exit(1 if failed else 0)


def _evaluate(views, images, labels, cfg, num_classes: int, out: Path, resume, subset, description, *, overwrite):
    """:func:`robustwrap.evaluation.comparison.compare` with a progress bar per defense; (its result, this rank)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from robustwrap.evaluation import compare, process_group_from_env

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    try:
        with process_group_from_env() as rank, Progress(*columns, console=console, disable=rank != 0) as progress:
            tasks = {name: progress.add_task(f"{name}: {cfg.attack} on {len(labels)} images", total=None)
                     for name in views}
            result = compare(views, images, labels, cfg, out, num_classes=num_classes, subset=subset,
                             description=description, resume=resume, overwrite=overwrite,
                             on_batch=lambda name, done, total: progress.update(tasks[name], completed=done,
                                                                                total=total))
    except (ValueError, FileExistsError, RuntimeError, ImportError, FileNotFoundError, NotADirectoryError) as error:
        fail(str(error))
    return result, rank


def _print_results(result, views: dict, cfg, subset: dict, out: Path) -> None:
    """One table row per defense and attack (plus the per-image worst case), how to read it, and the figure."""
    attacks, runs, reports = cfg.attacks, cfg.runs, result.reports
    calls = "".join(f"; {name}: {views[name].plan.denoiser_calls} denoiser calls x {views[name].config.votes} "
                    f"vote(s)" for name in reports if not views[name].deterministic)
    times = ", ".join(f"{name} {report.seconds:.0f} s ("
                      + ", ".join(f"{a} {s:.0f} s" for a, s in report.seconds_by_attack.items()) + ")"
                      for name, report in reports.items())
    table = Table(title=f"accuracy (%) under {', '.join(attacks)} ({cfg.describe()})", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    notes = (f"on {subset_sentence(subset)}; {INTERVAL_NOTE}"
             + (f"; accuracies are means over {runs} runs" if runs > 1 else "")
             + ("; all attacks: robust to every attack (per-image worst case)" if len(attacks) > 1 else "")
             + (f"; worst run: the lowest of the {runs} runs; all {runs} runs: robust in every run"
                if runs > 1 else "") + calls + f"; time: {times}"
             + "; robust: the vote on held-out runs whose noise no attack used; attack's own: what the attack "
               "itself saw when it stopped")
    for column in ("defense", "clean", "attack", "robust", "attack's own"):
        table.add_column(column, no_wrap=True)
    if runs > 1:
        table.add_column("worst run", no_wrap=True)
        table.add_column(f"all {runs} runs", no_wrap=True)
    for name, report in reports.items():
        rows = [(a, report.robust_accuracy_by_attack[a]) for a in attacks]
        if len(attacks) > 1:
            rows.append(("all attacks", report.robust_accuracy))
        size = report.n_samples
        for position, (label, stats) in enumerate(rows):
            own = getattr(stats, "attack_own", None)
            row = [name if position == 0 else "", percent(report.clean_accuracy.mean, size) if position == 0
                   else "", label, percent(stats.mean, size), percent(own.accuracy, size) if own else ""]
            if runs > 1:
                row += [percent(stats.worst_run, size), percent(stats.all_runs, size)]
            table.add_row(*row, end_section=position == len(rows) - 1 and len(rows) > 1)
    console.print(table)
    console.print(notes)
    if result.figure_problem:
        console.print(f"[yellow]note:[/yellow] no figure: {result.figure_problem}")
    console.print(f"reports: {out}/<defense>/report.json" + (f"; figure: {result.figure}" if result.figure else ""))
