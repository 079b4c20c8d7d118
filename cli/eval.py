"""`robustwrap eval`: attack each defense and print clean and robust accuracy with Wilson 95% intervals."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .common import (CLASSIFIER_SPECS, CONFIG_HELP, DATA_SPECS, DIFFUSION_SPECS, T_L_HELP, T_S_HELP, WEIGHTS_HELP,
                     LossName, NormName, build_wrapper, console, defense_config, fail, percent, require_finite,
                     subset_words)
from robustwrap.attacks.registry import describe_attacks
from robustwrap.config import MODES
from robustwrap.evaluation.config import DEFENSES, choose_defenses, defense_view
from robustwrap.outputs import Layout
from robustwrap.statistics import INTERVAL_NOTE

FIGURE = "accuracy.png"  # beside the defenses' folders in --out
ATTACK_HELP = (f"comma list of: {describe_attacks()}. Each is run; an image counts as robust only if it survives "
               "every one, and every verdict is the vote on held-out runs whose noise no attack used")


def eval_command(
    data: str = typer.Option("mnist5k:heldout", help=DATA_SPECS),
    classifier: str = typer.Option("mnist", help=CLASSIFIER_SPECS),
    classifier_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    diffusion: str = typer.Option("mnist", help=DIFFUSION_SPECS),
    diffusion_weights: Optional[Path] = typer.Option(None, help=WEIGHTS_HELP),
    num_classes: int = typer.Option(10, min=2),
    defenses: Optional[str] = typer.Option(None, help="comma list of none (bare classifier), uniform (DiffPure "
                                           "baseline, same denoiser calls), heterogeneous, config (the --config "
                                           "file's defense as it is); default none,uniform,heterogeneous, or "
                                           "none,config with --config. With the shipped models, uniform and "
                                           "heterogeneous run at the configs `robustwrap tune` calibrated to them "
                                           "(same denoiser calls, same clean floor) unless --config, --steps, "
                                           "--t-l or --t-s is given"),
    attack: str = typer.Option("pgd-eot", help=ATTACK_HELP),
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
    em_samples: int = typer.Option(10, min=1, help="diffhammer: N purifications per step, weighted by EM (the "
                                   "reference: 10)"),
    em_steps: int = typer.Option(5, min=1, help="diffhammer: EM rounds per step (r updated each round)"),
    em_reference: bool = typer.Option(False, help="diffhammer: the reference's EM, whose r is never updated "
                                      "(one weighting from the selected copy's gradient)"),
    dev_weight: float = typer.Option(0.0, min=0.0, help="W: add DiffAttack's deviated-reconstruction term "
                                     "(squared distance of each denoiser input from the input diffused with the "
                                     "same noise, mask-weighted in stage 1, weight 1/K per step) times W to the "
                                     "loss of pgd-eot and pgd-vote; 0: off"),
    seed: int = typer.Option(0, help="seeds the subset, every attack and the defense's noise"),
    config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
    steps: Optional[int] = typer.Option(None, min=1, help="defense DDIM grid (t_l=0.2: steps/5 denoiser calls; "
                                        "default 50; the paper: 500)"),
    t_l: Optional[float] = typer.Option(None, help=T_L_HELP),
    t_s: Optional[float] = typer.Option(None, help=T_S_HELP),
    votes: Optional[int] = typer.Option(None, min=1, help="S purifications per image, combined by the vote rule "
                                        "(hard majority by default); default 1"),
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
    from robustwrap.data import draw_subset, load_dataset, resolve_eps
    from robustwrap.evaluation import EvalConfig

    try:
        chosen = choose_defenses(defenses, has_config=config is not None)
    except ValueError as error:
        fail(str(error))
    require_finite(eps=eps, step_size=step_size, t_l=t_l, t_s=t_s, dev_weight=dev_weight)
    if not sanity:
        check_eval_folder(out, chosen, resume, overwrite)
    try:
        base = EvalConfig(attack=attack, norm=norm.value, eps=resolve_eps(eps, data, norm.value),
                          iters=iters, step_size=step_size, eot=eot, loss=loss.value if loss else None,
                          surrogate_steps=surrogate_steps, em_samples=em_samples, em_steps=em_steps,
                          em_reference=em_reference, dev_weight=dev_weight,
                          runs=runs, seed=seed, batch_size=batch_size)
        defense = defense_config(config, steps=steps, t_l=t_l, t_s=t_s, votes=votes)
        configs, calibration = defense_configs(chosen, defense, classifier, diffusion,
                                               own_weights=classifier_weights is not None
                                               or diffusion_weights is not None,
                                               own_defense=config is not None or any(
                                                   v is not None for v in (steps, t_l, t_s)))
        all_images, all_labels = load_dataset(data)
        indices, subset = draw_subset(all_labels, min(batch_size, n_samples or batch_size) if sanity else n_samples,
                                      seed, spec=data)
    except (ValueError, ImportError, FileNotFoundError) as error:
        fail(str(error))
    images, labels = all_images[indices], all_labels[indices]
    wrapper = build_wrapper(classifier, classifier_weights, diffusion, diffusion_weights,
                            num_classes, images.shape[1], images.shape[-1], defense)
    views = {name: defense_view(wrapper, configs[name], name) for name in chosen}
    if calibration and os.environ.get("RANK", "0") == "0":  # once under torchrun
        console.print(f"defenses: {calibration}")
    budget = (f"{norm.value} eps={base.radius:.4g}, {iters} iterations, "
              f"step {'-' if base.step is None else f'{base.step:.3g}'}, EOT {eot}, loss {base.describe_losses()}"
              + (f", surrogate steps {surrogate_steps}" if surrogate_steps else "")
              + (f", diffhammer N={em_samples} EM {'as in the reference' if em_reference else f'{em_steps} rounds'}"
                 if "diffhammer" in base.attacks else "")
              + (f", deviation weight {dev_weight:g}" if dev_weight else ""))
    if sanity:
        _sanity(views, images, labels, base, num_classes, budget, subset)
    # Recorded in every report header (resume compares it), as it always has been.
    description = {"data": data, "classifier": classifier, "diffusion": diffusion,
                   "classifier_weights": str(classifier_weights), "diffusion_weights": str(diffusion_weights)}
    reports, rank = _evaluate(views, images, labels, base, num_classes, out, resume, subset,
                              description, overwrite=overwrite)
    if rank == 0:
        _print_results(reports, views, base, budget, subset, len(labels), out)


def _eval_owns(folder: Path, entry: Path) -> bool:
    """One results folder per defense, and the figure."""
    from robustwrap.evaluation import is_evaluation_folder

    return entry.is_file() if entry.name == FIGURE else entry.name in DEFENSES and is_evaluation_folder(entry)


EVAL_LAYOUT = Layout("eval folder", owns=_eval_owns, marker=lambda folder: any(
    e.name in DEFENSES and _eval_owns(folder, e) for e in folder.iterdir()))


def check_eval_folder(out: Path, chosen: Sequence[str], resume: bool, overwrite: bool) -> None:
    """End the command (exit 2) before any work when --out, or a chosen defense's folder in it, may not be written:
    --out must be new, empty or an eval folder; a defense's results need --resume or --overwrite."""
    from robustwrap.evaluation import check_results_folder
    from robustwrap.outputs import check_output

    try:
        check_output(out, overwrite=True, layout=EVAL_LAYOUT, parents=True)
        for name in chosen:
            check_results_folder(out / name, resume=resume, overwrite=overwrite)
    except (ValueError, FileExistsError) as error:
        fail(str(error))


