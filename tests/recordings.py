"""The recorded state-dict layouts of real checkpoints (tests/data/arch/*.txt) and how to compare.

Each file lists one ``name shape`` per state-dict entry (shape ``160,3,3,3``; a 0-dim tensor is
``()``), after ``#`` comment lines saying where the list comes from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ARCH = Path(__file__).parent / "data" / "arch"
Layout = list[tuple[str, tuple[int, ...]]]


def recorded(name: str) -> Layout:
    """(name, shape) of every entry of the recording ``name``, in file order."""
    entries = []
    for line in (ARCH / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split()
        entries.append((key, () if shape == "()" else tuple(int(d) for d in shape.split(","))))
    return entries


def recorded_meta_state(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors with the names and shapes of a recorded real checkpoint."""
    return {key: torch.empty(shape, device="meta") for key, shape in recorded(name)}


def layout(model: nn.Module) -> Layout:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def layout_diff(ours: Layout, real: Layout) -> str:
    """A readable difference between our layout and the recorded one (first 40 lines)."""
    mine, theirs = dict(ours), dict(real)
    lines = [f"- missing from ours: {key} {theirs[key]}" for key in theirs if key not in mine]
    lines += [f"+ not in checkpoint: {key} {mine[key]}" for key in mine if key not in theirs]
    lines += [f"~ {key}: ours {mine[key]} vs checkpoint {theirs[key]}" for key in theirs if key in mine and mine[key] != theirs[key]]
    if not lines and [k for k, _ in ours] != [k for k, _ in real]:
        lines.append("same entries, different order")
    return "\n".join(lines[:40]) + (f"\n... {len(lines) - 40} more" if len(lines) > 40 else "")
