"""The `robustwrap` command line: wires one module per command into one typer app.

Each command lives in its own module (eval, export, tune, purify, serve, verify, models, inspect) and only
parses options, calls the library and prints, through the shared console of `common`.
Library code never prints.
"""

from __future__ import annotations

import typer

from . import eval as eval_module
from . import common, export, inspect, models, purify, serve, tune, verify

app = typer.Typer(help="Wrap image classifiers in a diffusion-purification defense.", no_args_is_help=True)
app.callback()(common.threads_option)  # robustwrap --threads N COMMAND
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