def defense_configs(chosen: Sequence[str], defense, classifier: str, diffusion: str, *, own_weights: bool,
                    own_defense: bool) -> tuple[dict, str]:
    """Each chosen defense's PurifyConfig, and a sentence stating the uniform / heterogeneous settings and
    where they come from ("" when neither mode is chosen).

    uniform and heterogeneous take the configs `robustwrap tune` calibrated to the shipped pair
    (``--votes`` still applies) unless other weights are given or the defense is set by
    --config / --steps / --t-l / --t-s; every other case runs ``defense`` in each mode (and, for the
    shipped pair, says that the two modes' noise and calls may then differ).
    """
    from robustwrap import PurifyConfig
    from robustwrap.schedule import describe_defense
    from robustwrap.store import calibrated_configs

    calibrated = {} if own_weights else calibrated_configs(classifier, diffusion)
    files = {} if own_defense else {name: path for name, path in calibrated.items() if name in chosen}
    configs = {name: dataclasses.replace(PurifyConfig.load(files[name]), votes=defense.votes) if name in files
               else dataclasses.replace(defense, mode=name) if name in MODES else defense for name in chosen}
    modes = [name for name in chosen if name in MODES]
    plans = "; ".join(f"{name}: {describe_defense(configs[name])}" for name in modes)
    if files:
        return configs, (f"{' and '.join(files)} at the settings `robustwrap tune` calibrated to the shipped "
                         f"models (each family's most robust setting at the same denoiser calls and clean floor; "
                         f"{files[next(iter(files))].parent}/README.md): {plans}. --config, --steps, --t-l or "
                         "--t-s replaces them")
    if len(modes) == 2 and calibrated:
        return configs, (f"{plans}: the given setting in both modes, so their noise levels and denoiser calls may "
                         "differ (the calibrated pair runs when none of --config, --steps, --t-l, --t-s is given)")
    return configs, plans


