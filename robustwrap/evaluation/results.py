"""The results file: a header line, then one JSON record per batch, appended as each finishes.

The header holds the evaluation settings, the defense, the data subset, fingerprints of the
images, labels and weights (:mod:`robustwrap.fingerprint`) and the randomness rule; a resumed
run must match it, and a mismatch names what changed. Each rank of a torchrun job writes its
own file; rank 0 merges them (:meth:`ResultsFile.merged`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..fingerprint import header_differences, run_fingerprint
from ..outputs import Layout, check_resumable_output, dumps_strict
from ..defense import Defense
from .config import EvalConfig
from .record import BatchRecord

RANDOMNESS = "per-image: mix_seed(seed, data-set index)"  # recorded in the header; older files are not resumed
logger = logging.getLogger(__name__)


def _results_file(entry: Path) -> bool:
    """A results file (``results*.jsonl``), empty or starting with its header."""
    if not (entry.name.startswith("results") and entry.suffix == ".jsonl" and entry.is_file()):
        return False
    try:
        with entry.open("rb") as file:
            start = file.read(10)
    except OSError:
        return False
    return not start or start == b'{"header":'


def _results_owns(folder: Path, entry: Path) -> bool:
    """Results files and ``report.json`` (or the temporary file a crash left while writing it)."""
    report = entry.name == "report.json" or entry.name.startswith(".report.json.") and entry.suffix == ".tmp"
    return entry.is_file() and (report or _results_file(entry))


RESULTS_LAYOUT = Layout("results folder", marker=lambda folder: any(_results_file(e) for e in folder.iterdir()),
                        owns=_results_owns)


def is_evaluation_folder(path: Path) -> bool:
    """Whether ``path`` holds only what :func:`run_evaluation` writes: results files (each empty or
    starting with a header) and ``report.json``; what ``overwrite=True`` may replace."""
    return RESULTS_LAYOUT.holds(path)


def check_results_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a results folder this run may not write (robustwrap.outputs' rule).

    Raises:
        FileExistsError: ``out`` holds results and neither ``resume`` nor ``overwrite`` is set.
        ValueError: both are set; or ``out`` is a file, a folder with other files, the working
            directory or one of its parents.
    """
    check_resumable_output(out, resume=resume, overwrite=overwrite, layout=RESULTS_LAYOUT)


def versions() -> dict:
    """The versions of robustwrap, torch, timm and Python (recorded with every results file and report)."""
    import timm  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415

    return {"robustwrap": __version__, "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def read_records(path: Path, header: dict) -> tuple[dict[int, BatchRecord], int, bool]:
    """Batches recorded in ``path`` (by index), validated against ``header``.

    Blank lines are ignored. A last line that is not valid JSON is what a crash in the middle
    of a write leaves: it is dropped (its batch is recomputed) and a warning is logged.

    Returns:
        (records by batch index, the number of bytes of the file that are kept, whether the
        file starts with a header). An empty file has no header and no records.

    Raises:
        ValueError: a line other than the last is not JSON, a record is malformed, or the file
            was written with other settings; the message names the file and the line.
    """
    records: dict[int, BatchRecord] = {}
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    offset, has_header = 0, False
    advice = "the file is corrupted: move it away to start over, or delete that line to resume"
    for position, raw in enumerate(lines):
        number = position + 1
        line_start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if position == last:
                logger.warning("%s line %d is incomplete (an interrupted write); dropping it, its batch is recomputed",
                               path, number)
                return records, line_start, has_header
            message = getattr(error, "msg", str(error))
            raise ValueError(f"{path} line {number} is not valid JSON ({message}): {advice}") from error
        if not has_header:
            if not isinstance(entry, dict) or "header" not in entry:
                raise ValueError(f"{path} line {number} should be the header of a results file: {advice}")
            if entry["header"] != header:
                changes = header_differences(entry["header"], header)
                raise ValueError(f"{path} was written with other settings ({', '.join(changes[:4])}): "
                                 "use another --out, or --overwrite to replace it")
            has_header = True
        else:
            try:
                record = BatchRecord.from_json(entry, header)
            except ValueError as problem:
                raise ValueError(f"{path} line {number} {problem}: {advice}") from None
            records[record.batch] = record
    return records, len(data), has_header


class ResultsFile:
    """One process's results file (``results.jsonl``, or ``results.rank{r}-of-{w}.jsonl`` under torchrun).

    Args:
        path: the file.
        header: what the file must start with (:meth:`make_header`); every record is checked
            against it when read.
    """

    def __init__(self, path: str | os.PathLike, header: dict) -> None:
        self.path = Path(path)
        self.header = header

    @classmethod
    def of_rank(cls, out: str | os.PathLike, header: dict, rank: int = 0, world: int = 1) -> ResultsFile:
        """The results file of ``rank`` (of ``world`` processes) in the folder ``out``."""
        name = "results.jsonl" if world == 1 else f"results.rank{rank}-of-{world}.jsonl"
        return cls(Path(out) / name, header)

    @staticmethod
    def make_header(wrapper: Defense, images: Tensor, labels: Tensor, cfg: EvalConfig, subset: dict,
                    description: dict | None = None) -> dict:
        """The header of a run: settings, defense, subset, extra facts, fingerprints and randomness rule,
        as it reads back from the file (tuples become lists)."""
        header = {
            "eval": cfg.resolved(),
            "defense": None if wrapper.config is None else dataclasses.asdict(wrapper.config),  # None: the bare classifier
            "deterministic": bool(wrapper.deterministic),
            "n_samples": int(images.shape[0]),
            "subset": subset,
            **(description or {}),
            "fingerprint": run_fingerprint(images, labels, wrapper.classifier, wrapper.eps_model),
        }
        header["randomness"] = RANDOMNESS
        return json.loads(dumps_strict(header))

    def read(self) -> tuple[dict[int, BatchRecord], int, bool]:
        """:func:`read_records` of this file against its header."""
        return read_records(self.path, self.header)

    def open(self) -> dict[int, BatchRecord]:
        """The records already in the file, after dropping a torn last line; writes the header if missing.

        Raises:
            ValueError: the file was written with other settings, data or weights, or is corrupted.
        """
        done, kept, has_header = self.read() if self.path.exists() else ({}, 0, False)
        if not has_header:  # a new file, an empty one, or one whose only line (the header) is torn
            self.path.write_text(dumps_strict({"header": self.header, "versions": versions()}) + "\n")
            return {}
        if kept < self.path.stat().st_size:
            with self.path.open("r+b") as file:
                file.truncate(kept)
        with self.path.open("rb") as file:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                with self.path.open("ab") as append:
                    append.write(b"\n")
        return done

    @contextmanager
    def appender(self) -> Iterator[Callable[[BatchRecord], None]]:
        """A function that appends one batch record and syncs it to disk (a crash loses at most the batch in flight)."""
        with self.path.open("a") as file:
            def append(record: BatchRecord) -> None:
                file.write(dumps_strict(record.to_json()) + "\n")
                file.flush()
                os.fsync(file.fileno())

            yield append

    def holds_records(self) -> bool:
        """Whether the file holds more than its header."""
        return self.path.exists() and len(self.path.read_bytes().splitlines()) > 1

    @staticmethod
    def merged(out: str | os.PathLike, header: dict) -> dict[int, BatchRecord]:
        """Every rank's records in the folder ``out``, by batch index, each file checked against ``header``."""
        records: dict[int, BatchRecord] = {}
        for path in sorted(Path(out).glob("results*.jsonl")):
            records.update(read_records(path, header)[0])
        return records
