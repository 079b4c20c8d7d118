"""The `robustwrap` command line. Library code never prints; this module does, through rich."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Wrap image classifiers in a diffusion-purification defense.", no_args_is_help=True)
console = Console()


@app.command()
def version() -> None:
    """Print the versions of robustwrap and of the libraries it runs on."""
    import timm
    import torch

    import robustwrap

    console.print(f"robustwrap {robustwrap.__version__}, torch {torch.__version__}, timm {timm.__version__}")


@app.command()
def inspect(
    model: str = typer.Argument(..., help="a timm model name, e.g. resnet50 (built without weights)"),
    image_size: int = typer.Option(None, help="input size to probe; default: the model's declared size"),
) -> None:
    """Show what RobustWrapper infers for a classifier: stage modules, their maps, normalisation."""
    import timm
    import torch

    from robustwrap.hooks import StageHooks, infer_stage_modules
    from robustwrap.inputs import infer_classifier_spec, infer_normalization

    try:
        classifier = timm.create_model(model, pretrained=False).eval()
    except RuntimeError as error:  # timm: unknown model name
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    channels, declared_size = infer_classifier_spec(classifier)
    size = (image_size, image_size) if image_size else declared_size or (224, 224)
    try:
        blocks = infer_stage_modules(classifier)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    with StageHooks(classifier, blocks) as hooks, torch.no_grad():
        classifier(torch.zeros(1, channels or 3, *size))
        shapes = [tuple(a.shape[1:]) for a in hooks.pop()]

    table = Table(title=f"{model}: stages used for the attention mask (input {size})")
    table.add_column("module")
    table.add_column("output (C, H, W)")
    for name, shape in zip(blocks, shapes):
        table.add_row(name, str(shape))
    console.print(table)
    console.print(f"normalization inside the wrapper: {infer_normalization(classifier)}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
