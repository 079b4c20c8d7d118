"""Calibrate the defense to a classifier: sweep noise levels and mask cut at a fixed denoiser budget.

The paper's first stated limitation is that the attention mask depends on the classifier, so
τ, t_l and t_s need tuning per network. :func:`tune` does that on held-out data:

- candidates: the heterogeneous defense over (t_l, t_s = t_l / 2, τ or top fraction) and the
  uniform baseline over t* (all-ones mask), each at the same number of denoiser calls per image;
- every candidate is scored by :func:`robustwrap.evaluation.run_evaluation` (so it is resumable
  batch by batch): clean accuracy on the whole set (or on a seeded stratified subset of
  ``n_clean`` images), robust accuracy on a seeded stratified subset under an adaptive attack
  (full-gradient PGD+EOT by default, an :class:`~robustwrap.evaluation.EvalConfig`), each with
  its Wilson 95% interval;
- a coarse grid first, then the neighbours of each family's best point;
- the chosen setting is the most robust one whose clean accuracy is at least ``min_clean`` times
  the undefended classifier's (ties: the higher clean accuracy).

Everything lands in ``out``: one evaluation folder per candidate, ``points.json``, ``table.md``,
``frontier.png``, the chosen configuration as ``best.json`` (:meth:`PurifyConfig.load` reads it)
and each family's own choice (same rule, same floor, same budget) as ``best-<family>.json``: the
pair a like-with-like comparison of uniform against heterogeneous noise needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from torch import Tensor

from .config import MODES, PurifyConfig
from .schema import normalize, setting, type_problems, type_problems_of
from .schema import problems as schema_problems
from .data import draw_subset
from .defense import BareClassifier
from .evaluation import EvalConfig, check_inputs, is_evaluation_folder, run_evaluation
from .figures import pyplot
from .fingerprint import header_differences, run_fingerprint
from .outputs import (Layout, check_resumable_output, is_atomic_temporary, dumps_strict, make_folders, remove_empty_folders, remove_ours,
                      write_text_atomic)
from .schedule import make_plan
from .statistics import INTERVAL_NOTE, format_accuracy, interval_record, wilson_interval
from .wrapper import RobustWrapper

FAMILIES = MODES  # the defense modes swept (robustwrap.evaluation's defense choice); "none" is the baseline
TUNE_ATTACKS = ("pgd-eot", "bpda")  # the attacks a sweep may use: full gradient, or a cheaper surrogate
# The attack every candidate faces by default: full-gradient PGD, 10 iterations, EOT 1, CE loss, batches of 64.
TUNE_ATTACK = EvalConfig(attack="pgd-eot", iters=10, eot=1, loss="ce", batch_size=64)
TUNE_FILES = ("tune.json", "points.json", "table.md", "frontier.png", "best.json",  # beside the candidates' folders
              *(f"best-{family}.json" for family in FAMILIES))


@dataclass(frozen=True)
class Candidate:
    """One point of the sweep.

    Attributes:
        family: one of :data:`FAMILIES`: "uniform" (all-ones mask at t* = ``t_l``) or
            "heterogeneous"; "none" is the undefended classifier.
        t_l: strong noise level (t* for uniform), fraction of 1000.
        cut: τ for the threshold rule, the top fraction for the top-fraction rule (unused for uniform).
    """

    family: str
    t_l: float = 0.0
    cut: float = 0.0

    @property
    def name(self) -> str:
        if self.family == "none":
            return "none"
        if self.family == "uniform":
            return f"uniform-t{self.t_l:.3f}"
        return f"heterogeneous-t{self.t_l:.3f}-cut{self.cut:.3f}"

    def config(self, base: PurifyConfig, calls: int) -> PurifyConfig:
        """The defense at this point, spending ``calls`` denoiser calls per purification."""
        levels = {"t_l": self.t_l, "t_s": round(self.t_l / 2, 6)}
        if self.family == "uniform":
            config = replace(base, mode="uniform", **levels)
        elif base.mask_rule == "threshold":
            config = replace(base, mode="heterogeneous", tau=self.cut, **levels)
        else:
            config = replace(base, mode="heterogeneous", top_fraction=self.cut, **levels)
        return replace(config, steps=steps_for_calls(config, calls))


def steps_for_calls(config: PurifyConfig, calls: int) -> int:
    """The DDIM ``steps`` whose plan spends the number of denoiser calls nearest ``calls``.

    Ties go to the smaller ``steps``. With t_l = 0.2 and 10 calls this is 50.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    centre = calls / config.t_l
    best: tuple[int, int] | None = None
    for steps in range(max(1, math.floor(centre) - 3), min(1000, math.ceil(centre) + 3) + 1):
        try:
            spent = make_plan(replace(config, steps=steps)).denoiser_calls
        except ValueError:
            continue
        if best is None or abs(spent - calls) < abs(best[1] - calls):
            best = (steps, spent)
    if best is None:
        raise ValueError(f"no steps give about {calls} denoiser calls at t_l = {config.t_l}")
    return best[0]


