"""The `robustwrap` command line: wires one module per command into one typer app.

Each command lives in its own module (eval, export, tune, purify, serve, verify, models, inspect) and only
parses options, calls the library and prints, through the shared console of `common`.
Library code never prints.
"""

from __future__ import annotations

import os
from typing import Optional

import typer

from . import eval as eval_module
from . import export, inspect, models, purify, serve, tune, verify

app = typer.Typer(help="Wrap image classifiers in a diffusion-purification defense.", no_args_is_help=True)


@app.callback()
def threads_option(
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads for the command (default: "
                                          "OMP_NUM_THREADS if set, else the CPUs this process may use: its affinity "
                                          "and the container's CPU quota, not the machine's cores)"),
) -> None:
    """Wrap image classifiers in a diffusion-purification defense."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return  # the user's (or the launcher's) choice
    import torch

    from robustwrap.cpus import available_cpus

    torch.set_num_threads(threads or available_cpus())


app.command("version")(inspect.version)
app.command("inspect")(inspect.inspect)
app.command("export")(export.export_command)
app.command("eval")(eval_module.eval_command)
app.command("tune")(tune.tune_command)
app.command("purify")(purify.purify_command)
app.command("serve")(serve.serve_command)
app.command("verify")(verify.verify_command)

models_app = typer.Typer(help="The model store and checkpoint files.", no_args_is_help=True)
models_app.command("list")(models.models_list)
models_app.command("check")(models.models_check)
app.add_typer(models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
