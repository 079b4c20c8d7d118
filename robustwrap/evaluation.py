"""Robustness evaluation: attack in fixed batches, record each batch as it finishes, report.

Each batch's outcome is appended to a JSON-lines file as soon as it is known (a crash loses
at most the batch in flight) and a rerun with ``resume=True`` skips recorded batches. Every
random draw for an image (its purifications, its attacks, its verdicts) comes from per-image
generators seeded from (seed, the image's index in the data set), as EDM's sampler does, so
an image's result is the same whatever the batch size, and whether the run was interrupted,
resumed, or sharded over torch.distributed ranks (batch i goes to rank i mod world size; each
rank writes its own file; rank 0 merges).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor

from .attacks.pgd import LOSSES, default_step_size
from .attacks.registry import ATTACKS as REGISTRY
from .attacks.registry import AttackOutcome, attack_names, surrogate
from .fingerprint import header_differences, run_fingerprint
from .inputs import check_images
from .noise import check_seeds, derive_seeds, mix_seed
from .statistics import INTERVAL_NOTE, interval_record
from .outputs import check_resumable_output, dumps_strict, make_folders, remove_empty_folders, remove_ours, write_text_atomic
from .wrapper import RobustWrapper

ATTACKS = attack_names()  # every registered attack (robustwrap.attacks.registry), in order
STEPPED = tuple(name for name, spec in REGISTRY.items() if spec.stepped)  # those that take a step size and a loss
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}
RANDOMNESS = "per-image: mix_seed(seed, data-set index)"  # recorded in the header; older files are not resumed
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How to attack and how to score (defaults: the paper's protocol, with a budget-aware step)."""

    attack: str = "pgd-eot"               # one of ATTACKS, or a comma list ("pgd-eot,bpda"): each is run
    norm: Literal["Linf", "L2"] = "Linf"  # threat model
    eps: float | None = None              # radius; None = 8/255 (L-inf) or 0.5 (L2)
    iters: int = 200                      # attack iterations (AutoAttack: APGD iterations)
    step_size: float | None = None        # PGD step; None = 2.5 * eps / iters (both norms; Madry et al.)
    eot: int = 20                         # gradient samples per iteration
    loss: Literal["ce", "margin", "dlr"] | None = None  # PGD loss (CE, CW margin, DLR); None: each attack's default
    surrogate_steps: int | None = None    # attack through a wrapper with this many `steps`
    runs: int = 1                         # R repeated evaluations of the final examples
    seed: int = 0                         # every batch's randomness derives from it
    batch_size: int = 16                  # images per batch (the unit of resumption)
    defended: bool = True                 # False: attack and score the bare classifier
    mask_temperature: float = 0.05        # sigmoid temperature of the mask-aware attack
    em_samples: int = 10                  # diffhammer: N purifications per step (the reference's n_eval)
    em_steps: int = 5                     # diffhammer: EM rounds per step (r updated each round)
    em_reference: bool = False            # diffhammer: the reference's EM (r never updated: one weighting)
    dev_weight: float = 0.0               # W of DiffAttack's deviation term added to the loss (pgd-eot, pgd-vote)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.attack, (list, tuple)):
            object.__setattr__(self, "attack", ",".join(self.attack))
        if not isinstance(self.attack, str):
            problems.append(f"attack must be a string, got {self.attack!r}")
        else:
            names = [a.strip() for a in self.attack.split(",")]
            unknown = [a for a in names if a not in ATTACKS]
            if unknown or not names:
                problems.append(f"attack must be one of {ATTACKS} or a comma list of them, got {self.attack!r}")
            elif len(set(names)) != len(names):
                problems.append(f"attack lists an attack twice: {self.attack!r}")
            else:
                object.__setattr__(self, "attack", ",".join(names))
        if self.norm not in DEFAULT_EPS:
            problems.append(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        if self.loss is not None and self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES} (or None for each attack's default), got {self.loss!r}")
        for name in ("eps", "step_size", "mask_temperature"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
            elif name == "eps" and value < 0:
                problems.append(f"eps must be >= 0, got {value}")
            elif name != "eps" and value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
        for name in ("iters", "eot", "runs", "seed", "batch_size", "surrogate_steps", "em_samples", "em_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{name} must be an int, got {value!r}")
        if not problems:
            if self.iters < 0 or self.eot < 1 or self.runs < 1 or self.batch_size < 1:
                problems.append("need iters >= 0, eot >= 1, runs >= 1 and batch_size >= 1")
            if self.surrogate_steps is not None and self.surrogate_steps < 1:
                problems.append(f"surrogate_steps must be >= 1, got {self.surrogate_steps}")
            if self.em_samples < 1 or self.em_steps < 1:
                problems.append(f"need em_samples >= 1 and em_steps >= 1, got {self.em_samples} and {self.em_steps}")
        if isinstance(self.dev_weight, bool) or not isinstance(self.dev_weight, (int, float)) \
                or not math.isfinite(self.dev_weight) or self.dev_weight < 0:
            problems.append(f"dev_weight must be a finite number >= 0, got {self.dev_weight!r}")
        elif self.dev_weight > 0 and isinstance(self.attack, str):
            others = [a for a in self.attack.split(",") if a in REGISTRY and a != "none" and not REGISTRY[a].deviation]
            if others:
                takes = [n for n, spec in REGISTRY.items() if spec.deviation]
                problems.append(f"dev_weight works with {takes}, not with {others}")
        if not isinstance(self.em_reference, bool):
            problems.append(f"em_reference must be true or false, got {self.em_reference!r}")
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))

    @property
    def attacks(self) -> tuple[str, ...]:
        """The attacks to run, in order."""
        return tuple(self.attack.split(","))

    @property
    def radius(self) -> float:
        """The eps actually used."""
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps

    @property
    def step(self) -> float | None:
        """The PGD step actually used (None when no attack takes a step, or iters is 0)."""
        if self.iters == 0 or not any(a in STEPPED for a in self.attacks):
            return None
        return self.step_size if self.step_size is not None else default_step_size(self.radius, self.iters)

    def loss_for(self, attack: str) -> str | None:
        """The loss ``attack`` ascends: ``loss`` when given, else the attack's default (pgd-vote: margin, PGD: ce)."""
        return self.loss if self.loss is not None and REGISTRY[attack].stepped else REGISTRY[attack].default_loss

    def describe_losses(self) -> str:
        """'ce', or per attack ('pgd-eot ce, pgd-vote margin') when the stepped attacks differ; '-' when none steps."""
        losses = {a: self.loss_for(a) for a in self.attacks if REGISTRY[a].stepped}
        if len(set(losses.values())) <= 1:
            return next(iter(losses.values()), "-")
        return ", ".join(f"{a} {loss}" for a, loss in losses.items())

    def resolved(self) -> dict:
        """The settings as a JSON-able dict, with the eps, step and losses actually used filled in."""
        return {**dataclasses.asdict(self), "eps": self.radius, "step_size": self.step,
                "losses": {a: self.loss_for(a) for a in self.attacks if REGISTRY[a].stepped}}