@dataclass(frozen=True)
class TuneSettings:
    """What :func:`tune` sweeps and how it scores (defaults: minutes on the shipped MNIST models).

    The attack is an :class:`~robustwrap.evaluation.EvalConfig` (``evaluation``; its ``seed``
    also draws the subsets, its ``batch_size`` is the attacked batch); :data:`TUNE_ATTACK` is the
    default, and ``dataclasses.replace(TUNE_ATTACK, iters=...)`` changes one setting.
    """

    calls: int = setting(10, ge=1, help="denoiser calls per image and vote, for every candidate")
    uniform_levels: tuple[float, ...] = (0.1, 0.3, 0.5)        # coarse t* grid
    heterogeneous_levels: tuple[float, ...] = (0.2, 0.4, 0.6)  # coarse t_l grid (t_s = t_l / 2)
    cuts: tuple[float, ...] = (0.9,)         # coarse τ (threshold rule) or top fractions
    refine: bool = setting(True, help="then try each family's best point's neighbours")
    level_step: float = setting(0.1, gt=0, lt=1, help="neighbours: t_l ± this (half the coarse spacing)")
    cut_step: float = setting(0.1, gt=0, lt=1, help="neighbours: cut ± this")
    families: tuple[str, ...] = FAMILIES     # which families to sweep
    n_attack: int = setting(64, ge=0, help="stratified subset attacked (0 = every image)")
    n_clean: int | None = setting(None, ge=1, help="stratified subset for clean accuracy (None = every image)")
    evaluation: EvalConfig = TUNE_ATTACK     # the attack: one of TUNE_ATTACKS, its budget, seed and batch size
    min_clean: float = setting(0.97, gt=0, le=1, help="chosen point: clean >= this x the undefended clean accuracy")

    def __post_init__(self) -> None:
        levels = {f"{name}[{i}]": value for name in ("uniform_levels", "heterogeneous_levels", "cuts")
                  for i, value in enumerate(getattr(self, name))}
        problems = type_problems_of(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        problems += type_problems(levels, floats=tuple(levels))
        if not isinstance(self.evaluation, EvalConfig):
            problems.append(f"evaluation must be an EvalConfig, got {type(self.evaluation).__name__}")
        if problems:  # the range checks below need numbers
            raise ValueError("invalid tune settings: " + "; ".join(problems))
        normalize(self)
        problems = schema_problems(self)  # the declared bounds
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            problems.append(f"families must be a non-empty subset of {FAMILIES}, got {self.families}")
        if self.evaluation.attack not in TUNE_ATTACKS:
            problems.append(f"attack must be 'pgd-eot' or 'bpda', got {self.evaluation.attack!r}")
        if not all(0 < level < 1 for level in (*self.uniform_levels, *self.heterogeneous_levels)) \
                or not all(0 < cut <= 1 for cut in self.cuts):
            problems.append("noise levels must be in (0, 1) and cuts in (0, 1]")
        if problems:
            raise ValueError("invalid tune settings: " + "; ".join(problems))

    def eval_config(self) -> EvalConfig:
        """The attack every candidate faces (``evaluation``)."""
        return self.evaluation

    def check_data_size(self, n_images: int) -> None:
        """Refuse subsets larger than the data (``n_clean`` at most ``n_images``).

        Raises:
            ValueError: ``n_clean`` exceeds ``n_images``.
        """
        if self.n_clean is not None and self.n_clean > n_images:
            raise ValueError(f"n_clean is {self.n_clean} but the data holds {n_images} images: "
                             f"choose at most {n_images} (or leave it unset for all of them)")


@dataclass(frozen=True)
class Point:
    """A scored candidate: clean accuracy on the whole set, robust accuracy on the attacked subset."""

    candidate: Candidate
    config: PurifyConfig | None
    calls: int
    clean: float
    n_clean: int
    robust: float
    n_robust: int

    @property
    def clean_interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the clean accuracy (:mod:`robustwrap.statistics`)."""
        return wilson_interval(self.clean, self.n_clean)

    @property
    def robust_interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the robust accuracy."""
        return wilson_interval(self.robust, self.n_robust)

    def to_dict(self) -> dict:
        return {"name": self.candidate.name, **dataclasses.asdict(self.candidate),
                "config": None if self.config is None else self.config.to_dict(),
                **{k: getattr(self, k) for k in ("calls", "clean", "n_clean", "robust", "n_robust")},
                "clean_interval": interval_record(self.clean, self.n_clean),
                "robust_interval": interval_record(self.robust, self.n_robust)}


@dataclass(frozen=True)
class TuneResult:
    """All scored points, the undefended baseline, the choice and where the files went."""

    baseline: Point
    points: tuple[Point, ...]
    chosen: Point
    meets_min_clean: bool
    clean_floor: float
    out: Path
    n_images: int | None = None  # the data set's size (clean accuracy may be on a subset of it)

    @property
    def by_family(self) -> dict[str, tuple[Point, bool]]:
        """Each swept family's own choice (:func:`choose` over its points, same floor) and whether it meets it."""
        families = dict.fromkeys(p.candidate.family for p in self.points)
        return {family: choose([p for p in self.points if p.candidate.family == family], self.clean_floor)
                for family in families}

    @property
    def config(self) -> PurifyConfig:
        assert self.chosen.config is not None
        return self.chosen.config


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats in both clean and robust accuracy, by clean accuracy."""
    front = [p for p in points
             if not any(q.clean >= p.clean and q.robust >= p.robust and (q.clean, q.robust) != (p.clean, p.robust)
                        for q in points)]
    return sorted(front, key=lambda p: p.clean)


def choose(points: list[Point], clean_floor: float) -> tuple[Point, bool]:
    """The most robust point with clean >= ``clean_floor`` (ties: higher clean); else the cleanest."""
    eligible = [p for p in points if p.clean >= clean_floor]
    if eligible:
        return max(eligible, key=lambda p: (p.robust, p.clean)), True
    return max(points, key=lambda p: (p.clean, p.robust)), False


def neighbours(point: Point, settings: TuneSettings) -> list[Candidate]:
    """Candidates around ``point``: t_l ± level_step and, for the heterogeneous family, cut ± cut_step."""
    c = point.candidate
    around = [replace(c, t_l=round(c.t_l + d, 6)) for d in (-settings.level_step, settings.level_step)]
    if c.family == "heterogeneous":
        around += [replace(c, cut=round(c.cut + d, 6)) for d in (-settings.cut_step, settings.cut_step)]
    return [a for a in around if 0.02 <= a.t_l <= 0.95 and (a.family == "uniform" or 0.05 <= a.cut <= 1.0)]


def coarse_grid(settings: TuneSettings) -> list[Candidate]:
    """The first sweep: every uniform t* and every heterogeneous (t_l, cut)."""
    grid: list[Candidate] = []
    if "uniform" in settings.families:
        grid += [Candidate("uniform", t) for t in settings.uniform_levels]
    if "heterogeneous" in settings.families:
        grid += [Candidate("heterogeneous", t, cut) for t in settings.heterogeneous_levels for cut in settings.cuts]
    return grid


def tune(
    wrapper: RobustWrapper,
    images: Tensor,
    labels: Tensor,
    out: str | os.PathLike,
    settings: TuneSettings = TuneSettings(),
    *,
    num_classes: int,
    resume: bool = False,
    overwrite: bool = False,
    description: dict | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> TuneResult:
    """Sweep the defense on held-out data and pick the most robust setting above a clean floor.

    Args:
        wrapper: the defended classifier; its config is the base (mask rule, U, votes, ...) and
            each candidate runs on ``wrapper.with_config(...)`` (the same networks).
        images: (N, C, H, W) held-out images in [0, 1]; labels: (N,) in [0, num_classes).
        out: folder for the evaluations, the table, the plot and ``best.json``.
        resume: continue a sweep recorded in ``out`` (same settings, data and weights: ``tune.json``
            records their fingerprints); otherwise ``out`` must not hold one.
        overwrite: replace ``out`` when it holds only an earlier sweep's files (never a folder
            with other files: :mod:`robustwrap.outputs`). A sweep that fails before scoring
            anything leaves nothing behind.
        description: JSON-able facts recorded with the settings (model and data specs).
        on_progress: called with (candidates done, candidates planned so far, the one just done).

    Returns:
        The scored points and the chosen one (``result.config`` is its PurifyConfig).
    """
    out = Path(out)
    check_inputs(wrapper, images, labels, num_classes)
    settings.check_data_size(int(images.shape[0]))
    check_resumable_output(out, resume=resume, overwrite=overwrite, layout=TUNE_LAYOUT)
    header = {"tune": dataclasses.asdict(settings), "base": wrapper.config.to_dict(),
              "n_images": int(images.shape[0]), **(description or {}),
              "fingerprint": run_fingerprint(images, labels, wrapper.classifier, wrapper.eps_model)}
    if settings.n_clean is not None:  # which images clean accuracy is measured on (their indices: each clean/report.json)
        subset = draw_subset(labels, settings.n_clean, settings.evaluation.seed, spec=(description or {}).get("data"))[1]
        header["clean_subset"] = {key: value for key, value in subset.items() if key != "indices"}
    header = json.loads(dumps_strict(header))  # as it reads back (tuples become lists)
    settings_file = out / "tune.json"
    if resume and settings_file.exists():
        changes = header_differences(json.loads(settings_file.read_text()), header)
        if changes:
            raise ValueError(f"{out} holds a sweep with other settings ({', '.join(changes[:4])}): choose another "
                             "folder, or --overwrite to replace it")
    if overwrite:
        remove_ours(out, layout=TUNE_LAYOUT)
    created = make_folders(out)
    fresh = not settings_file.exists()
    write_text_atomic(settings_file, dumps_strict(header, indent=2) + "\n")
    try:
        return _sweep(wrapper, images, labels, out, settings, header, num_classes=num_classes,
                      description=description, on_progress=on_progress)
    except BaseException:
        if fresh and all(entry.name == "tune.json" for entry in out.iterdir()):  # nothing scored: leave nothing
            settings_file.unlink()
            remove_empty_folders(created)
        raise


def _has_tune_record(folder: Path) -> bool:
    """Whether ``folder/tune.json`` reads as a sweep's header."""
    try:
        record = json.loads((folder / "tune.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(record, dict) and "tune" in record


def _tune_owns(folder: Path, entry: Path) -> bool:
    """The summary files, and one folder of evaluations (``clean``, ``robust``) per candidate."""
    if entry.is_dir():
        return all(e.name in ("clean", "robust") and is_evaluation_folder(e) for e in entry.iterdir())
    return entry.is_file() and (entry.name in TUNE_FILES or is_atomic_temporary(entry, TUNE_FILES))


TUNE_LAYOUT = Layout("tune folder", marker=_has_tune_record, owns=_tune_owns, record="tune.json")



def _sweep(wrapper: RobustWrapper, images: Tensor, labels: Tensor, out: Path, settings: TuneSettings, header: dict,
           *, num_classes: int, description: dict | None,
           on_progress: Callable[[int, int, str], None] | None) -> TuneResult:
    """Score the coarse grid and the refinements into ``out`` (checked, ``tune.json`` written); write the outputs."""
    attack = settings.evaluation
    spec = (description or {}).get("data")
    attacked, subset = draw_subset(labels, settings.n_attack, attack.seed, spec=spec)
    cleaned, clean_subset = (draw_subset(labels, settings.n_clean, attack.seed, spec=spec)
                             if settings.n_clean is not None else (None, None))
    clean_images, clean_labels = (images, labels) if cleaned is None else (images[cleaned], labels[cleaned])
    clean_only = EvalConfig(attack="none", seed=attack.seed, batch_size=max(attack.batch_size, 256))

    def score(candidate: Candidate) -> Point:
        config = None if candidate.family == "none" else candidate.config(wrapper.config, settings.calls)
        view = BareClassifier(wrapper) if config is None else wrapper.with_config(config)
        folder = out / candidate.name
        clean = run_evaluation(view, clean_images, clean_labels, clean_only,
                               folder / "clean", num_classes=num_classes, resume=True, subset=clean_subset,
                               description=description)
        robust = run_evaluation(view, images[attacked], labels[attacked], attack,
                                folder / "robust", num_classes=num_classes, resume=True, subset=subset,
                                description=description)
        assert clean is not None and robust is not None  # single process: every batch is recorded
        return Point(candidate, config, view.calls_per_image,
                     clean.clean_accuracy.mean, clean.n_samples, robust.robust_accuracy.mean, robust.n_samples)

    planned = [Candidate("none"), *coarse_grid(settings)]
    scored: dict[str, Point] = {}

    def run(candidates: list[Candidate]) -> None:
        for candidate in candidates:
            if candidate.name not in scored:
                scored[candidate.name] = score(candidate)
                if on_progress is not None:
                    on_progress(len(scored), len(planned), candidate.name)

    run(planned)
    baseline = scored["none"]
    clean_floor = settings.min_clean * baseline.clean
    if settings.refine:
        for family in settings.families:
            members = [p for p in scored.values() if p.candidate.family == family]
            if members:
                extra = [c for c in neighbours(choose(members, clean_floor)[0], settings) if c.name not in scored]
                planned += extra
                run(extra)
    points = [p for p in scored.values() if p.candidate.family != "none"]
    chosen, meets = choose(points, clean_floor)
    result = TuneResult(baseline, tuple(points), chosen, meets, clean_floor, out, int(images.shape[0]))
    write_outputs(result, settings, header)
    return result


def write_outputs(result: TuneResult, settings: TuneSettings, header: dict) -> None:
    """``points.json``, ``table.md``, ``frontier.png``, ``best.json`` and ``best-<family>.json`` in ``result.out``."""
    out = result.out
    result.config.save(out / "best.json")
    for family, (point, _) in result.by_family.items():
        assert point.config is not None
        point.config.save(out / f"best-{family}.json")
    summary = {"settings": header, "baseline": result.baseline.to_dict(), "chosen": result.chosen.candidate.name,
               "meets_min_clean": result.meets_min_clean, "clean_floor": result.clean_floor,
               "chosen_by_family": {family: {"name": point.candidate.name, "meets_min_clean": meets}
                                    for family, (point, meets) in result.by_family.items()},
               "points": [p.to_dict() for p in result.points],
               "pareto": {f: [p.candidate.name for p in pareto_front([q for q in result.points if q.candidate.family == f])]
                          for f in settings.families}}
    write_text_atomic(out / "points.json", dumps_strict(summary, indent=2) + "\n")
    write_text_atomic(out / "table.md", table_markdown(result, settings))
    plot_frontiers(result, settings, out / "frontier.png")


def describe_attack(settings: TuneSettings, n_robust: int, n_clean: int, of: int | None = None) -> str:
    """One sentence: which attack, what budget, on what subset; clean accuracy on which images (``of``: the data's size)."""
    attack = settings.evaluation
    step = attack.step if attack.step is not None else 0.0
    clean = (f"all {n_clean} images" if settings.n_clean is None else
             f"a seeded stratified subset of {n_clean}{'' if of is None else f' of {of}'} images (seed {attack.seed})")
    return (f"{'full-gradient PGD+EOT' if attack.attack == 'pgd-eot' else 'BPDA'} ({attack.norm}, eps {attack.radius:.4g}, "
            f"{attack.iters} iterations of step {step:.4g}, EOT {attack.eot}, loss {attack.describe_losses()}) on a "
            f"seeded stratified subset of {n_robust} images (seed {attack.seed}); clean accuracy on {clean}; "
            f"{settings.calls} denoiser calls per image for every defense")


def table_markdown(result: TuneResult, settings: TuneSettings) -> str:
    """The sweep as a Markdown table, with its protocol and the choice stated."""
    lines = [
        f"Robust accuracy: {describe_attack(settings, result.baseline.n_robust, result.baseline.n_clean, result.n_images)}. "
        f"{INTERVAL_NOTE}.",
        "",
        "| setting | family | t_l (t*) | t_s | cut | steps | calls | clean | robust |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [result.baseline, *sorted(result.points, key=lambda p: (p.candidate.family, p.candidate.t_l, p.candidate.cut))]
    family_choices = [point for point, _ in result.by_family.values()]
    for p in rows:
        c, cfg = p.candidate, p.config
        mark = (" **(chosen)**" if p is result.chosen else
                " (its family's choice)" if any(p is q for q in family_choices) else "")
        lines.append(
            f"| {c.name}{mark} | {c.family} | {'-' if cfg is None else f'{cfg.t_l:g}'} | {'-' if cfg is None else f'{cfg.t_s:g}'} | "
            f"{'-' if c.family != 'heterogeneous' else f'{c.cut:g}'} | {'-' if cfg is None else cfg.steps} | {p.calls} | "
            f"{format_accuracy(p.clean, p.n_clean)} | {format_accuracy(p.robust, p.n_robust)} |"
        )
    verdict = "meets" if result.meets_min_clean else "no setting meets"
    lines += ["", f"Chosen: `{result.chosen.candidate.name}` ({verdict} the clean floor "
                  f"{settings.min_clean:g} x {result.baseline.clean:.1%} = {result.clean_floor:.1%}); config in best.json."]
    for family, (point, meets) in result.by_family.items():
        lines.append(f"Best {family}: `{point.candidate.name}` ({'meets' if meets else 'no setting meets'} the floor); "
                     f"config in best-{family}.json.")
    lines.append("")
    return "\n".join(lines)


def plot_frontiers(result: TuneResult, settings: TuneSettings, path: Path) -> None:
    """Robust vs clean accuracy per family with Wilson 95% bars; the choice and floor marked.

    Two panels: every point (left) and the points near the clean floor (right, clean accuracy
    from 5 points below the floor up), where the choice is made and the points crowd.
    """
    plt = pyplot("robustwrap tune")
    figure, (whole, near) = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    for axes in (whole, near):
        _draw_points(axes, result, settings)
    low = result.clean_floor - 0.05
    near_points = [p for p in (result.baseline, *result.points) if p.clean >= low]
    near.set_xlim(low, 1.0 + 0.005)
    near.set_ylim(-0.01, max(p.robust_interval[1] for p in near_points) + 0.02)
    near.set_title("near the clean floor", fontsize=10)
    attack = settings.evaluation
    whole.set_title(f"{attack.norm} eps {attack.radius:.3g}, PGD {attack.iters} it. x EOT {attack.eot}, "
                    f"{settings.calls} denoiser calls; bars: Wilson 95%", fontsize=10)
    whole.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _error_bars(points: list[Point], which: str) -> list[list[float]]:
    """matplotlib's asymmetric bars [[below...], [above...]] from each point's Wilson interval."""
    pairs = [(getattr(p, which), getattr(p, f"{which}_interval")) for p in points]
    return [[value - low for value, (low, _) in pairs], [high - value for value, (_, high) in pairs]]


def _draw_points(axes, result: TuneResult, settings: TuneSettings) -> None:
    """Both families' points and Pareto fronts, the undefended classifier, the choice and the floor."""
    colours = {"uniform": "tab:blue", "heterogeneous": "tab:orange"}
    for family in settings.families:
        members = sorted((p for p in result.points if p.candidate.family == family), key=lambda p: p.clean)
        if not members:
            continue
        axes.errorbar([p.clean for p in members], [p.robust for p in members],
                      xerr=_error_bars(members, "clean"), yerr=_error_bars(members, "robust"),
                      fmt="o", color=colours[family], alpha=0.6, capsize=2, label=f"{family} (all points)")
        front = pareto_front(members)
        axes.plot([p.clean for p in front], [p.robust for p in front], "-", color=colours[family], label=f"{family} frontier")
    base = result.baseline
    axes.errorbar([base.clean], [base.robust], xerr=_error_bars([base], "clean"), yerr=_error_bars([base], "robust"),
                  fmt="s", color="black",
                  capsize=2, label="no defense")
    axes.plot([result.chosen.clean], [result.chosen.robust], "*", markersize=18, color="tab:red",
              label=f"chosen: {result.chosen.candidate.name}")
    axes.axvline(result.clean_floor, color="grey", linestyle=":", label=f"clean floor ({settings.min_clean:g} x no defense)")
    seed = settings.evaluation.seed
    axes.set_xlabel(f"clean accuracy (all {base.n_clean} images)" if settings.n_clean is None
                    else f"clean accuracy ({base.n_clean} images, stratified, seed {seed})")
    axes.set_ylabel(f"robust accuracy ({base.n_robust} images, stratified, seed {seed})")
    axes.grid(alpha=0.3)
