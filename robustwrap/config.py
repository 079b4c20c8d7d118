"""The defense's configuration: one frozen dataclass, changed with `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .outputs import dumps_strict, loads_strict, write_text_atomic
from .schema import check_types, from_dict, setting
from .schema import problems as schema_problems

NUM_TRAIN_STEPS = 1000  # the DDPM schedule the diffusion models were trained with
CONFIG_FORMAT = "robustwrap.PurifyConfig"  # what a config file says it is
CONFIG_VERSION = 1  # bump when a saved file's meaning changes

MaskRule = Literal["threshold", "top_fraction"]
MaskNormalization = Literal["minmax", "softmax"]
Resampling = Literal["single", "repaint", "none"]
Mode = Literal["uniform", "heterogeneous"]
MODES: tuple[str, ...] = get_args(Mode)  # the one list of defense modes (the CLI, eval, tune and the store read it)
VoteRule = Literal["hard", "soft"]
MAX_P = 8.0  # |A|^p of an activation of 1e4 is 1e32 at p = 8: still finite in float32 (max 3.4e38)


@dataclass(frozen=True)
class PurifyConfig:
    """Everything that decides what the defense computes (docs/algorithm.md).

    Timesteps are fractions of the 1000 training steps: ``t_l = 0.2`` is timestep 200.
    The defaults are the reference code's CIFAR-10 settings; :meth:`imagenet` gives the
    ImageNet ones (top-15% mask).

    Example:
        >>> from dataclasses import replace
        >>> fast = replace(PurifyConfig(), steps=50, votes=4)
    """

    t_l: float = setting(0.2, gt=0, lt=1, help="strong noise level (attended pixels), fraction of 1000")
    t_s: float = setting(0.1, help="weak noise level; stage 1 (inpainting) runs while s >= t_s; in [0, t_l]")
    steps: int = setting(500, ge=1, le=NUM_TRAIN_STEPS, help="DDIM grid resolution over 1000 steps (stride 1000 // steps)")
    resample_steps: int = setting(3, ge=0, help="U: forward single steps per stage-1 step (paper: 10)")
    resampling: Resampling = setting("single", help='"single" (the paper), "repaint" (multi-step, costly), "none"')
    eta: float = setting(0.0, ge=0, le=1, why="0 = deterministic DDIM, 1 = DDPM-like",
                         help="DDIM stochasticity; above 1 the step adds more noise than it removes")
    mode: Mode = setting("heterogeneous", help='"uniform" = all-ones mask: DiffPure-style baseline at t_l')
    mask_rule: MaskRule = setting("threshold", help='"threshold" at tau, or keep the "top_fraction" of pixels')
    tau: float = setting(0.9, ge=0, le=1, help="threshold on the [0, 1] attention map")
    top_fraction: float = setting(0.15, gt=0, le=1, help="fraction of pixels per image marked as attended")
    p: float = setting(2.0, gt=0, le=MAX_P, why="higher powers overflow float32 on ordinary activations",
                       help="G = sum_c |A_c|^p")
    p_root: bool = setting(False, help="take the p-th root of G (the paper's text; not the code)")
    attention_norm: MaskNormalization = setting("minmax", help="per-image map normalisation before the union")
    votes: int = setting(1, ge=1, help="S stochastic purifications per image, run as one batch")
    vote: VoteRule = setting("hard", help='"hard" majority of labels or "soft" mean probability')
    grad_checkpoint: bool = setting(False, help="recompute each denoiser call in backward (saves memory)")

    def __post_init__(self) -> None:
        check_types(self, "PurifyConfig")  # the relations below need numbers
        problems = schema_problems(self)  # the declared choices and bounds
        if not 0.0 <= self.t_s <= self.t_l:
            problems.append(f"t_s must be in [0, t_l={self.t_l}], got {self.t_s}")
        if 1 <= self.steps <= NUM_TRAIN_STEPS and int(round(self.steps * self.t_l, 9)) < 1:
            problems.append(f"steps * t_l must be >= 1 so that there is a denoising step, got {self.steps} * {self.t_l}")
        if round(self.t_l * NUM_TRAIN_STEPS) + self.resample_steps >= NUM_TRAIN_STEPS:
            problems.append("t_l * 1000 + resample_steps must stay below 1000")
        if problems:
            raise ValueError("invalid PurifyConfig: " + "; ".join(problems))

    @classmethod
    def imagenet(cls, **overrides: object) -> "PurifyConfig":
        """The reference ImageNet settings: the top 15% of pixels get the strong noise."""
        return cls(**{"mask_rule": "top_fraction", "top_fraction": 0.15, **overrides})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """The fields by name (JSON-able: floats, ints, strings and booleans)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object], source: str = "the configuration") -> "PurifyConfig":
        """A validated config from field values (:func:`robustwrap.schema.from_dict`): unknown names and wrong
        types are refused, with no coercion (counts are ints, levels finite numbers, switches booleans,
        rules strings).

        Raises:
            ValueError: naming ``source`` and the unknown fields, the field of the wrong type, or the bad value.
        """
        return from_dict(cls, values, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config to ``path``: JSON (``.json``) or TOML (``.toml``), with its format version.

        Returns:
            The path written.
        """
        path = Path(path)
        if path.suffix.lower() == ".json":
            text = dumps_strict({"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "config": self.to_dict()},
                                indent=2) + "\n"
        elif path.suffix.lower() == ".toml":
            lines = [f'format = "{CONFIG_FORMAT}"', f"version = {CONFIG_VERSION}", "", "[config]"]
            lines += [f"{name} = {_toml_value(value)}" for name, value in self.to_dict().items()]
            text = "\n".join(lines) + "\n"
        else:
            raise ValueError(f"config files are .json or .toml, got {path.name}")
        write_text_atomic(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PurifyConfig":
        """Read a config written by :meth:`save` (JSON or TOML), checking format, version and fields.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a robustwrap config, a newer version, unknown fields or bad values.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".toml":
                data = _read_toml(text)
            else:
                data = loads_strict(text, allow_nan=True)  # NaN fields are named by the field checks
        except ValueError as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
            raise ValueError(f"{path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {error}") from error
        except RecursionError as error:
            raise ValueError(f"{path} is nested too deeply to be a robustwrap config") from error
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT or not isinstance(data.get("config"), dict):
            raise ValueError(f"{path} is not a robustwrap config: expected format = {CONFIG_FORMAT!r} and a config table")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"{path}: version must be an integer (1 to {CONFIG_VERSION}), got {version!r}")
        if not 1 <= version <= CONFIG_VERSION:
            raise ValueError(f"{path} has config version {version}; this robustwrap reads versions 1 to {CONFIG_VERSION}")
        return cls.from_dict(data["config"], source=str(path))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these plain names
    return repr(value)


def _read_toml(text: str) -> dict:
    try:
        import tomllib  # noqa: PLC0415  (Python >= 3.11)
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]  # noqa: PLC0415
    return tomllib.loads(text)
