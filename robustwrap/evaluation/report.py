"""The report of a run: clean and robust accuracy per run, over runs, per attack and in the worst case,
each with its Wilson 95% interval, and the attack's own count beside the held-out verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..statistics import INTERVAL_NOTE, interval_record
from .record import BatchRecord
from .results import versions


@dataclass(frozen=True)
class Accuracy:
    """A fraction of the n images, over R runs.

    Attributes:
        mean: the mean over runs, in [0, 1]; std: the spread over runs (0 for one run);
        per_run: each run's value; interval: [low, high], the Wilson 95% interval of ``mean`` over n images.
    """

    mean: float
    std: float
    per_run: list[float]
    interval: list[float]


@dataclass(frozen=True)
class RobustAccuracy(Accuracy):
    """Robust accuracy, with the worst run and the fraction robust in every run (each with its interval)."""

    worst_run: float
    worst_run_interval: list[float]
    all_runs: float
    all_runs_interval: list[float]


@dataclass(frozen=True)
class OwnVerdict:
    """An attack's own count beside the held-out verdict.

    Attributes:
        accuracy: the fraction the attack itself left standing; interval: its Wilson 95% interval;
        broken_by_attack_but_robust_held_out, robust_by_attack_but_broken_held_out: images where the two differ.
    """

    accuracy: float
    interval: list[float]
    broken_by_attack_but_robust_held_out: int
    robust_by_attack_but_broken_held_out: int


@dataclass(frozen=True)
class AttackAccuracy(RobustAccuracy):
    """One attack's robust accuracy and its own verdict."""

    attack_own: OwnVerdict


@dataclass(frozen=True)
class Report:
    """The report of one run (``report.json`` is :meth:`to_json`).

    Attributes:
        n_samples: the images; runs: R; subset: how they were drawn; attacks: in order; threat: the
            threat model, budget and each attack's options; clean_accuracy; robust_accuracy: robust to every
            attack (the per-image worst case); robust_accuracy_by_attack: each attack alone; verdicts and
            intervals: how to read them; seconds (and per attack); settings: the results header; versions.
    """

    n_samples: int
    runs: int
    subset: dict | None
    attacks: list[str]
    threat: dict
    clean_accuracy: Accuracy
    robust_accuracy: RobustAccuracy
    robust_accuracy_by_attack: dict[str, AttackAccuracy]
    verdicts: str
    intervals: str
    seconds: float
    seconds_by_attack: dict[str, float]
    settings: dict
    versions: dict

    def to_json(self) -> dict:
        """The report as ``report.json`` holds it (the worst run and all runs of the worst case at the top level)."""
        worst = self.robust_accuracy
        out = {field.name: getattr(self, field.name) for field in fields(self)}
        out.update(clean_accuracy=asdict(self.clean_accuracy),
                   robust_accuracy={k: getattr(worst, k) for k in ("mean", "std", "per_run", "interval")},
                   robust_accuracy_by_attack={a: asdict(v) for a, v in self.robust_accuracy_by_attack.items()},
                   robust_accuracy_worst_run=worst.worst_run, robust_accuracy_worst_run_interval=worst.worst_run_interval,
                   robust_accuracy_all_runs=worst.all_runs, robust_accuracy_all_runs_interval=worst.all_runs_interval)
        order = ("n_samples", "runs", "subset", "attacks", "threat", "clean_accuracy", "robust_accuracy",
                 "robust_accuracy_by_attack", "verdicts", "robust_accuracy_worst_run",
                 "robust_accuracy_worst_run_interval", "robust_accuracy_all_runs", "robust_accuracy_all_runs_interval",
                 "intervals", "seconds", "seconds_by_attack", "settings", "versions")
        return {key: out[key] for key in order}


def _stats(values: list[float], n: int) -> dict:
    """Mean, std over runs, per-run values, and the Wilson 95% interval of the mean over n images."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "per_run": values, "interval": interval_record(mean, n)}


def summarize(records: list[BatchRecord], header: dict) -> Report:
    """Accuracy over all images: per run, mean and std over runs, worst case, Wilson 95% intervals.

    ``robust_accuracy`` counts an image as robust in a run when it is classified correctly
    after every attack (the per-image worst case over attacks, as AutoAttack reports its
    ensemble); ``robust_accuracy_by_attack`` gives each attack alone; ``all_runs`` is the
    fraction of images robust in all R runs (the risk of resubmitting an example).
    """
    settings = header["eval"]
    runs, attacks = settings["runs"], settings["attack"].split(",")
    n = sum(r.size for r in records)
    images = [(r, i) for r in records for i in range(r.size)]

    def summary(names: list[str]) -> dict:
        per_run = [sum(r.survived(names, run, i) for r, i in images) / n for run in range(runs)]
        every_run = sum(all(r.survived(names, run, i) for run in range(runs)) for r, i in images) / n
        return {**_stats(per_run, n), "worst_run": min(per_run), "worst_run_interval": interval_record(min(per_run), n),
                "all_runs": every_run, "all_runs_interval": interval_record(every_run, n)}

    def own_summary(name: str) -> OwnVerdict:
        """The attack's own count beside the held-out verdict, and where they disagree."""
        own = sum(r.own[name][i] for r, i in images) / n
        held_out_robust = [(r.own[name][i], all(r.robust[name][run][i] for run in range(runs))) for r, i in images]
        return OwnVerdict(own, interval_record(own, n), sum(not o and h for o, h in held_out_robust),
                          sum(o and not h for o, h in held_out_robust))

    clean = [sum(sum(r.clean[run]) for r in records) / n for run in range(runs)]
    return Report(
        n_samples=n,
        runs=runs,
        subset=header.get("subset"),
        attacks=attacks,
        threat={key: settings.get(key) for key in ("norm", "eps", "step_size", "iters", "eot", "loss", "losses",
                                                    "surrogate_steps", "options")},
        clean_accuracy=Accuracy(**_stats(clean, n)),
        robust_accuracy=RobustAccuracy(**summary(attacks)),
        robust_accuracy_by_attack={a: AttackAccuracy(**summary([a]), attack_own=own_summary(a)) for a in attacks},
        verdicts=((f"held out: the vote rule ({header['defense']['vote']}, {header['defense']['votes']} votes) on "
                   if not header["deterministic"] else "the bare classifier's argmax (deterministic) on ")
                  + f"{runs} run(s) whose seeds no attack used; attack_own: the attack's own verdict"),
        intervals=INTERVAL_NOTE,
        seconds=round(sum(r.seconds for r in records), 1),
        seconds_by_attack={a: round(sum(r.attack_seconds.get(a, 0.0) for r in records), 1) for a in attacks},
        settings=header,
        versions=versions(),
    )
