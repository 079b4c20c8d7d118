"""Option groups: options declared once and shared by several commands, each handed to the command as one value.

A command names a group as one parameter (``models: Models``); :func:`takes` puts the group's
options in its place on the command line and calls the command with the value the group makes
of them. The groups: the model specs (:data:`MODELS`, every command that builds the defense) and
the attacks' own options (:data:`ATTACK_OPTIONS`, made from the attack registry's declarations).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer

from .common import CLASSIFIER_SPECS, DIFFUSION_SPECS, WEIGHTS_HELP, build_wrapper, model_specs


@dataclass(frozen=True)
class Group:
    """Options (typer parameters) and what to make of their values."""

    params: tuple[inspect.Parameter, ...]
    make: Callable[..., object]


def option(name: str, kind: object, default: object, **settings: object) -> inspect.Parameter:
    """One command-line option (``--name-with-dashes``) as a typer parameter."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                             default=typer.Option(default, **settings))


def takes(**groups: Group) -> Callable[[Callable], Callable]:
    """Replace each named parameter of a command by its group's options (in its place), and call the
    command with the group's value for it."""
    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        params = [q for p in signature.parameters.values() for q in (groups[p.name].params if p.name in groups
                                                                     else (p,))]

        @functools.wraps(command)
        def run(**values: object) -> object:
            for name, group in groups.items():
                values[name] = group.make(**{p.name: values.pop(p.name) for p in group.params})
            return command(**values)

        run.__signature__ = signature.replace(parameters=params)  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run
    return decorate


@dataclass(frozen=True)
class Models:
    """The two networks a command builds the defense from, as given on the command line."""

    classifier: str
    classifier_weights: Optional[Path]
    diffusion: str
    diffusion_weights: Optional[Path]
    num_classes: int

    @property
    def own_weights(self) -> bool:
        """Whether weight files were given (then no calibrated config of the shipped pair applies)."""
        return self.classifier_weights is not None or self.diffusion_weights is not None

    def build(self, channels: int, image_size: int, config):
        """The defended model (:func:`robustwrap.cli.common.build_wrapper`; a bad spec ends the command)."""
        return build_wrapper(self.classifier, self.classifier_weights, self.diffusion, self.diffusion_weights,
                             self.num_classes, channels, image_size, config)

    def record(self, **extra: object) -> dict:
        """The specs as recorded in reports and bundles (JSON-able)."""
        return model_specs(self.classifier, self.classifier_weights, self.diffusion, self.diffusion_weights, **extra)


MODELS = Group((
    option("classifier", str, "mnist", help=CLASSIFIER_SPECS),
    option("classifier_weights", Optional[Path], None, help=WEIGHTS_HELP),
    option("diffusion", str, "mnist", help=DIFFUSION_SPECS),
    option("diffusion_weights", Optional[Path], None, help=WEIGHTS_HELP),
    option("num_classes", int, 10, min=2, help="classes the classifier outputs"),
), Models)


def _attack_options() -> Group:
    """One option per field of the registered attacks' options, with its declared default, help and lower bound;
    the command receives {field: value}."""
    from robustwrap.attacks.registry import option_fields

    params = tuple(option(f.name, f.kind, f.default, help=f.help, **({"min": f.bounds["ge"]} if "ge" in f.bounds
                                                                       else {}))
                   for f in option_fields().values())
    return Group(params, lambda **values: values)


ATTACK_OPTIONS = _attack_options()
