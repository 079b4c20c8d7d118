"""`robustwrap inspect` and `robustwrap version`: where the mask reads a model, and what runs it."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import console, fail


def version() -> None:
    """Print the versions of robustwrap and of the libraries it runs on."""
    import timm
    import torch

    import robustwrap

    console.print(f"robustwrap {robustwrap.__version__}, torch {torch.__version__}, timm {timm.__version__}")


def inspect(
    model: str = typer.Argument(..., help="a timm model name, e.g. resnet50 (built without weights)"),
    image_size: int = typer.Option(None, help="input size to probe; default: the model's declared size"),
) -> None:
    """Show where RobustWrapper reads a classifier's stage maps, their shapes, and its normalisation."""
    import timm
    import torch

    from robustwrap.inputs import classifier_fixed_size, infer_classifier_spec, infer_normalization
    from robustwrap.stages import infer_stage_source

    try:
        classifier = timm.create_model(model, pretrained=False).eval()
    except RuntimeError as error:  # timm: unknown model name
        fail(str(error))
    channels, declared_size = infer_classifier_spec(classifier)
    size = (image_size, image_size) if image_size else declared_size or (224, 224)
    try:
        source = infer_stage_source(classifier, probe_size=size)
        with torch.no_grad():
            shapes = [tuple(a.shape[1:]) for a in source.capture(classifier, torch.zeros(1, channels or 3, *size))]
    except (ValueError, RuntimeError, AssertionError) as error:
        fail(str(error))

    table = Table(title=f"{model}: stage maps for the attention mask (input {size})")
    table.add_column("source")
    table.add_column("map (C, H, W)")
    for line, shape in zip(source.describe(), shapes):
        table.add_row(line, str(shape))
    console.print(table)
    fixed = classifier_fixed_size(classifier)
    console.print(f"input sizes: {'only ' + str(fixed) if fixed else 'any the network takes'}; "
                  f"normalization inside the wrapper: {infer_normalization(classifier)}")
