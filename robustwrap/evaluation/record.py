"""One batch's outcome (:class:`BatchRecord`): what the results file holds per line, typed, and checked when read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class BatchRecord:
    """Per-image correctness of one batch, for each of the R runs.

    Attributes:
        batch: the batch's index in the run, in [0, ceil(N / batch_size)).
        size: B, the images in it.
        clean: (R, B) whether run r classifies clean image i correctly.
        robust: attack -> (R, B): whether the held-out run r classifies image i correctly after the attack.
        own: attack -> (B,): the attack's own verdict that image i still stands.
        attack_seconds: attack -> seconds it took on this batch.
        seconds: the whole batch's seconds.
    """

    batch: int
    size: int
    clean: list[list[bool]]
    robust: dict[str, list[list[bool]]]
    own: dict[str, list[bool]]
    attack_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def survived(self, attacks: list[str] | tuple[str, ...], run: int, image: int) -> bool:
        """Whether image ``image`` is classified correctly in run ``run`` after every one of ``attacks``."""
        return all(self.robust[a][run][image] for a in attacks)

    def to_json(self) -> dict:
        """The record as the results file writes it (one JSON object)."""
        return asdict(self)

    @classmethod
    def from_json(cls, entry: object, header: dict) -> BatchRecord:
        """A record read back from a results file whose header is ``header``.

        Raises:
            ValueError: what is wrong with it (:func:`record_problem`).
        """
        problem = record_problem(entry, header)
        if problem:
            raise ValueError(problem)
        return cls(**{k: entry[k] for k in ("batch", "size", "clean", "robust", "own")},
                   attack_seconds=dict(entry.get("attack_seconds", {})), seconds=entry.get("seconds", 0.0))


def record_problem(entry: object, header: dict) -> str | None:
    """What is wrong with one results line for this header (None: a valid batch record)."""
    settings = header["eval"]
    runs, size_of_batch, n = settings["runs"], settings["batch_size"], header["n_samples"]
    attacks = settings["attack"].split(",")
    if not isinstance(entry, dict) or not {"batch", "size", "clean", "robust", "own"} <= set(entry):
        return "is not a batch record (expected an object with batch, size, clean, robust and own)"
    batch, size = entry["batch"], entry["size"]
    batches = math.ceil(n / size_of_batch)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 0 <= batch < batches:
        return f"has batch {batch!r}, expected an index in [0, {batches})"
    expected = min(size_of_batch, n - batch * size_of_batch)
    if size != expected:
        return f"has size {size!r} for batch {batch}, expected {expected}"

    def table_problem(name: str, table: object) -> str | None:
        if not isinstance(table, list) or len(table) != runs:
            return f"{name} must hold {runs} run(s)"
        if any(not isinstance(row, list) or len(row) != size or not all(isinstance(v, bool) for v in row) for row in table):
            return f"{name} must hold {size} true/false values per run"
        return None

    robust = entry["robust"]
    if not isinstance(robust, dict) or sorted(robust) != sorted(attacks):
        return f"robust must map the attacks {attacks} to results"
    for name, table in (("clean", entry["clean"]), *((f"robust[{a}]", robust[a]) for a in attacks)):
        problem = table_problem(name, table)
        if problem:
            return problem
    own = entry["own"]
    if not isinstance(own, dict) or sorted(own) != sorted(attacks):
        return f"own must map the attacks {attacks} to the attack's own verdicts"
    if any(not isinstance(v, list) or len(v) != size or not all(isinstance(b, bool) for b in v) for v in own.values()):
        return f"own must hold {size} true/false values per attack"
    timing = entry.get("attack_seconds", {})
    if not isinstance(timing, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in timing.values()):
        return "attack_seconds must map attacks to seconds"
    seconds = entry.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return f"seconds must be a number, got {seconds!r}"
    return None
