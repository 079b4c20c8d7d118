"""The shape issue 14 asked for, checked so that it stays: a thin CLI app, one module per command."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND_MODULES = ("eval", "export", "tune", "purify", "models", "inspect")


def test_cli_app_only_wires_commands():
    tree = ast.parse((ROOT / "cli" / "app.py").read_text())
    functions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert functions == ["main"]  # every command body lives in its own module
    assert not [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for name in COMMAND_MODULES:
        assert (ROOT / "cli" / f"{name}.py").is_file()


def test_every_cli_command_is_wired_to_its_module():
    from typer.main import get_command

    from robustwrap.cli.app import app

    group = get_command(app)
    commands = {name: command.callback.__module__ for name, command in group.commands.items() if command.callback}
    assert {"eval", "export", "tune", "purify", "inspect", "version"} <= commands.keys()
    for name in ("eval", "export", "tune", "purify", "inspect"):
        assert commands[name] == f"robustwrap.cli.{name}"
    models = group.commands["models"]
    assert {c.callback.__module__ for c in models.commands.values()} == {"robustwrap.cli.models"}
