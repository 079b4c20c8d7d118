"""robustwrap.cli: the `robustwrap` command (installed from the top-level ``cli/`` folder)."""
