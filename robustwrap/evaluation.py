"""Robustness evaluation: attack in fixed batches, record each batch as it finishes, report.

Each batch's outcome is appended to a JSON-lines file as soon as it is known (a crash loses
at most the batch in flight) and a rerun with ``resume=True`` skips recorded batches. Batches
and their random seeds are fixed by the batch index alone, so the report is the same whether
the run was interrupted, resumed, or sharded over torch.distributed ranks (batch i goes to
rank i mod world size; each rank writes its own file; rank 0 merges).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor

from .attacks import BPDALogits, DefenseLogits, MaskAwareLogits, Undefended, autoattack, pgd_eot
from .wrapper import RobustWrapper

Attack = Literal["none", "pgd-eot", "bpda", "autoattack", "mask-aware"]
ATTACKS = ("none", "pgd-eot", "bpda", "autoattack", "mask-aware")
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}


@dataclass(frozen=True)
class EvalConfig:
    """How to attack and how to score (defaults: the paper's protocol)."""

    attack: Attack = "pgd-eot"            # what crafts the adversarial examples
    norm: Literal["Linf", "L2"] = "Linf"  # threat model
    eps: float | None = None              # radius; None = 8/255 (L-inf) or 0.5 (L2)
    iters: int = 200                      # attack iterations (AutoAttack: APGD iterations)
    step_size: float | None = None        # PGD step; None = 0.007 (L-inf) or eps / 4 (L2)
    eot: int = 20                         # gradient samples per iteration
    surrogate_steps: int | None = None    # attack through a wrapper with this many `steps`
    runs: int = 1                         # R repeated evaluations of the final examples
    seed: int = 0                         # every batch's randomness derives from it
    batch_size: int = 16                  # images per batch (the unit of resumption)
    defended: bool = True                 # False: attack and score the bare classifier
    mask_temperature: float = 0.05        # sigmoid temperature of the mask-aware attack

    def __post_init__(self) -> None:
        problems = []
        if self.attack not in ATTACKS:
            problems.append(f"attack must be one of {ATTACKS}, got {self.attack!r}")
        if self.norm not in DEFAULT_EPS:
            problems.append(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        if self.eps is not None and self.eps < 0:
            problems.append(f"eps must be >= 0, got {self.eps}")
        if self.iters < 0 or self.eot < 1 or self.runs < 1 or self.batch_size < 1:
            problems.append("need iters >= 0, eot >= 1, runs >= 1 and batch_size >= 1")
        if self.surrogate_steps is not None and self.surrogate_steps < 1:
            problems.append(f"surrogate_steps must be >= 1, got {self.surrogate_steps}")
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))

    @property
    def radius(self) -> float:
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps


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


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


def attack_images(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig) -> Tensor:
    """Adversarial images for one batch under ``cfg`` (the clean ones for attack 'none')."""
    if cfg.attack == "none" or cfg.iters == 0:
        return images
    attacked = wrapper
    if cfg.surrogate_steps is not None:
        attacked = wrapper.with_config(dataclasses.replace(wrapper.config, steps=cfg.surrogate_steps))
    if not cfg.defended:
        model = Undefended(attacked)
    elif cfg.attack == "bpda":
        model = BPDALogits(attacked)
    elif cfg.attack == "mask-aware":
        model = MaskAwareLogits(attacked, cfg.mask_temperature)
    else:
        model = DefenseLogits(attacked)
    if cfg.attack == "autoattack":
        version = "rand" if cfg.defended else "standard"
        return autoattack(model, images, labels, eps=cfg.radius, norm=cfg.norm, version=version,
                          iterations=cfg.iters, eot=cfg.eot, seed=cfg.seed, batch_size=images.shape[0])
    return pgd_eot(model, images, labels, eps=cfg.radius, norm=cfg.norm, steps=cfg.iters,
                   step_size=cfg.step_size, eot=cfg.eot if cfg.defended else 1)


def evaluate_batch(wrapper: RobustWrapper, images: Tensor, labels: Tensor, cfg: EvalConfig, index: int) -> dict:
    """Per-image correctness on clean and adversarial images, for each of the R runs."""
    start = time.perf_counter()
    torch.manual_seed(_seed(cfg.seed, index, 0))
    adversarial = attack_images(wrapper, images, labels, cfg)

    def correct(x: Tensor, run: int, tag: int) -> list[bool]:
        torch.manual_seed(_seed(cfg.seed, index, tag, run))
        with torch.no_grad():
            predicted = wrapper.predict(x) if cfg.defended else wrapper.classify(x).argmax(1)
        return (predicted == labels).tolist()

    return {
        "batch": index,
        "size": int(images.shape[0]),
        "clean": [correct(images, run, 1) for run in range(cfg.runs)],
        "robust": [correct(adversarial, run, 2) for run in range(cfg.runs)],
        "seconds": round(time.perf_counter() - start, 3),
    }


