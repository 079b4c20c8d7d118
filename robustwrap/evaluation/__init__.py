"""Robustness evaluation: attack in fixed batches, record each batch as it finishes, report.

Each batch's outcome is appended to a JSON-lines file as soon as it is known (a crash loses
at most the batch in flight) and a rerun with ``resume=True`` skips recorded batches. Every
random draw for an image (its purifications, its attacks, its verdicts) comes from per-image
generators seeded from (seed, the image's index in the data set), as EDM's sampler does, so
an image's result is the same whatever the batch size, and whether the run was interrupted,
resumed, or sharded over torch.distributed ranks (batch i goes to rank i mod world size; each
rank writes its own file; rank 0 merges).

One job per module:

- :mod:`.config`: :class:`EvalConfig` (the attack settings) and the defense choice
  (:data:`DEFENSES`: none / uniform / heterogeneous / config), read by the CLI, sanity and tune;
- :mod:`.batch`: one batch checked, attacked (by name, :mod:`robustwrap.attacks.registry`) and scored;
- :mod:`.record`: one batch's outcome, typed (:class:`BatchRecord`), and its check when read back;
- :mod:`.results`: the results file (:class:`ResultsFile`: header, fingerprints, records, resume checks);
- :mod:`.report`: the report, typed (:class:`Report`, from :func:`summarize`; ``report.json`` is its ``to_json()``);
- :mod:`.figure`: the reports as one figure (:func:`plot_accuracy`);
- :mod:`.distributed`: torchrun set-up (:func:`process_group_from_env`);
- :mod:`.run`: :func:`run_evaluation`, which ties them together;
- :mod:`.comparison`: several defenses in one folder, then their figure (:func:`compare`, what
  ``robustwrap eval`` runs).
"""

from .comparison import Comparison, compare
from .batch import attack_batch, attack_images, check_inputs, evaluate_batch, image_seeds
from .config import (ATTACKS, DEFAULT_EPS, DEFENSES, STEPPED, DefenseName, EvalConfig, choose_defenses,
                     defense_view)
from .distributed import process_group_from_env, rank_and_world
from .figure import plot_accuracy
from .report import Accuracy, AttackAccuracy, OwnVerdict, Report, RobustAccuracy, summarize
from .record import BatchRecord, record_problem
from .results import RANDOMNESS, ResultsFile, check_results_folder, is_evaluation_folder, read_records, versions
from .run import run_evaluation

__all__ = [
    "ATTACKS", "Accuracy", "AttackAccuracy", "BatchRecord", "Comparison", "OwnVerdict", "Report", "RobustAccuracy", "DEFAULT_EPS", "DEFENSES", "RANDOMNESS", "STEPPED", "DefenseName", "EvalConfig", "ResultsFile",
    "attack_batch", "attack_images", "check_inputs", "check_results_folder", "choose_defenses", "compare", "defense_view",
    "evaluate_batch", "image_seeds", "is_evaluation_folder", "plot_accuracy", "process_group_from_env", "rank_and_world",
    "read_records", "record_problem", "run_evaluation", "summarize", "versions",
]
