"""Recognise a checkpoint's architecture from its tensors, check it strictly, and load it.

Each :class:`Architecture` names the keys that identify it and the configurations it can
build; :func:`check_checkpoint` compares a file with each configuration on the meta device
(no memory, even for guided-diffusion's 553M parameters) and :func:`load_checkpoint` builds the
matching network on the CPU and loads it with ``strict=True``. Diffusion networks come back
ready for the sampler (:class:`~robustwrap.adapters.EpsModel` adapters where their output or
time convention differs); classifiers take [0, 1] images through the wrapper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from .adapters import EDMDenoiserEps, as_eps_model
from .checkpoints import CheckpointError, is_optional, load_strict, read_checkpoint, state_dict_of
from .inputs import IMAGENET_MEAN, IMAGENET_STD
from .nets import DMWideResNet, EDMDenoiser, GuidedDiffusionUNet, NCSNpp, SmallResNet, SmallUNet, WideResNet
from .nets.cifar_resnet import CifarResNet18
from .nets.ncsnpp import ScoreSDEEps, load_score_sde_checkpoint

Kind = Literal["classifier", "diffusion"]
State = dict[str, Tensor]


@dataclass(frozen=True)
class Architecture:
    """A family of networks: the keys that identify its checkpoints and how to build them.

    Attributes:
        name: short name shown to users.
        kind: "classifier" or "diffusion".
        signature: keys every checkpoint of the family has (after unwrapping and prefix stripping).
        configs: (config name -> builder from the state dict) tried in order; the first whose
            names and shapes all match is the checkpoint's configuration.
    """

    name: str
    kind: Kind
    signature: tuple[str, ...]
    configs: dict[str, Callable[[State], nn.Module]] = field(default_factory=dict)


def _count(state: State, pattern: str) -> int:
    """How many ``pattern.format(i)`` keys exist for i = 0, 1, 2, ..."""
    i = 0
    while pattern.format(i) in state:
        i += 1
    return i


def _robustbench_wrn(state: State) -> nn.Module:
    blocks = _count(state, "block1.layer.{}.conv1.weight")
    width = state["block1.layer.0.conv1.weight"].shape[0] // 16
    return WideResNet(depth=6 * blocks + 4, widen_factor=width, num_classes=state["fc.weight"].shape[0])


# RobustBench's CIFAR-100 statistics, used when a 100-class DM WRN file lacks its mean/std.
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _dm_wrn(state: State) -> nn.Module:
    blocks = _count(state, "layer.0.block.{}.conv_0.weight")
    width = state["layer.0.block.0.conv_0.weight"].shape[0] // 16
    num_classes = state["logits.weight"].shape[0]
    statistics = {"mean": CIFAR100_MEAN, "std": CIFAR100_STD} if num_classes == 100 else {}
    return DMWideResNet(depth=6 * blocks + 4, width=width, num_classes=num_classes, **statistics)


def _torchvision_resnet(state: State) -> nn.Module:
    import torchvision  # noqa: PLC0415

    resnet = torchvision.models.resnet
    layers = [_count(state, f"layer{i}.{{}}.conv1.weight") for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state
    num_classes = state["fc.weight"].shape[0]
    model = resnet.ResNet(resnet.Bottleneck if bottleneck else resnet.BasicBlock, layers, num_classes=num_classes)
    if num_classes == 1000:  # an ImageNet model: declare what it takes, as timm models do
        model.pretrained_cfg = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return model


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("guided-diffusion UNet", "diffusion", ("input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight"),
                 {"256x256_diffusion_uncond (ImageNet)": lambda s: GuidedDiffusionUNet.imagenet_256_uncond()}),
    Architecture("score-SDE DDPM++", "diffusion", ("all_modules.0.weight", "all_modules.2.weight"),
                 {"cifar10_ddpmpp_deep_continuous (DiffPure's checkpoint_8.pth)": lambda s: NCSNpp.cifar10_ddpmpp_continuous(deep=True),
                  "cifar10_ddpmpp_continuous": lambda s: NCSNpp.cifar10_ddpmpp_continuous(deep=False)}),
    Architecture("EDM DDPM++ (SongUNet)", "diffusion", ("model.map_layer0.weight", "model.enc.32x32_conv.weight"),
                 {"edm-cifar10-32x32-uncond-vp": lambda s: EDMDenoiser.cifar10_uncond_vp()}),
    Architecture("robustwrap SmallUNet", "diffusion", ("time_mlp.0.weight", "conv_out.weight"),
                 {"shipped MNIST DDPM": lambda s: SmallUNet(1, base_channels=32, channel_mults=(1, 2, 2), sample_size=28),
                  "small-unet (3 x 32 x 32)": lambda s: SmallUNet(3, base_channels=32, channel_mults=(1, 2, 2), sample_size=32)}),
    Architecture("RobustBench WideResNet", "classifier", ("block1.layer.0.bn1.weight", "fc.weight"),
                 {"WRN-depth-width (from the tensors)": _robustbench_wrn}),
    Architecture("RobustBench DM WideResNet", "classifier", ("init_conv.weight", "logits.weight"),
                 {"DM WRN-depth-width, Swish (from the tensors)": _dm_wrn}),
    Architecture("CIFAR ResNet-18", "classifier", ("layer4.0.conv1.weight", "linear.weight"),
                 {"ResNet-18 (pyautoattack's model_test.pt layout)": lambda s: CifarResNet18(s["linear.weight"].shape[0])}),
    Architecture("ResNet (torchvision / timm)", "classifier", ("layer4.0.conv1.weight", "fc.weight"),
                 {"ResNet (depth from the tensors)": _torchvision_resnet}),
    Architecture("robustwrap SmallResNet", "classifier", ("stem.0.weight", "fc.weight"),
                 {"shipped MNIST classifier": lambda s: SmallResNet(1, 10, widths=(32, 64, 128)),
                  "small-resnet": lambda s: SmallResNet(s["stem.0.weight"].shape[1], s["fc.weight"].shape[0])}),
)


@dataclass
class CheckReport:
    """What :func:`check_checkpoint` found. ``ok`` when a configuration matches exactly."""

    path: str
    architecture: str | None = None
    kind: Kind | None = None
    config: str | None = None
    tensors: int = 0
    parameters: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None and not (self.missing or self.unexpected or self.mismatched)


def _network_state(raw: dict, path: str | os.PathLike) -> State:
    """The network's tensors in a loaded checkpoint (a score-SDE training checkpoint's ``model``)."""
    if isinstance(raw.get("model"), dict) and isinstance(raw.get("ema"), dict):
        return state_dict_of({"model": raw["model"]}, path)
    return state_dict_of(raw, path)


def _compare(model: nn.Module, state: State) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not is_optional(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, mismatched


def identify(state: State) -> Architecture | None:
    """The first architecture whose signature keys are all in ``state``."""
    return next((a for a in ARCHITECTURES if all(k in state for k in a.signature)), None)


# Prefixes some releases put before every key (RobustBench strips "model."; DiffPure's own
# classifiers sit in an nn.Sequential after a normalisation layer: "0." or "1.").
EXTRA_PREFIXES = ("model.", "0.", "1.")


def _unprefixed(state: State) -> tuple[State, list[str]]:
    """``state`` with an extra prefix removed when that makes it recognisable, and the keys
    without that prefix (e.g. a normalisation layer's ``0.mean``), which then cannot load."""
    if identify(state) is not None:
        return state, []
    for prefix in EXTRA_PREFIXES:
        kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if kept and identify(kept) is not None:
            return kept, [k for k in state if not k.startswith(prefix)]
    return state, []


def check_checkpoint(path: str | os.PathLike) -> CheckReport:
    """Read ``path`` safely, detect its architecture and compare every tensor name and shape.

    The file's tensors are read into memory; the candidate networks are built on the meta
    device (no weights allocated, even for guided-diffusion's 553M parameters).

    Raises:
        FileNotFoundError, CheckpointError: the file cannot be read (see :func:`read_checkpoint`).
    """
    return check_state(read_checkpoint(path), path)


def check_state(raw: dict, path: str | os.PathLike = "<state dict>") -> CheckReport:
    """:func:`check_checkpoint` on an already loaded checkpoint dict (only shapes are read, so
    meta tensors will do)."""
    return _inspect(raw, path)[0]


def _inspect(raw: dict, path: str | os.PathLike) -> tuple[CheckReport, State]:
    """The report on ``raw`` and the network's tensors it judged (unwrapped, prefixes removed)."""
    state, outside = _unprefixed(_network_state(raw, path))
    report = CheckReport(path=str(path), tensors=len(state) + len(outside))
    architecture = identify(state)
    if architecture is None:
        report.notes.append("unrecognised architecture; first keys: " + ", ".join(list(state)[:6]))
        return report, state
    report.architecture, report.kind = architecture.name, architecture.kind
    if architecture.name == "score-SDE DDPM++" and isinstance(raw.get("ema"), dict):
        shadow = raw["ema"].get("shadow_params", [])
        report.notes.append(f"score-SDE training checkpoint: EMA with {len(shadow)} shadow tensors (the weights loaded)")
    best: tuple[int, str, tuple] | None = None
    for config, build in architecture.configs.items():
        try:
            with torch.device("meta"):
                model = build(state)
        except KeyError as error:  # a key the configuration is read from is absent: a partial file
            report.missing = [str(error.args[0])]
            report.notes.append(f"the file lacks {error.args[0]}, needed to read its configuration")
            return report, state
        differences = _compare(model, state)
        size = sum(map(len, differences))
        if best is None or size < best[0]:
            best = (size, config, differences)
            report.parameters = sum(p.numel() for p in model.parameters())
        if size == 0:
            break
    assert best is not None
    _, config, (report.missing, report.unexpected, report.mismatched) = best
    report.unexpected += outside
    report.config = config
    if architecture.name == "RobustBench DM WideResNet" and not {"mean", "std"} <= state.keys():
        report.notes.append("the file has no input mean/std: the DM WRN normalises with RobustBench's "
                            "CIFAR-10 statistics (CIFAR-100's for 100 classes)")
    return report, state


def load_checkpoint(path: str | os.PathLike, *, kind: Kind | None = None) -> tuple[nn.Module, CheckReport]:
    """The network a checkpoint holds, built at its configuration and loaded strictly (CPU, eval).

    Diffusion networks are returned ready for the sampler: score-SDE nets in
    :class:`~robustwrap.nets.ncsnpp.ScoreSDEEps` (with their EMA weights), EDM denoisers in
    :class:`~robustwrap.adapters.EDMDenoiserEps`, others through
    :func:`~robustwrap.adapters.as_eps_model` (guided-diffusion keeps the first 3 channels).

    Args:
        kind: refuse a checkpoint of the other kind (e.g. a classifier passed as diffusion).

    Raises:
        CheckpointError: unreadable file, unknown architecture, wrong kind, or a mismatch.
    """
    raw = read_checkpoint(path)
    report, state = _inspect(raw, path)
    if report.architecture is None:
        raise CheckpointError(f"{path}: {report.notes[-1]}. Supported: " + ", ".join(a.name for a in ARCHITECTURES))
    if kind is not None and report.kind != kind:
        raise CheckpointError(f"{path} holds a {report.kind} ({report.architecture}), but a {kind} was asked for")
    if not report.ok:
        counts = {"missing": report.missing, "unexpected": report.unexpected, "of another shape": report.mismatched}
        problems = ", ".join(f"{len(keys)} {what} ({', '.join(keys[:3])})" for what, keys in counts.items() if keys)
        raise CheckpointError(
            f"{path} looks like a {report.architecture} but fits none of its known configurations "
            f"(closest: {report.config}; tensors: {problems}): see `robustwrap models check {path}`"
        )
    architecture = next(a for a in ARCHITECTURES if a.name == report.architecture)
    model = architecture.configs[report.config](state)  # its initial values are all overwritten below
    if isinstance(model, NCSNpp):
        source = raw if "ema" in raw else {"model": state}
        load_score_sde_checkpoint(source, model, use_ema="ema" in raw)
    else:
        load_strict(model, state, path, f"{architecture.name} {report.config}")
    model.eval()
    if architecture.kind == "classifier":
        return model, report
    if isinstance(model, NCSNpp):
        return ScoreSDEEps(model).eval(), report
    if isinstance(model, EDMDenoiser):
        return EDMDenoiserEps(model).eval(), report
    return as_eps_model(model).eval(), report


def model_files(root: str | os.PathLike) -> list[Path]:
    """Checkpoint files under ``root`` (safetensors and torch files), sorted."""
    suffixes = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


__all__ = ["Architecture", "ARCHITECTURES", "CheckReport", "identify", "check_checkpoint", "check_state", "load_checkpoint", "model_files"]
