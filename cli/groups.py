"""Option groups: options declared once and shared by several commands, each handed to the command as one value.

A command names a group as one parameter (``models: Models``); :func:`takes` puts the group's
options in its place on the command line and calls the command with the value the group makes
of them. The groups: the model specs (:data:`MODELS`, every command that builds the defense), the
defense's setting (:func:`defense_group`: a config file and the fields given beside it), the Triton
repository's serving limits (:data:`SERVING`) and the attacks' own options (:data:`ATTACK_OPTIONS`, made from the attack registry's declarations).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer

from .common import (CLASSIFIER_SPECS, CONFIG_HELP, DIFFUSION_SPECS, STEPS_HELP, T_L_HELP, T_S_HELP, WEIGHTS_HELP,
                     console, defense_config, fail, require_finite)


@dataclass(frozen=True)
class Group:
    """Options (typer parameters) and what to make of their values."""

    params: tuple[inspect.Parameter, ...]
    make: Callable[..., object]


def option(name: str, kind: object, default: object, *flags: str, **settings: object) -> inspect.Parameter:
    """One command-line option (``--name-with-dashes``, or ``flags``) as a typer parameter."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                             default=typer.Option(default, *flags, **settings))


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
        """The defended model from the specs; a bad spec or weight file ends the command with exit code 2."""
        from robustwrap import RobustWrapper
        from robustwrap.specs import build_classifier, build_diffusion, spec_has_weights

        untrained = (self.classifier_weights is None and not spec_has_weights(self.classifier, "classifier")) or (
            self.diffusion_weights is None and not spec_has_weights(self.diffusion, "diffusion"))
        try:
            wrapper = RobustWrapper(
                build_classifier(self.classifier, num_classes=self.num_classes, channels=channels,
                                 weights=str(self.classifier_weights) if self.classifier_weights else None),
                build_diffusion(self.diffusion, channels=channels, image_size=image_size,
                                weights=str(self.diffusion_weights) if self.diffusion_weights else None),
                config, image_size=image_size)
        except (ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
            fail(str(error))
        if untrained and os.environ.get("RANK", "0") == "0":  # only once the specs are known to be valid
            console.print("[yellow]note:[/yellow] networks without --*-weights have random weights: "
                          "this exercises the pipeline, its accuracy means nothing")
        return wrapper

    def record(self, **extra: object) -> dict:
        """The specs as recorded in reports and bundles (JSON-able; an unset weight file is None)."""
        return {"classifier": self.classifier, "diffusion": self.diffusion,
                "classifier_weights": str(self.classifier_weights) if self.classifier_weights else None,
                "diffusion_weights": str(self.diffusion_weights) if self.diffusion_weights else None, **extra}


MODELS = Group((
    option("classifier", str, "mnist", help=CLASSIFIER_SPECS),
    option("classifier_weights", Optional[Path], None, help=WEIGHTS_HELP),
    option("diffusion", str, "mnist", help=DIFFUSION_SPECS),
    option("diffusion_weights", Optional[Path], None, help=WEIGHTS_HELP),
    option("num_classes", int, 10, min=2, help="classes the classifier outputs"),
), Models)


@dataclass(frozen=True)
class DefenseSetting:
    """The defense's setting as given: a PurifyConfig file and the fields that override it (None: not given)."""

    config_file: Optional[Path]
    steps: Optional[int]
    t_l: Optional[float]
    t_s: Optional[float]
    votes: Optional[int] = None

    @property
    def given(self) -> bool:
        """Whether the setting was given at all (a file, the grid or a noise level; votes alone do not count)."""
        return self.config_file is not None or any(v is not None for v in (self.steps, self.t_l, self.t_s))

    def build(self):
        """The PurifyConfig (the file's, or the defaults with steps 50, with the given fields); a bad file or value
        ends the command."""
        require_finite(t_l=self.t_l, t_s=self.t_s)
        return defense_config(self.config_file, steps=self.steps, t_l=self.t_l, t_s=self.t_s, votes=self.votes)


def defense_group(*, votes: bool = True, config_help: str = CONFIG_HELP) -> Group:
    """--config, --steps, --t-l, --t-s (and --votes) as one :class:`DefenseSetting`."""
    params = (
        option("config_file", Optional[Path], None, "--config", help=config_help),
        option("steps", Optional[int], None, min=1, help=STEPS_HELP),
        option("t_l", Optional[float], None, help=T_L_HELP),
        option("t_s", Optional[float], None, help=T_S_HELP),
    ) + ((option("votes", Optional[int], None, min=1, help="S purifications per image, combined by the vote rule "
                 "(hard majority by default); default 1"),) if votes else ())
    return Group(params, DefenseSetting)


SERVING = Group((  # robustwrap.export.triton.ServingOptions' fields, by name
    option("max_batch_size", int, 8, "--triton-max-batch", min=1, help="images the Triton pipeline runs at once "
           "(requests are batched up to it; larger requests run in chunks of it)"),
    option("max_request_batch", int, 256, min=1, help="the most images one request to the pipeline may hold"),
    option("max_queue_size", int, 64, min=1, help="requests the pipeline queues; more are refused at once "
           "(UNAVAILABLE, HTTP 503)"),
    option("queue_timeout_ms", int, 30_000, min=1, help="ms a request may wait in the queue before it is refused "
           "(UNAVAILABLE)"),
    option("instances", int, 1, min=1, help="Triton pipeline model instances (stub processes)"),
    option("component_instances", int, 1, min=1, help="instances of each Triton component model"),
), lambda **values: values)


def _attack_options() -> Group:
    """One option per field of the registered attacks' options, with its declared default, help and lower bound;
    the command receives {field: value}."""
    from robustwrap.attacks.registry import option_fields

    params = tuple(option(f.name, f.kind, f.default, help=f.help, **({"min": f.bounds["ge"]} if "ge" in f.bounds
                                                                       else {}))
                   for f in option_fields().values())
    return Group(params, lambda **values: values)


ATTACK_OPTIONS = _attack_options()
