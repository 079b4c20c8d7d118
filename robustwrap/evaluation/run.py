"""run_evaluation: attack and score every batch of a data set, record each as it finishes, report.

Each batch's outcome is appended to the results file as soon as it is known (a crash loses at
most the batch in flight) and a rerun with ``resume=True`` skips recorded batches. Under
torchrun, batch i goes to rank i mod world size; each rank writes its own file; rank 0 merges.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..outputs import dumps_strict, make_folders, remove_empty_folders, remove_ours, write_text_atomic
from ..defense import Defense
from .batch import check_inputs, evaluate_batch
from .config import EvalConfig
from .distributed import barrier, rank_and_world
from .report import Report, summarize
from .results import RESULTS_LAYOUT, ResultsFile, check_results_folder


def run_evaluation(
    wrapper: Defense,
    images: Tensor,
    labels: Tensor,
    cfg: EvalConfig,
    out: str | os.PathLike,
    *,
    num_classes: int,
    resume: bool = False,
    overwrite: bool = False,
    subset: dict | None = None,
    description: dict | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> Report | None:
    """Attack and score every batch, appending each to the results file; return the report.

    No global random state is read or changed: every draw comes from per-image generators
    seeded by ``cfg.seed`` and the image's data-set index (``subset["indices"]``; AutoAttack,
    which seeds the global RNG, runs in a fork).

    Args:
        images: (N, C, H, W) in [0, 1]; labels: (N,) in [0, num_classes).
        out: results folder (created); holds ``results*.jsonl`` and, at the end, ``report.json``.
        resume: continue an existing run (same settings, data and weights: the header records
            their fingerprints) instead of refusing to touch it. An empty results file starts
            over; a torn last line is dropped and its batch recomputed.
        overwrite: replace ``out`` when it holds only an earlier run's files (never a folder
            with other files; :func:`check_results_folder`). A run that fails before recording
            a batch leaves nothing behind.
        subset: which items of a data set ``images`` are (:func:`robustwrap.data.describe_subset`);
            default: all of them, as given.
        description: extra JSON-able facts for the header (model specs, data spec).
        on_batch: called with (batches done by this process, batches it has in all).
        stop_after: stop after this many new batches (for tests of resumption).

    Returns:
        The report on rank 0 once every batch is recorded; None on other ranks or when stopped early.
    """
    check_inputs(wrapper, images, labels, num_classes)
    out = Path(out)
    check_results_folder(out, resume=resume, overwrite=overwrite)
    if subset is None:
        from ..data import describe_subset  # noqa: PLC0415

        subset = describe_subset(labels, torch.arange(labels.shape[0]), seed=None, requested=0)
    elif subset.get("size", images.shape[0]) != images.shape[0]:
        raise ValueError(f"subset describes {subset.get('size')} items but {images.shape[0]} images were given")
    rank, world = rank_and_world()
    header = ResultsFile.make_header(wrapper, images, labels, cfg, subset, description)
    ids = subset.get("indices") or list(range(images.shape[0]))  # each image's identity: its data-set index
    if overwrite and rank == 0:
        remove_ours(out, layout=RESULTS_LAYOUT)
    if overwrite:
        barrier()  # every rank starts from the emptied folder
    created = make_folders(out)
    results = ResultsFile.of_rank(out, header, rank, world)
    if results.path.exists() and not resume:
        raise FileExistsError(f"{results.path} exists: pass resume=True (--resume) to continue it, or choose another folder")
    fresh = not results.path.exists()
    try:
        done = results.open()
        complete = _run_batches(wrapper, images, labels, cfg, results, done, ids, rank, world, on_batch, stop_after)
    except BaseException:
        if fresh and results.path.exists() and not results.holds_records():  # nothing recorded: leave nothing
            results.path.unlink()
            remove_empty_folders(created)
        raise
    if not complete:
        return None
    batches = math.ceil(images.shape[0] / cfg.batch_size)
    barrier()
    if rank != 0:
        return None
    records = ResultsFile.merged(out, header)
    missing = sorted(set(range(batches)) - set(records))
    if missing:
        raise RuntimeError(f"batches {missing[:10]} are missing from {out}: rerun with --resume")
    report = summarize([records[i] for i in range(batches)], header)
    write_text_atomic(out / "report.json", dumps_strict(report.to_json(), indent=2) + "\n")
    return report


def _run_batches(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, results: ResultsFile,
                 done: dict[int, dict], ids: Sequence[int], rank: int, world: int,
                 on_batch: Callable[[int, int], None] | None, stop_after: int | None) -> bool:
    """Evaluate this rank's batches not in ``done``, appending each record to ``results``.

    Returns:
        False when ``stop_after`` new batches were recorded before the end, else True.
    """
    batches = math.ceil(images.shape[0] / cfg.batch_size)
    mine = [i for i in range(batches) if i % world == rank]
    finished = sum(i in done for i in mine)
    new = 0
    with results.appender() as append:
        for index in mine:
            if index in done:
                continue
            if stop_after is not None and new >= stop_after:
                return False
            sl = slice(index * cfg.batch_size, (index + 1) * cfg.batch_size)
            append(evaluate_batch(wrapper, images[sl], labels[sl], cfg, index, ids=ids[sl]))
            new += 1
            finished += 1
            if on_batch is not None:
                on_batch(finished, len(mine))
    return True
