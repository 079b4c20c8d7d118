"""MkDocs hooks: the home page is the README (one source), and the command-line page ends with every
command's ``--help``, generated from the typer app at build time."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme() -> str:
    """README.md with its repository links pointed at the site's pages."""
    text = (ROOT / "README.md").read_text()
    text = text.replace("](docs/", "](").replace("](benchmarks/RESULTS.md)", "](results.md)")
    return text.replace("](CHANGELOG.md)", "](changelog.md)")


def _cli_reference() -> str:
    """Every command's --help as the user sees it, in a code block each."""
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    runner = CliRunner()
    env = {"COLUMNS": "110", "TERM": "dumb", "NO_COLOR": "1"}

    def help_of(*command: str) -> str:
        result = runner.invoke(app, [*command, "--help"], env=env, prog_name="robustwrap")
        if result.exit_code != 0:
            raise RuntimeError(f"robustwrap {' '.join(command)} --help failed: {result.output[-300:]}")
        return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())

    top = help_of()
    names = re.findall(r"^│ (\w[\w-]*)\s", top.split("Commands", 1)[-1], flags=re.M)
    parts = ["\n## Reference (generated from `robustwrap --help`)\n", "```text", top, "```"]
    for name in names:
        parts += [f"\n### robustwrap {name}\n", "```text", help_of(name), "```"]
    return "\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return _readme()
    if page.file.src_uri == "cli.md":
        return markdown + _cli_reference()
    return markdown
