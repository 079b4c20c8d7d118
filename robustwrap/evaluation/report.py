"""The report of a run: clean and robust accuracy per run, over runs, per attack and in the worst case,
each with its Wilson 95% interval, and the attack's own count beside the held-out verdict."""

from __future__ import annotations

import math

from ..statistics import INTERVAL_NOTE, interval_record
from .record import BatchRecord
from .results import versions


def _stats(values: list[float], n: int) -> dict:
    """Mean, std over runs, per-run values, and the Wilson 95% interval of the mean over n images."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "per_run": values, "interval": interval_record(mean, n)}


def summarize(records: list[BatchRecord], header: dict) -> dict:
    """Accuracy over all images: per run, mean and std over runs, worst case, Wilson 95% intervals.

    ``robust_accuracy`` counts an image as robust in a run when it is classified correctly
    after every attack (the per-image worst case over attacks, as AutoAttack reports its
    ensemble); ``robust_accuracy_by_attack`` gives each attack alone; ``*_all_runs`` is the
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

    def own_summary(name: str) -> dict:
        """The attack's own count beside the held-out verdict, and where they disagree."""
        own = sum(r.own[name][i] for r, i in images) / n
        held_out_robust = [(r.own[name][i], all(r.robust[name][run][i] for run in range(runs))) for r, i in images]
        return {"accuracy": own, "interval": interval_record(own, n),
                "broken_by_attack_but_robust_held_out": sum(not o and h for o, h in held_out_robust),
                "robust_by_attack_but_broken_held_out": sum(o and not h for o, h in held_out_robust)}

    clean = [sum(sum(r.clean[run]) for r in records) / n for run in range(runs)]
    worst = summary(attacks)
    return {
        "n_samples": n,
        "runs": runs,
        "subset": header.get("subset"),
        "attacks": attacks,
        "threat": {key: settings.get(key) for key in ("norm", "eps", "step_size", "iters", "eot", "loss", "losses",
                                                       "surrogate_steps", "options")},
        "clean_accuracy": _stats(clean, n),
        "robust_accuracy": {key: worst[key] for key in ("mean", "std", "per_run", "interval")},
        "robust_accuracy_by_attack": {a: {**summary([a]), "attack_own": own_summary(a)} for a in attacks},
        "verdicts": ((f"held out: the vote rule ({header['defense']['vote']}, {header['defense']['votes']} votes) on "
                      if not header["deterministic"] else "the bare classifier's argmax (deterministic) on ")
                     + f"{runs} run(s) whose seeds no attack used; attack_own: the attack's own verdict"),
        "robust_accuracy_worst_run": worst["worst_run"],
        "robust_accuracy_worst_run_interval": worst["worst_run_interval"],
        "robust_accuracy_all_runs": worst["all_runs"],
        "robust_accuracy_all_runs_interval": worst["all_runs_interval"],
        "intervals": INTERVAL_NOTE,
        "seconds": round(sum(r.seconds for r in records), 1),
        "seconds_by_attack": {a: round(sum(r.attack_seconds.get(a, 0.0) for r in records), 1)
                              for a in attacks},
        "settings": header,
        "versions": versions(),
    }
