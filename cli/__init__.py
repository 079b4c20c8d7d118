"""robustwrap.cli: the `robustwrap` command (installed from the top-level ``cli/`` folder).

Output that is not a terminal (a file, a pipe) is 200 columns wide, not rich's 80 that cut table cells
and option names: typer reads ``TERMINAL_WIDTH`` when it is imported, so it is set here, first.
"""

import os
import sys

PIPE_WIDTH = 200  # columns of printed tables and help when the output is not a terminal

if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
    os.environ.setdefault("TERMINAL_WIDTH", str(PIPE_WIDTH))
