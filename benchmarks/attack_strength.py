"""The shipped MNIST models at their calibrated defenses against every attack in `robustwrap eval`,
at one equal budget, and how robust accuracy moves with the number of attack iterations.

    python benchmarks/attack_strength.py                  # about an hour on 2 cores
    python benchmarks/attack_strength.py --quick          # smoke run (4 images, 2 iterations), writes no section

Defenses: none, and uniform and heterogeneous at the configs `robustwrap tune` calibrated to the
shipped models (robustwrap.store.calibrated_configs: the same denoiser calls, the same clean floor).
Budget, in purified copies: every attack takes I iterations with K purified copies per step (EOT
K for pgd-eot, K copies averaged for pgd-vote, N = K copies for diffhammer's EM, which then
backpropagates once per step through one grafted chain); AutoAttack rand runs APGD-CE and then
APGD-DLR on the survivors, so it gets I / 2 iterations of EOT K each (APGD takes one gradient more
than its iterations). Verdicts: the
deployed vote on held-out runs whose seeds no attack used (robustwrap.evaluation); "worst case"
counts an image as robust only if it survives every attack. Every run lands in --out (resumable:
rerun the same command to continue), the figure in benchmarks/attack-iterations.png and the
table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.attacks import DeviationOptions, DiffHammerOptions
from robustwrap.data import draw_subset, load_dataset
from robustwrap.evaluation import EvalConfig, Report, defense_view, read_records, run_evaluation
from robustwrap.figures import pyplot
from robustwrap.schedule import describe_defense
from robustwrap.specs import build_classifier, build_diffusion
from robustwrap.statistics import INTERVAL_NOTE, format_accuracy, paired_sign_test, wilson_interval
from robustwrap.store import calibrated_configs

from common import write_section

HERE = Path(__file__).resolve().parent
DATA = "mnist5k:heldout"
EPS = 0.3


def runs(iters: int, copies: int, dev_weight: float) -> dict[str, EvalConfig]:
    """The table's runs, by row name: one EvalConfig each (all with the same seed and subset)."""
    base = EvalConfig(eps=EPS, iters=iters, eot=copies, batch_size=64)
    return {
        "pgd-eot": replace(base, attack="pgd-eot"),
        "pgd-vote": replace(base, attack="pgd-vote"),
        "diffhammer": replace(base, attack="diffhammer", options=DiffHammerOptions(em_samples=copies)),
        f"pgd-eot + deviation (W={dev_weight:g})": replace(base, attack="pgd-eot",
                                                           options=DeviationOptions(dev_weight=dev_weight)),
        "autoattack (rand)": replace(base, attack="autoattack", iters=max(1, iters // 2)),
    }


def slug(cfg: EvalConfig) -> str:
    """A run's folder name: its attack, "-dev" with the deviation term."""
    return cfg.attack + ("-dev" if any(isinstance(o, DeviationOptions) and o.dev_weight for o in cfg.options) else "")


def survivors(folder: Path, attack: str) -> list[bool]:
    """Per image (in the subset's order): robust in every held-out run after ``attack``."""
    header = json.loads((folder / "report.json").read_text())["settings"]
    records, _, _ = read_records(folder / "results.jsonl", header)  # validated against the run's header
    return [all(run[i] for run in records[b].robust[attack]) for b in sorted(records)
            for i in range(records[b].size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images: a seeded stratified subset of mnist5k:heldout")
    parser.add_argument("--iters", type=int, default=10, help="I: the base iterations (the curves use 1x, 2x, 4x)")
    parser.add_argument("--copies", type=int, default=4, help="K: purified copies per step for every attack")
    parser.add_argument("--dev-weight", type=float, default=1.0, help="W of the deviation term")
    parser.add_argument("--curves", default="pgd-eot,diffhammer", help="attacks whose iteration curves are drawn: "
                        "a comma list of pgd-eot, pgd-vote, diffhammer")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "attack-strength")
    parser.add_argument("--quick", action="store_true", help="4 images, 1 iteration: a smoke run that writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.n, args.iters, args.copies, args.out = 4, 2, 2, args.out.with_name("attack-strength-quick")
    if not set(args.curves.split(",")) <= {"pgd-eot", "pgd-vote", "diffhammer"}:
        parser.error(f"--curves takes pgd-eot, pgd-vote, diffhammer; got {args.curves!r}")

    all_images, all_labels = load_dataset(DATA)
    indices, subset = draw_subset(all_labels, args.n, 0, spec=DATA)
    images, labels = all_images[indices], all_labels[indices]
    calibrated = {mode: PurifyConfig.load(path) for mode, path in calibrated_configs("mnist", "mnist").items()}
    wrapper = RobustWrapper(build_classifier("mnist"), build_diffusion("mnist"), calibrated["heterogeneous"])
    views = {"none": defense_view(wrapper, wrapper.config, "none"),
             **{mode: defense_view(wrapper, config, mode) for mode, config in calibrated.items()}}
    table_runs = runs(args.iters, args.copies, args.dev_weight)
    curves = [c for c in args.curves.split(",") if c]

    reports: dict[tuple[str, str], Report] = {}
    for defense, view in views.items():  # the table first, then the longer curves
        for row, cfg in table_runs.items():
            folder = args.out / defense / slug(cfg)
            reports[defense, row] = run_evaluation(view, images, labels, cfg,
                                                   folder, num_classes=10, resume=True, subset=subset,
                                                   description={"data": DATA, "defense_name": defense, "row": row})
    curve_reports: dict[tuple[str, str, int], Report] = {}
    for defense in ("uniform", "heterogeneous"):
        for attack in curves:
            for factor in (1, 2, 4):
                if factor == 1:
                    curve_reports[defense, attack, factor] = reports[defense, attack]
                    continue
                cfg = replace(table_runs[attack], iters=args.iters * factor)
                curve_reports[defense, attack, factor] = run_evaluation(
                    views[defense], images, labels, cfg, args.out / defense / f"{attack}-x{factor}", num_classes=10,
                    resume=True, subset=subset, description={"data": DATA, "defense_name": defense})
    distinct = {id(r): r for r in [*reports.values(), *curve_reports.values()]}.values()
    elapsed = sum(report.seconds for report in distinct)  # as recorded per batch: the same when resumed
    if args.quick:
        print(json.dumps({f"{d} {r}": rep.robust_accuracy.mean for (d, r), rep in reports.items()}, indent=1))
        return

    n = len(labels)
    figure_path = HERE / "attack-iterations.png"
    plot_curves(curve_reports, curves, args, n, figure_path)
    write_section("attack_strength.py", describe(reports, curve_reports, views, table_runs, curves, args, subset,
                                                 elapsed, figure_path))


def worst_case(defense: str, table_runs: dict[str, EvalConfig], out: Path) -> list[bool]:
    """Per image: robust after every attack of every run of the table."""
    columns = [survivors(out / defense / slug(cfg), cfg.attack) for cfg in table_runs.values()]
    return [all(column[i] for column in columns) for i in range(len(columns[0]))]


def describe(reports, curve_reports, views, table_runs, curves, args, subset, elapsed, figure_path) -> str:
    """The RESULTS.md section: protocol, the table, the curves."""
    n = subset["size"]
    configs = {d: v.config for d, v in views.items() if not v.deterministic}
    defended = "; ".join(f"{d}: {describe_defense(c)}" for d, c in configs.items())
    lines = [
        f"Data: {n} of {subset['of']} held-out digits ({DATA}; stratified, seed 0). Threat: L-inf eps {EPS:g}. "
        f"Defenses: the calibrated configs shipped with the models ({defended}). "
        f"Budget, per attack and image, in purified copies: I = {args.iters} iterations with K = {args.copies} "
        f"copies per step ({args.iters * args.copies}) for pgd-eot (EOT K, a gradient through each copy), "
        f"pgd-vote (K copies averaged, then the deployed vote on fresh copies after each step), diffhammer "
        f"(N = K copies, {DiffHammerOptions().em_steps} EM rounds, then one backward pass through one grafted chain per "
        f"step: {args.iters} full backward passes, which is why it is cheaper) and pgd-eot with DiffAttack's "
        f"deviation term (W = {args.dev_weight:g}); AutoAttack rand: APGD-CE then APGD-DLR on the survivors, "
        f"{max(1, args.iters // 2)} iterations of EOT K each (APGD takes one gradient more than its iterations: "
        f"at most {2 * (max(1, args.iters // 2) + 1) * args.copies} copies). The worst case spends the five "
        f"budgets together. Step 2.5 eps / iterations; losses: each attack's default "
        f"(CE; margin for pgd-vote). Robust: the deployed vote on a held-out run whose seeds no attack used; "
        f"attack's own: the attack's verdict when it stopped (pgd-vote: its last vote check; diffhammer: some "
        f"copy wrong at its best iterate). {INTERVAL_NOTE[0].upper() + INTERVAL_NOTE[1:]}. Seconds: the attack "
        f"alone on the {n} images (batches of 64); all runs together {elapsed / 60:.0f} min of recorded compute.",
        "",
        "| defense | clean | attack | robust | attack's own | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for defense in views:
        clean = None
        for row in table_runs:
            report = reports[defense, row]
            clean = clean or format_accuracy(report.clean_accuracy.mean, n)
            attack = table_runs[row].attack
            stats = report.robust_accuracy_by_attack[attack]
            lines.append(f"| {defense} | {clean} | {row} | {format_accuracy(stats.mean, n)} | "
                         f"{format_accuracy(stats.attack_own.accuracy, n)} | "
                         f"{report.seconds_by_attack[attack]:.0f} |")
        worst = worst_case(defense, table_runs, args.out)
        lines.append(f"| {defense} | {clean} | **worst case over all** | "
                     f"**{format_accuracy(sum(worst) / n, n)}** | | |")
    lines += ["", f"Robust accuracy against attack iterations ({', '.join(curves)}; K = {args.copies}): "
              f"`{figure_path.name}`. 4x vs 1x, on the same images: how many became robust and how many "
              "stopped being robust with 4x the iterations, and the exact two-sided McNemar p-value "
              "(robustwrap.statistics.paired_sign_test).", "", "| defense | attack | " + " | ".join(
                  f"{f * args.iters} iterations ({f}x)" for f in (1, 2, 4)) + " | 4x vs 1x: gained / lost (p) |",
              "|---|---|---|---|---|---|"]
    for defense in ("uniform", "heterogeneous"):
        for attack in curves:
            cells = [format_accuracy(curve_reports[defense, attack, f].robust_accuracy_by_attack[attack].mean, n)
                     for f in (1, 2, 4)]
            first, last = (survivors(args.out / defense / folder, attack) for folder in (attack, f"{attack}-x4"))
            gained = sum(b and not a for a, b in zip(first, last))
            lost = sum(a and not b for a, b in zip(first, last))
            cells.append(f"{gained} / {lost} (p = {paired_sign_test(gained, lost):.3f})")
            lines.append(f"| {defense} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(curve_reports, curves, args, n: int, path: Path) -> None:
    """Robust accuracy (held-out vote) against iterations, one line per defense and attack, Wilson 95% bars."""
    plt = pyplot("attack_strength.py")
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    series = [(d, c, a, s) for d, c in (("uniform", "tab:blue"), ("heterogeneous", "tab:orange"))
              for a, s in zip(curves, ("-o", "--s", ":^"))]
    for k, (defense, colour, attack, style) in enumerate(series):
        # each series nudged sideways so that the error bars do not hide one another
        xs = [args.iters * f * 2 ** (0.04 * (k - (len(series) - 1) / 2)) for f in (1, 2, 4)]
        ys = [curve_reports[defense, attack, f].robust_accuracy_by_attack[attack].mean for f in (1, 2, 4)]
        bounds = [wilson_interval(y, n) for y in ys]
        axes.errorbar(xs, [100 * y for y in ys], yerr=[[100 * (y - lo) for y, (lo, _) in zip(ys, bounds)],
                                                       [100 * (hi - y) for y, (_, hi) in zip(ys, bounds)]],
                      fmt=style, color=colour, capsize=3, label=f"{defense}, {attack}")
    axes.set_xscale("log", base=2)
    axes.set_xticks([args.iters * f for f in (1, 2, 4)], [str(args.iters * f) for f in (1, 2, 4)])
    axes.set_xlabel(f"attack iterations (K = {args.copies} copies per step)")
    axes.set_ylabel(f"robust accuracy (%), {n} digits, held-out vote")
    axes.set_title(f"shipped MNIST models, calibrated defenses, L-inf {EPS:g}; bars: Wilson 95%", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
