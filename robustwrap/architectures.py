"""Recognise a checkpoint's family from its tensors, check it strictly, and load it.

The families are the registry :data:`robustwrap.families.FAMILIES`: each entry names the keys
that identify it, the configurations it can build, its release variants and its adapter.
:func:`check_checkpoint` compares a file with each configuration on the meta device (no
memory, even for guided-diffusion's 553M parameters) and :func:`load_checkpoint` builds the
matching network on the CPU and loads it strictly. Diffusion networks come back ready for the
sampler (the family's :mod:`~robustwrap.adapters` adapter); classifiers take [0, 1] images
through the wrapper. Nothing here depends on which network class a family builds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoints import CheckpointError, compare_keys, load_strict, read_checkpoint, state_dict_of
from .families import FAMILIES, CheckpointFamily, Kind, State


@dataclass
class CheckReport:
    """What :func:`check_checkpoint` found. ``ok`` when a configuration matches exactly."""

    path: str
    architecture: str | None = None
    kind: Kind | None = None
    config: str | None = None
    tensors: int = 0
    parameters: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None and not (self.missing or self.unexpected or self.mismatched)


def identify(state: State) -> CheckpointFamily | None:
    """The first family whose signature keys are all in ``state``."""
    return next((f for f in FAMILIES if all(k in state for k in f.signature)), None)


# Prefixes some releases put before every key (RobustBench strips "model."; DiffPure's own
# classifiers sit in an nn.Sequential after a normalisation layer: "0." or "1.").
EXTRA_PREFIXES = ("model.", "0.", "1.")


def _unprefixed(state: State) -> tuple[State, list[str]]:
    """``state`` with an extra prefix removed when that makes it recognisable, and the keys
    without that prefix (e.g. a normalisation layer's ``0.mean``), which then cannot load."""
    if identify(state) is not None:
        return state, []
    for prefix in EXTRA_PREFIXES:
        kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if kept and identify(kept) is not None:
            return kept, [k for k in state if not k.startswith(prefix)]
    return state, []


def check_checkpoint(path: str | os.PathLike) -> CheckReport:
    """Read ``path`` safely, detect its architecture and compare every tensor name and shape.

    The file's tensors are read into memory; the candidate networks are built on the meta
    device (no weights allocated, even for guided-diffusion's 553M parameters).

    Raises:
        FileNotFoundError, CheckpointError: the file cannot be read (see :func:`read_checkpoint`).
    """
    return check_state(read_checkpoint(path), path)


def check_state(raw: dict, path: str | os.PathLike = "<state dict>") -> CheckReport:
    """:func:`check_checkpoint` on an already loaded checkpoint dict (only shapes are read, so
    meta tensors will do)."""
    return _inspect(raw, path)[0]


def _inspect(raw: dict, path: str | os.PathLike) -> tuple[CheckReport, State, CheckpointFamily | None]:
    """The report on ``raw``, the network's tensors it judged (unwrapped, prefixes removed) and
    their family (None when unrecognised)."""
    state, outside = _unprefixed(state_dict_of(raw, path))
    report = CheckReport(path=str(path), tensors=len(state) + len(outside))
    family = identify(state)
    if family is None:
        report.notes.append("unrecognised architecture; first keys: " + ", ".join(list(state)[:6]))
        return report, state, None
    report.architecture, report.kind = family.name, family.kind
    best: tuple[int, str, tuple] | None = None
    for config, build in family.configs.items():
        try:
            with torch.device("meta"):
                model = build(state)
        except KeyError as error:  # a key the configuration is read from is absent: a partial file
            report.missing = [str(error.args[0])]
            report.notes.append(f"the file lacks {error.args[0]}, needed to read its configuration")
            return report, state, family
        differences = compare_keys(model.state_dict(), state, may_lack=family.may_lack)
        size = sum(map(len, differences))
        if best is None or size < best[0]:
            best = (size, config, differences)
            report.parameters = sum(p.numel() for p in model.parameters())
        if size == 0:
            break
    assert best is not None
    _, config, (report.missing, report.unexpected, report.mismatched) = best
    report.unexpected += outside
    report.config = config
    report.notes += family.notes(raw, state)
    return report, state, family


def load_checkpoint(path: str | os.PathLike, *, kind: Kind | None = None) -> tuple[nn.Module, CheckReport]:
    """The network a checkpoint holds, built at its configuration and loaded strictly (CPU, eval).

    The file's family (:data:`~robustwrap.families.FAMILIES`) decides everything particular to
    it: the configuration, its release variant (score-SDE training checkpoints load their EMA
    weights) and the returned module. Diffusion networks come back ready for the sampler's
    ``eps(x_t, t)`` call (e.g. :class:`~robustwrap.adapters.ScoreSDEEps`,
    :class:`~robustwrap.adapters.EDMDenoiserEps`; guided-diffusion keeps the first 3
    channels); classifiers as they are.

    Args:
        kind: refuse a checkpoint of the other kind (e.g. a classifier passed as diffusion).

    Raises:
        CheckpointError: unreadable file, unknown architecture, wrong kind, or a mismatch.
    """
    raw = read_checkpoint(path)
    report, state, family = _inspect(raw, path)
    if family is None:
        raise CheckpointError(f"{path}: {report.notes[-1]}. Supported: " + ", ".join(f.name for f in FAMILIES))
    if kind is not None and report.kind != kind:
        raise CheckpointError(f"{path} holds a {report.kind} ({report.architecture}), but a {kind} was asked for")
    if not report.ok:
        counts = {"missing": report.missing, "unexpected": report.unexpected, "of another shape": report.mismatched}
        problems = ", ".join(f"{len(keys)} {what} ({', '.join(keys[:3])})" for what, keys in counts.items() if keys)
        raise CheckpointError(
            f"{path} looks like a {report.architecture} but fits none of its known configurations "
            f"(closest: {report.config}; tensors: {problems}): see `robustwrap models check {path}`"
        )
    assert report.config is not None
    model = family.configs[report.config](state)  # its initial values are all overwritten below
    try:
        prepared = family.prepare(raw, state, model)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    load_strict(model, prepared, path, f"{family.name} {report.config}", may_lack=family.may_lack)
    return family.adapt(model.eval()).eval(), report


def model_files(root: str | os.PathLike) -> list[Path]:
    """Checkpoint files under ``root`` (safetensors and torch files), sorted."""
    suffixes = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


__all__ = ["CheckReport", "identify", "check_checkpoint", "check_state", "load_checkpoint", "model_files"]