def check_inputs(wrapper: RobustWrapper, images: Tensor, labels: Tensor, num_classes: int) -> None:
    """Data/model mismatches, raised before any attack runs."""
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need images (N, C, H, W) and labels (N,) with N >= 1, got {tuple(images.shape)} and {tuple(labels.shape)}")
    if wrapper.channels is not None and images.shape[1] != wrapper.channels:
        raise ValueError(f"the data has {images.shape[1]} channels but the model takes {wrapper.channels}")
    if wrapper.image_size is not None and tuple(images.shape[-2:]) != tuple(wrapper.image_size):
        raise ValueError(f"the data is {tuple(images.shape[-2:])} but the model takes {tuple(wrapper.image_size)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    try:
        check_images(images, wrapper.channels, wrapper.image_size)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the data: {error}") from error


def is_evaluation_folder(path: Path) -> bool:
    """Whether ``path`` holds only what :func:`run_evaluation` writes: results files (each empty or
    starting with a header) and ``report.json``; what ``overwrite=True`` may replace."""
    entries = list(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
    results = [e for e in entries if e.name.startswith("results") and e.suffix == ".jsonl" and e.is_file()]
    report = [e for e in entries if e.is_file() and (e.name == "report.json" or  # or one a crash left mid-write
                                                     e.name.startswith(".report.json.") and e.suffix == ".tmp")]
    if not results or any(e not in results and e not in report for e in entries):
        return False
    for result in results:
        with result.open("rb") as file:
            start = file.read(10)
        if start and start != b'{"header":':
            return False
    return True


def check_results_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a results folder this run may not write (robustwrap.outputs' rule).

    Raises:
        FileExistsError: ``out`` holds results and neither ``resume`` nor ``overwrite`` is set.
        ValueError: both are set; or ``out`` is a file, a folder with other files, the working
            directory or one of its parents.
    """
    check_resumable_output(out, resume=resume, overwrite=overwrite, ours=is_evaluation_folder, what="results folder")


def image_seeds(seed: int, ids: Sequence[int]) -> Tensor:
    """(B,) int64 base seeds ``mix_seed(seed, id)`` of the images with data-set indices ``ids``.

    Everything random about an image in an evaluation (its purifications, its attacks, its
    verdicts) is derived from this seed alone, so its record does not depend on the batch,
    the shard, ``--resume`` or the other images.
    """
    return torch.tensor([mix_seed(seed, int(i)) for i in ids], dtype=torch.int64)


def attack_batch(
    wrapper: RobustWrapper,
    images: Tensor,
    labels: Tensor,
    cfg: EvalConfig,
    *,
    attack: str | None = None,
    seeds: Tensor | Sequence[int] | None = None,
) -> AttackOutcome:
    """Run one registered attack (:mod:`robustwrap.attacks.registry`) on one batch under ``cfg``.

    Args:
        wrapper: the defense as deployed (the bare classifier is scored when not ``cfg.defended``);
            with ``cfg.surrogate_steps`` the gradient is taken through a cheaper view of it.
        images: (B, C, H, W) in [0, 1]; labels: (B,) int64.
        attack: which registered attack (default: ``cfg.attacks[0]``).
        seeds: (B,) per-image seeds: image i's random start, its defense noise at every
            gradient call and vote check (and AutoAttack's own randomness, run image by image)
            come from ``seeds[i]`` alone. Default: ``mix_seed(cfg.seed, i)`` for positions i.

    Returns:
        The adversarial images and the attack's own per-image verdict.
    """
    attack = cfg.attacks[0] if attack is None else attack
    if attack not in REGISTRY:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    seeds = image_seeds(cfg.seed, range(images.shape[0])) if seeds is None else check_seeds(seeds, images.shape[0])
    attacked = surrogate(wrapper, cfg.surrogate_steps)
    return REGISTRY[attack].run(wrapper, attacked, images, labels, cfg, seeds)


def attack_images(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig, *,
                  attack: str | None = None, seeds: Tensor | Sequence[int] | None = None) -> Tensor:
    """(B, C, H, W) adversarial images of :func:`attack_batch` (the clean ones for attack 'none')."""
    return attack_batch(wrapper, images, labels, cfg, attack=attack, seeds=seeds).adversarial


def evaluate_batch(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig, index: int,
                   ids: Sequence[int] | None = None) -> dict:
    """Per-image correctness on clean images and under each attack, for each of the R runs.

    Args:
        images: (B, C, H, W) in [0, 1]; labels: (B,).
        index: the batch's index (recorded).
        ids: the images' indices in the data set (default: ``index * cfg.batch_size + i``).

    Every random draw of image i comes from its seed ``mix_seed(cfg.seed, ids[i])``
    (:func:`image_seeds`): clean run r from ``(seed, 1, r)``, attack a from ``(seed, 0, a)``,
    run r of the verdict after attack a from ``(seed, 2, r, a)``. The record does not depend
    on the batch size, the process, other batches, or the global RNG (which is left alone).

    Verdicts are held out: ``robust[a][r][i]`` is the configured vote rule (S votes) on run r,
    whose seeds the attack never used; ``own[a][i]`` keeps the attack's own verdict beside it
    (an image a stochastic attack "broke" by luck, or stopped attacking after one lucky
    success, is re-decided by the held-out runs).
    """
    start = time.perf_counter()
    if ids is None:
        ids = range(index * cfg.batch_size, index * cfg.batch_size + images.shape[0])
    base = image_seeds(cfg.seed, ids)

    def correct(x: Tensor, *parts: int) -> list[bool]:
        with torch.no_grad():
            if cfg.defended:
                predicted = wrapper.predict(x, seeds=derive_seeds(base, *parts))
            else:
                predicted = wrapper.classify(x).argmax(1)
        return (predicted == labels).tolist()

    robust, own, seconds = {}, {}, {}
    for number, attack in enumerate(cfg.attacks):
        began = time.perf_counter()
        outcome = attack_batch(wrapper, images, labels, cfg, attack=attack, seeds=derive_seeds(base, 0, number))
        seconds[attack] = round(time.perf_counter() - began, 3)
        robust[attack] = [correct(outcome.adversarial, 2, run, number) for run in range(cfg.runs)]
        own[attack] = [bool(v) for v in outcome.own_correct.tolist()]
    return {
        "batch": index,
        "size": int(images.shape[0]),
        "clean": [correct(images, 1, run) for run in range(cfg.runs)],
        "robust": robust,
        "own": own,
        "attack_seconds": seconds,
        "seconds": round(time.perf_counter() - start, 3),
    }


def versions() -> dict:
    import timm  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    return {"robustwrap": __version__, "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def _results_file(out: Path, rank: int, world: int) -> Path:
    return out / ("results.jsonl" if world == 1 else f"results.rank{rank}-of-{world}.jsonl")


def _record_problem(entry: object, header: dict) -> str | None:
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
    return None


def read_records(path: Path, header: dict) -> tuple[dict[int, dict], int, bool]:
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
    records: dict[int, dict] = {}
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
            problem = _record_problem(entry, header)
            if problem:
                raise ValueError(f"{path} line {number} {problem}: {advice}")
            records[entry["batch"]] = entry
    return records, len(data), has_header


def _prepare_results_file(path: Path, header: dict) -> dict[int, dict]:
    """Records already in ``path``, after dropping a torn last line; writes the header if missing."""
    done, kept, has_header = read_records(path, header) if path.exists() else ({}, 0, False)
    if not has_header:  # a new file, an empty one, or one whose only line (the header) is torn
        path.write_text(dumps_strict({"header": header, "versions": versions()}) + "\n")
        return {}
    if kept < path.stat().st_size:
        with path.open("r+b") as file:
            file.truncate(kept)
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        if file.read(1) != b"\n":
            with path.open("ab") as append:
                append.write(b"\n")
    return done


@contextmanager
def process_group_from_env() -> Iterator[int]:
    """Join torchrun's process group for the duration, when ``WORLD_SIZE`` > 1; yields this rank.

    Under ``torchrun --nproc_per_node=K`` every process runs the same command; :func:`run_evaluation`
    then shards batches over the K ranks. NCCL on a GPU, gloo on CPUs. A process group that is
    already initialised is used as it is and left open; one started here is destroyed on exit.
    Without torchrun (``WORLD_SIZE`` unset or 1) this yields rank 0 and does nothing.
    """
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        yield torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_evaluation(
    wrapper: RobustWrapper,
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
) -> dict | None:
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
        from .data import describe_subset  # noqa: PLC0415

        subset = describe_subset(labels, torch.arange(labels.shape[0]), seed=None, requested=0)
    elif subset.get("size", images.shape[0]) != images.shape[0]:
        raise ValueError(f"subset describes {subset.get('size')} items but {images.shape[0]} images were given")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    header = {
        "eval": cfg.resolved(),
        "defense": dataclasses.asdict(wrapper.config),
        "n_samples": int(images.shape[0]),
        "subset": subset,
        **(description or {}),
        "fingerprint": run_fingerprint(images, labels, wrapper.classifier, wrapper.eps_model),
    }
    header["randomness"] = RANDOMNESS
    header = json.loads(dumps_strict(header))  # as it reads back from the file (tuples become lists)
    ids = subset.get("indices") or list(range(images.shape[0]))  # each image's identity: its data-set index
    if overwrite and rank == 0:
        remove_ours(out, ours=is_evaluation_folder, what="results folder")
    if overwrite and distributed:
        torch.distributed.barrier()  # every rank starts from the emptied folder
    created = make_folders(out)
    path = _results_file(out, rank, world)
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass resume=True (--resume) to continue it, or choose another folder")
    fresh = not path.exists()
    try:
        done = _prepare_results_file(path, header)
        complete = _run_batches(wrapper, images, labels, cfg, path, done, ids, rank, world, on_batch, stop_after)
    except BaseException:
        if fresh and path.exists() and len(path.read_bytes().splitlines()) <= 1:  # nothing recorded: leave nothing
            path.unlink()
            remove_empty_folders(created)
        raise
    if not complete:
        return None
    batches = math.ceil(images.shape[0] / cfg.batch_size)
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        return None
    records: dict[int, dict] = {}
    for results in sorted(out.glob("results*.jsonl")):
        records.update(read_records(results, header)[0])
    missing = sorted(set(range(batches)) - set(records))
    if missing:
        raise RuntimeError(f"batches {missing[:10]} are missing from {out}: rerun with --resume")
    report = summarize([records[i] for i in range(batches)], header)
    write_text_atomic(out / "report.json", dumps_strict(report, indent=2) + "\n")
    return report


def _run_batches(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig, path: Path,
                 done: dict[int, dict], ids: Sequence[int], rank: int, world: int,
                 on_batch: Callable[[int, int], None] | None, stop_after: int | None) -> bool:
    """Evaluate this rank's batches not in ``done``, appending each record to ``path``.

    Returns:
        False when ``stop_after`` new batches were recorded before the end, else True.
    """
    batches = math.ceil(images.shape[0] / cfg.batch_size)
    mine = [i for i in range(batches) if i % world == rank]
    finished = sum(i in done for i in mine)
    new = 0
    with path.open("a") as file:
        for index in mine:
            if index in done:
                continue
            if stop_after is not None and new >= stop_after:
                return False
            sl = slice(index * cfg.batch_size, (index + 1) * cfg.batch_size)
            record = evaluate_batch(wrapper, images[sl], labels[sl], cfg, index, ids=ids[sl])
            file.write(dumps_strict(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
            new += 1
            finished += 1
            if on_batch is not None:
                on_batch(finished, len(mine))
    return True


def _stats(values: list[float], n: int) -> dict:
    """Mean, std over runs, per-run values, and the Wilson 95% interval of the mean over n images."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "per_run": values, "interval": interval_record(mean, n)}


def summarize(records: list[dict], header: dict) -> dict:
    """Accuracy over all images: per run, mean and std over runs, worst case, Wilson 95% intervals.

    ``robust_accuracy`` counts an image as robust in a run when it is classified correctly
    after every attack (the per-image worst case over attacks, as AutoAttack reports its
    ensemble); ``robust_accuracy_by_attack`` gives each attack alone; ``*_all_runs`` is the
    fraction of images robust in all R runs (the risk of resubmitting an example).
    """
    settings = header["eval"]
    runs, attacks = settings["runs"], settings["attack"].split(",")
    n = sum(r["size"] for r in records)
    images = [(r, i) for r in records for i in range(r["size"])]

    def survived(record: dict, names: list[str], run: int, i: int) -> bool:
        return all(record["robust"][a][run][i] for a in names)

    def summary(names: list[str]) -> dict:
        per_run = [sum(survived(r, names, run, i) for r in records for i in range(r["size"])) / n for run in range(runs)]
        every_run = sum(all(survived(r, names, run, i) for run in range(runs)) for r in records for i in range(r["size"])) / n
        return {**_stats(per_run, n), "worst_run": min(per_run), "worst_run_interval": interval_record(min(per_run), n),
                "all_runs": every_run, "all_runs_interval": interval_record(every_run, n)}

    def own_summary(name: str) -> dict:
        """The attack's own count beside the held-out verdict, and where they disagree."""
        own = sum(r["own"][name][i] for r, i in images) / n
        held_out_robust = [(r["own"][name][i], all(r["robust"][name][run][i] for run in range(runs))) for r, i in images]
        return {"accuracy": own, "interval": interval_record(own, n),
                "broken_by_attack_but_robust_held_out": sum(not o and h for o, h in held_out_robust),
                "robust_by_attack_but_broken_held_out": sum(o and not h for o, h in held_out_robust)}

    clean = [sum(sum(r["clean"][run]) for r in records) / n for run in range(runs)]
    worst = summary(attacks)
    return {
        "n_samples": n,
        "runs": runs,
        "subset": header.get("subset"),
        "attacks": attacks,
        "threat": {key: settings.get(key) for key in ("norm", "eps", "step_size", "iters", "eot", "loss", "losses",
                                                       "surrogate_steps", "em_samples", "em_steps",
                                                       "em_reference", "dev_weight")},
        "clean_accuracy": _stats(clean, n),
        "robust_accuracy": {key: worst[key] for key in ("mean", "std", "per_run", "interval")},
        "robust_accuracy_by_attack": {a: {**summary([a]), "attack_own": own_summary(a)} for a in attacks},
        "verdicts": ((f"held out: the vote rule ({header['defense']['vote']}, {header['defense']['votes']} votes) on "
                      if settings["defended"] else "the bare classifier's argmax (deterministic) on ")
                     + f"{runs} run(s) whose seeds no attack used; attack_own: the attack's own verdict"),
        "robust_accuracy_worst_run": worst["worst_run"],
        "robust_accuracy_worst_run_interval": worst["worst_run_interval"],
        "robust_accuracy_all_runs": worst["all_runs"],
        "robust_accuracy_all_runs_interval": worst["all_runs_interval"],
        "intervals": INTERVAL_NOTE,
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "seconds_by_attack": {a: round(sum(r.get("attack_seconds", {}).get(a, 0.0) for r in records), 1)
                              for a in attacks},
        "settings": header,
        "versions": versions(),
    }