def versions() -> dict:
    import timm  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    return {"robustwrap": __version__, "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def _results_file(out: Path, rank: int, world: int) -> Path:
    return out / ("results.jsonl" if world == 1 else f"results.rank{rank}-of-{world}.jsonl")


def read_records(path: Path, header: dict) -> dict[int, dict]:
    """Batches recorded in ``path`` (by index); the file must start with the same header.

    Raises:
        ValueError: a line is not JSON, or the file was written with other settings.
    """
    records: dict[int, dict] = {}
    with path.open() as file:
        for number, line in enumerate(file, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path} line {number} is not valid JSON ({error.msg}): the file is corrupted; "
                    "move it away to start over, or delete that line to resume"
                ) from error
            if number == 1:
                if entry.get("header") != header:
                    raise ValueError(f"{path} was written with other settings; use another --out or remove it")
                continue
            records[entry["batch"]] = entry
    return records


def run_evaluation(
    wrapper: RobustWrapper,
    images: Tensor,
    labels: Tensor,
    cfg: EvalConfig,
    out: str | os.PathLike,
    *,
    num_classes: int,
    resume: bool = False,
    description: dict | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> dict | None:
    """Attack and score every batch, appending each to the results file; return the report.

    Args:
        images: (N, C, H, W) in [0, 1]; labels: (N,) in [0, num_classes).
        out: results folder (created); holds ``results*.jsonl`` and, at the end, ``report.json``.
        resume: continue an existing run (same settings) instead of refusing to touch it.
        description: extra JSON-able facts for the header (model specs, data spec).
        on_batch: called with (batches done by this process, batches it has in all).
        stop_after: stop after this many new batches (for tests of resumption).

    Returns:
        The report on rank 0 once every batch is recorded; None on other ranks or when stopped early.
    """
    check_inputs(wrapper, images, labels, num_classes)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "eval": dataclasses.asdict(cfg),
        "defense": dataclasses.asdict(wrapper.config),
        "n_samples": int(images.shape[0]),
        **(description or {}),
    }
    path = _results_file(out, rank, world)
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass resume=True (--resume) to continue it, or choose another folder")
    done = read_records(path, header) if path.exists() else {}
    if not path.exists():
        path.write_text(json.dumps({"header": header, "versions": versions()}) + "\n")

    batches = math.ceil(images.shape[0] / cfg.batch_size)
    mine = [i for i in range(batches) if i % world == rank]
    finished = sum(i in done for i in mine)
    new = 0
    with path.open("a") as file:
        for index in mine:
            if index in done:
                continue
            if stop_after is not None and new >= stop_after:
                return None
            sl = slice(index * cfg.batch_size, (index + 1) * cfg.batch_size)
            record = evaluate_batch(wrapper, images[sl], labels[sl], cfg, index)
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
            new += 1
            finished += 1
            if on_batch is not None:
                on_batch(finished, len(mine))
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        return None
    records: dict[int, dict] = {}
    for results in sorted(out.glob("results*.jsonl")):
        records.update(read_records(results, header))
    missing = sorted(set(range(batches)) - set(records))
    if missing:
        raise RuntimeError(f"batches {missing[:10]} are missing from {out}: rerun with --resume")
    report = summarize([records[i] for i in range(batches)], header)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summarize(records: list[dict], header: dict) -> dict:
    """Accuracy over all images: per run, mean ± std over runs, worst case, standard error."""
    runs = len(records[0]["clean"])
    n = sum(r["size"] for r in records)

    def per_run(key: str) -> list[float]:
        return [sum(sum(r[key][run]) for r in records) / n for run in range(runs)]

    def stats(values: list[float]) -> dict:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return {"mean": mean, "std": std, "per_run": values, "stderr": math.sqrt(mean * (1 - mean) / n)}

    every_run = sum(sum(all(r["robust"][run][i] for run in range(runs)) for i in range(r["size"])) for r in records) / n
    return {
        "n_samples": n,
        "runs": runs,
        "clean_accuracy": stats(per_run("clean")),
        "robust_accuracy": stats(per_run("robust")),
        "robust_accuracy_worst_run": min(per_run("robust")),
        "robust_accuracy_all_runs": every_run,
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "settings": header,
        "versions": versions(),
    }
