"""The eval's figure: clean and robust accuracy per defense and attack, each with its Wilson 95% bar."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping

from ..figures import interval_bars, pyplot
from .report import Report


def accuracy_bars(report: Report) -> list[tuple[str, float, list[float]]]:
    """(label, accuracy, [low, high]) for one defense's report (:func:`.report.summarize`): clean,
    each attack alone and, with several attacks, the per-image worst case ("all attacks")."""
    bars = [("clean", report.clean_accuracy.mean, report.clean_accuracy.interval)]
    by_attack = report.robust_accuracy_by_attack
    bars += [(attack, by_attack[attack].mean, by_attack[attack].interval) for attack in report.attacks]
    if len(report.attacks) > 1:
        bars.append(("all attacks", report.robust_accuracy.mean, report.robust_accuracy.interval))
    return bars


def plot_accuracy(reports: Mapping[str, Report], path: str | os.PathLike, *, title: str, caption: str) -> None:
    """Grouped bars, one group per defense (in ``reports``' order), one bar per :func:`accuracy_bars`
    entry, each labelled with its percentage and carrying its Wilson 95% interval as an error bar.

    Args:
        reports: defense name -> its report (the eval's ``report.json``); accuracies in [0, 1].
        path: the PNG to write.
        title: what was attacked, how (attack, budget); caption: on which images, how verdicts are made.
    """
    plt = pyplot("robustwrap eval")
    names = list(reports)
    bars = {name: accuracy_bars(reports[name]) for name in names}
    labels = list(dict.fromkeys(label for name in names for label, _, _ in bars[name]))
    width = 0.8 / len(labels)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 0.55 * len(labels) * len(names)), 4.6), dpi=120)
    colours = plt.get_cmap("tab10")
    for j, label in enumerate(labels):
        xs, rates = [], []
        for i, name in enumerate(names):
            for bar_label, value, (low, high) in bars[name]:
                if bar_label == label:
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    rates.append((value, low, high))
        interval_bars(axes, xs, rates, width * 0.92, label=label,
                      color="lightgrey" if label == "clean" else colours(j % 10))
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 112)
    axes.set_ylabel("accuracy (%)")
    characters = int(figure.get_figwidth() * 12)  # what fits across the figure at the title's size
    axes.set_title(textwrap.fill(title, characters), fontsize=9)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over a label
    axes.grid(axis="y", alpha=0.3)
    figure.text(0.01, 0.01, caption, fontsize=7, wrap=True)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path)
    plt.close(figure)