def _sanity(views: dict, images, labels, base, num_classes: int, budget: str, subset: dict) -> None:
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
                checks = sanity_checks(view, images, labels, base)
            except ValueError as error:  # e.g. a network's bad output (robustwrap.network_checks)
                fail(str(error))
        table = Table(title=f"sanity checks, defense {name}: {sanity_attack(base)} ({budget})",
                      caption=f"on {subset_words(subset)}; {INTERVAL_NOTE}")
        for column in ("check", "result", "measured"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, "[green]ok[/green]" if check.passed else "[red]FLAGGED[/red]", check.detail)
        console.print(table)
        failed = failed or not all(c.passed for c in checks)
    console.print("[red]some checks FLAGGED[/red]: exit code 1" if failed else "all checks passed")
    raise typer.Exit(1 if failed else 0)


def _evaluate(views: dict, images, labels, base, num_classes: int, out: Path, resume: bool,
              subset: dict, description: dict, *, overwrite: bool) -> tuple[dict, int]:
    """Each defense's report (on rank 0; empty elsewhere) and this process's rank, with progress bars."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from robustwrap.evaluation import process_group_from_env, run_evaluation

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    reports = {}
    try:
        with process_group_from_env() as rank, Progress(*columns, console=console, disable=rank != 0) as progress:
            for name, view in views.items():
                task = progress.add_task(f"{name}: {base.attack} on {len(labels)} images", total=None)
                reports[name] = run_evaluation(
                    view, images, labels,
                    base, out / name, num_classes=num_classes,
                    resume=resume, overwrite=overwrite, subset=subset, description={**description, "defense_name": name},
                    on_batch=lambda done, total, task=task: progress.update(task, completed=done, total=total),
                )
    except (ValueError, FileExistsError, RuntimeError, ImportError, FileNotFoundError, NotADirectoryError) as error:
        fail(str(error))
    return reports, rank


def _print_results(reports: dict, views: dict, base, budget: str, subset: dict, n: int, out: Path) -> None:
    """One table row per defense and attack (plus the per-image worst case), how to read it, and the figure."""
    from robustwrap.evaluation import plot_accuracy

    attacks, runs = base.attacks, base.runs
    calls = "".join(f"; {name}: {views[name].plan.denoiser_calls} denoiser calls x {views[name].config.votes} "
                    f"vote(s)" for name in reports if not views[name].deterministic)
    times = ", ".join(f"{name} {report['seconds']:.0f} s ("
                      + ", ".join(f"{a} {s:.0f} s" for a, s in report.get("seconds_by_attack", {}).items()) + ")"
                      for name, report in reports.items())
    table = Table(title=f"accuracy (%) under {', '.join(attacks)} ({budget})", box=box.SIMPLE_HEAD, pad_edge=False)
    notes = (f"on {subset_words(subset)}; {INTERVAL_NOTE}"
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
        clean = report["clean_accuracy"]
        rows = [(a, report["robust_accuracy_by_attack"][a]) for a in attacks]
        if len(attacks) > 1:
            rows.append(("all attacks", {**report["robust_accuracy"], "worst_run": report["robust_accuracy_worst_run"],
                                         "all_runs": report["robust_accuracy_all_runs"]}))
        size = report["n_samples"]
        for position, (label, stats) in enumerate(rows):
            own = stats.get("attack_own")
            row = [name if position == 0 else "", percent(clean["mean"], size) if position == 0 else "",
                   label, percent(stats["mean"], size), percent(own["accuracy"], size) if own else ""]
            if runs > 1:
                row += [percent(stats["worst_run"], size), percent(stats["all_runs"], size)]
            table.add_row(*row, end_section=position == len(rows) - 1 and len(rows) > 1)
    console.print(table)
    console.print(notes)
    caption = (f"{subset_words(subset)}. Bars: Wilson 95% intervals. Robust: the vote on held-out "
               f"runs whose noise no attack used" + (f", mean over {runs} runs" if runs > 1 else "") + ".")
    try:
        plot_accuracy(reports, out / FIGURE, title=f"accuracy under {', '.join(attacks)} ({budget})",
                      caption=caption)
    except (ImportError, OSError, ValueError) as error:  # the results are saved: a figure problem is a note
        console.print(f"[yellow]note:[/yellow] no figure: {error}")
    console.print(f"reports: {out}/<defense>/report.json; figure: {out / FIGURE}")
