"""Several defenses of one model pair under one attack setting, each in its own folder: what ``robustwrap eval`` runs.

The comparison folder holds one results folder per defense (named as in :data:`DEFENSES`) and
the figure :data:`FIGURE`. :func:`calibrated_defenses` says which setting each defense runs at
(for the shipped pair, the ones ``robustwrap tune`` calibrated), :func:`check_comparison_folder`
refuses before any work what may not be written, and :func:`compare` runs them and draws the figure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import MODES
from ..data import subset_sentence
from ..outputs import Layout, check_output
from .config import DEFENSES, EvalConfig
from .figure import plot_accuracy
from .report import Report
from .results import check_results_folder, is_evaluation_folder
from .run import run_evaluation

if TYPE_CHECKING:
    from torch import Tensor

    from ..config import PurifyConfig
    from ..defense import Defense

FIGURE = "accuracy.png"  # beside the defenses' folders


def _owns(folder: Path, entry: Path) -> bool:
    """One results folder per defense, and the figure."""
    return entry.is_file() if entry.name == FIGURE else entry.name in DEFENSES and is_evaluation_folder(entry)


LAYOUT = Layout("eval folder", owns=_owns, marker=lambda folder: any(
    e.name in DEFENSES and _owns(folder, e) for e in folder.iterdir()))


def check_comparison_folder(out: str | os.PathLike, chosen: Sequence[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a folder that may not be written: ``out`` must be new, empty or a comparison
    folder, and a chosen defense's results there need ``resume`` or ``overwrite``.

    Raises:
        ValueError, FileExistsError: naming the folder and what to do.
    """
    out = Path(out)
    check_output(out, overwrite=True, layout=LAYOUT, parents=True)
    for name in chosen:
        check_results_folder(out / name, resume=resume, overwrite=overwrite)


def calibrated_defenses(chosen: Sequence[str], defense: PurifyConfig, calibrated: Mapping[str, Path], *,
                        own_defense: bool) -> tuple[dict[str, PurifyConfig], str]:
    """Each chosen defense's PurifyConfig, and a sentence saying the uniform / heterogeneous settings and
    where they come from ("" when neither mode is chosen).

    Args:
        chosen: defense names (:data:`DEFENSES`).
        defense: the setting given (its ``votes`` apply to every defense).
        calibrated: mode -> the config file ``robustwrap tune`` calibrated for this model pair
            (:func:`robustwrap.store.calibrated_configs`; empty for other models or weights).
        own_defense: the setting was given explicitly (a file or its fields): then it runs in each mode.
    """
    from ..config import PurifyConfig
    from ..schedule import describe_defense

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


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` leaves in its folder.

    Attributes:
        reports: defense name -> its :class:`~robustwrap.evaluation.Report` (``report.json`` is its ``to_json()``),
            on rank 0; empty on other ranks.
        figure: the figure written, or None (other ranks, or no figure could be drawn).
        figure_problem: why no figure was drawn (the results are saved regardless), or None.
    """

    reports: dict[str, Report]
    figure: Path | None
    figure_problem: str | None


def compare(views: Mapping[str, Defense], images: Tensor, labels: Tensor, cfg: EvalConfig, out: str | os.PathLike,
            *, num_classes: int, subset: dict, description: dict, resume: bool = False, overwrite: bool = False,
            on_batch: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Evaluate each defense under ``cfg`` into ``out/<name>`` (:func:`run_evaluation`), then draw the figure.

    Args:
        views: defense name -> the defense (:func:`robustwrap.evaluation.defense_view`), in table order.
        images: (N, C, H, W) in [0, 1]; labels: (N,) int64; subset: how they were drawn
            (:func:`robustwrap.data.draw_subset`); description: facts recorded in every header.
        on_batch: ``on_batch(name, done, total)`` after each batch of defense ``name``.

    Raises:
        ValueError, FileExistsError, RuntimeError, ImportError, FileNotFoundError: as :func:`run_evaluation`.
    """
    out = Path(out)
    reports = {}
    for name, view in views.items():
        report = run_evaluation(view, images, labels, cfg, out / name, num_classes=num_classes, resume=resume,
                                overwrite=overwrite, subset=subset, description={**description, "defense_name": name},
                                on_batch=None if on_batch is None else
                                lambda done, total, name=name: on_batch(name, done, total))
        if report is not None:
            reports[name] = report
    if not reports:
        return Comparison({}, None, None)
    caption = (f"{subset_sentence(subset)}. Bars: Wilson 95% intervals. Robust: the vote on held-out runs whose "
               f"noise no attack used" + (f", mean over {cfg.runs} runs" if cfg.runs > 1 else "") + ".")
    try:
        plot_accuracy(reports, out / FIGURE, title=f"accuracy under {', '.join(cfg.attacks)} ({cfg.describe()})",
                      caption=caption)
    except (ImportError, OSError, ValueError) as error:  # the results are saved: a figure problem is a note
        return Comparison(reports, None, str(error))
    return Comparison(reports, out / FIGURE, None)
