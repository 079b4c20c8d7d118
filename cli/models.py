"""`robustwrap models list|check`: the model store and checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console, fail


def models_list(
    store: Optional[Path] = typer.Option(None, help="model store folder (default: $ROBUSTWRAP_MODEL_DIR or the repository's models/)"),
) -> None:
    """List the checkpoints in the model store with their cards (<name>.md beside each file)."""
    from robustwrap.architectures import model_files
    from robustwrap.store import model_dir

    root = store or model_dir()
    if not root.is_dir():
        fail(f"no model store at {root}: set ROBUSTWRAP_MODEL_DIR or pass --store")
    files = model_files(root)
    table = Table(title=f"model store {root}")
    table.add_column("file", overflow="fold")
    table.add_column("size", no_wrap=True)
    table.add_column("card", overflow="fold")
    for path in files:
        card = path.with_suffix(".md")
        lines = card.read_text().splitlines() if card.is_file() else []
        summary = lines[0].lstrip("# ").strip() if lines else "[dim]no card[/dim]"
        table.add_row(str(path.relative_to(root)), f"{path.stat().st_size / 2**20:.1f} MiB", summary)
    console.print(table if files else f"{root} holds no checkpoints (*.safetensors, *.pt, *.pth, *.ckpt, *.bin)")


def models_check(path: Path = typer.Argument(..., help="a checkpoint file (.safetensors, .pt, .pth, ...)")) -> None:
    """Detect a checkpoint's architecture and match every tensor name and shape, without loading it."""
    from robustwrap.architectures import check_checkpoint

    try:
        report = check_checkpoint(path)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    table = Table(title=str(path), show_header=False)
    table.add_row("architecture", f"{report.architecture or '[red]unrecognised[/red]'} ({report.kind or '?'})")
    table.add_row("configuration", report.config or "-")
    table.add_row("tensors in file", str(report.tensors))
    table.add_row("parameters", f"{report.parameters:,}" if report.config else "-")
    for name, items in (("missing", report.missing), ("unexpected", report.unexpected), ("other shape", report.mismatched)):
        if items:
            table.add_row(f"[red]{name}[/red]", f"{len(items)}: " + ", ".join(items[:5]) + (" ..." if len(items) > 5 else ""))
    for note in report.notes:
        table.add_row("note", note)
    table.add_row("result", "[green]all keys and shapes match[/green]" if report.ok else "[red]does not load strictly[/red]")
    console.print(table)
    raise typer.Exit(0 if report.ok else 1)
