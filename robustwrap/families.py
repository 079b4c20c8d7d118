"""The checkpoint families the library recognises: one registry entry per family.

Each :class:`CheckpointFamily` says, as data, everything the loader needs to know about a
family of released checkpoints: the keys that identify its state dicts, the configurations it
can build, the keys its files may leave out, a filter for release variants (e.g. score-SDE's
EMA copies) and the adapter that makes the loaded network a sampler-ready ``eps(x_t, t)`` model
or a classifier. :mod:`robustwrap.architectures` iterates :data:`FAMILIES` and never asks which
network class it holds; a new family is one new entry here (its network in :mod:`robustwrap.nets`,
which imports nothing from the library).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Literal

from torch import Tensor, nn

from .adapters import EDMDenoiserEps, ScoreSDEEps, as_eps_model
from .checkpoints import CheckpointError, load_strict, require_keys
from .inputs import IMAGENET_MEAN, IMAGENET_STD
from .nets import DMWideResNet, EDMDenoiser, GuidedDiffusionUNet, NCSNpp, SmallResNet, SmallUNet, WideResNet
from .nets.cifar_resnet import CifarResNet18
from .store import SHIPPED_CLASSIFIERS, SHIPPED_DIFFUSION

Kind = Literal["classifier", "diffusion"]
State = dict[str, Tensor]


def _as_is(checkpoint: Mapping, state: State, model: nn.Module) -> State:
    return state


def _no_notes(checkpoint: Mapping, state: State) -> list[str]:
    return []


def _unchanged(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class CheckpointFamily:
    """A family of released checkpoints: how to recognise, build, filter, load and adapt them.

    Attributes:
        name: short name shown to users (and in :class:`~robustwrap.architectures.CheckReport`).
        kind: "classifier" (takes [0, 1] images through the wrapper) or "diffusion".
        signature: keys every state dict of the family has (after unwrapping and prefix
            stripping); the first family whose signature a file holds is the file's family.
        configs: (config name -> builder from the state dict) tried in order; the first whose
            names and shapes all match is the checkpoint's configuration. Builders may read
            sizes from the tensors (depth, width, classes) and must work on the meta device.
        may_lack: keys the family's files may leave out (buffers the network rebuilds); the
            model keeps its own values. Besides :func:`robustwrap.checkpoints.is_optional`.
        prepare: ``prepare(checkpoint, state, model) -> state``, the state dict to load into the
            built ``model`` given the whole checkpoint (e.g. EMA copies in place of the raw
            weights). Runs after the key check, at load time only.
        notes: ``notes(checkpoint, state) -> [str]``, what a report should tell about the file.
        adapt: the loaded network (eval mode) -> the module the library calls: an
            ``eps(x_t, t)`` adapter for diffusion, the network itself for classifiers.
    """

    name: str
    kind: Kind
    signature: tuple[str, ...]
    configs: dict[str, Callable[[State], nn.Module]] = field(default_factory=dict)
    may_lack: tuple[str, ...] = ()
    prepare: Callable[[Mapping, State, nn.Module], State] = _as_is
    notes: Callable[[Mapping, State], list[str]] = _no_notes
    adapt: Callable[[nn.Module], nn.Module] = _unchanged


def _count(state: State, pattern: str) -> int:
    """How many ``pattern.format(i)`` keys exist for i = 0, 1, 2, ..."""
    i = 0
    while pattern.format(i) in state:
        i += 1
    return i


# --- score-SDE DDPM++ (nets/ncsnpp.py) ----------------------------------------------------------

SCORE_SDE_MAY_LACK = ("sigmas",)  # the SMLD noise ladder buffer: rebuilt by NCSNpp, unused by VP models


def score_sde_ema_weights(checkpoint: Mapping, state: State, model: nn.Module) -> State:
    """``state`` with every parameter replaced by its EMA copy from a score_sde training checkpoint.

    Args:
        checkpoint: ``{"model", "ema": {"decay", "num_updates", "shadow_params"}, ...}``, where
            ``shadow_params`` lists the EMA tensors in ``model.parameters()`` order (all DDPM++
            parameters are trainable, so the list covers every one of them).
        state: the ``"model"`` state dict, already checked against ``model``; buffers stay.
        model: the network being loaded (its parameter names and shapes are read).

    Raises:
        CheckpointError: no shadow list, a list of another length, or a shape that differs.
    """
    ema = checkpoint.get("ema")
    if not isinstance(ema, Mapping) or "shadow_params" not in ema:
        raise CheckpointError("the EMA weights need the checkpoint's 'ema' entry to hold a 'shadow_params' list")
    shadow = list(ema["shadow_params"])
    named = list(model.named_parameters())
    if len(shadow) != len(named):
        raise CheckpointError(
            f"EMA has {len(shadow)} shadow params but the model has {len(named)} parameters "
            "(wrong configuration, e.g. num_res_blocks?)"
        )
    wrong = [f"#{index} {name}: ema {tuple(tensor.shape)} vs model {tuple(param.shape)}"
             for index, ((name, param), tensor) in enumerate(zip(named, shadow))
             if tuple(tensor.shape) != tuple(param.shape)]
    if wrong:
        shown = ", ".join(wrong[:8]) + (f", ... ({len(wrong) - 8} more)" if len(wrong) > 8 else "")
        raise CheckpointError(f"{len(wrong)} EMA shadow params have the wrong shape: {shown}")
    return {**state, **{name: tensor for (name, _), tensor in zip(named, shadow)}}


def _score_sde_prepare(checkpoint: Mapping, state: State, model: nn.Module) -> State:
    """A training checkpoint (with ``"ema"``) loads its EMA weights; a plain state dict as it is."""
    return score_sde_ema_weights(checkpoint, state, model) if _has_ema(checkpoint) else state


def _has_ema(checkpoint: Mapping) -> bool:
    """Whether a score-SDE checkpoint carries EMA weights (an ``"ema"`` entry that is a mapping)."""
    return isinstance(checkpoint.get("ema"), Mapping)


def _score_sde_notes(checkpoint: Mapping, state: State) -> list[str]:
    if not _has_ema(checkpoint):
        return []
    shadow = checkpoint["ema"].get("shadow_params", [])
    return [f"score-SDE training checkpoint: EMA with {len(shadow)} shadow tensors (the weights loaded)"]


def load_score_sde_checkpoint(checkpoint: Mapping, model: nn.Module, *, use_ema: bool = True) -> None:
    """Fill an :class:`~robustwrap.nets.NCSNpp` from a score_sde training checkpoint, strictly.

    Args:
        checkpoint: the dict ``torch.load(path, map_location="cpu", weights_only=True)``
            returns, with ``"model"`` (state dict, keys usually prefixed ``module.``) and, for
            ``use_ema``, ``"ema"`` (see :func:`score_sde_ema_weights`). ``"optimizer"`` and
            ``"step"`` are ignored.
        model: a network of the checkpoint's configuration.
        use_ema: load the EMA weights (the ones to sample with) instead of the raw ones.

    The ``"model"`` entry must match ``model.state_dict()`` key for key and shape for shape
    (``sigmas`` may be absent: it then keeps the model's own values); buffers come from it.

    Raises:
        ValueError (CheckpointError for a mismatch): naming the missing / unexpected keys, the
            shapes that differ or the counts.
    """
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"expected a score_sde checkpoint dict with a 'model' state dict, got keys {keys}")
    state = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
    where, what = "checkpoint 'model'", "this NCSNpp"
    require_keys(model.state_dict(), state, where, what, may_lack=SCORE_SDE_MAY_LACK)  # before the EMA counts
    if use_ema:
        state = score_sde_ema_weights(checkpoint, state, model)
    load_strict(model, state, where, what, may_lack=SCORE_SDE_MAY_LACK)


# --- classifiers whose configuration is read from the tensors -----------------------------------

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


def _dm_wrn_notes(checkpoint: Mapping, state: State) -> list[str]:
    if {"mean", "std"} <= state.keys():
        return []
    return ["the file has no input mean/std: the DM WRN normalises with RobustBench's "
            "CIFAR-10 statistics (CIFAR-100's for 100 classes)"]


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


# --- the registry: identification tries these in order ------------------------------------------

FAMILIES: tuple[CheckpointFamily, ...] = (
    CheckpointFamily(
        "guided-diffusion UNet", "diffusion", ("input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight"),
        {"256x256_diffusion_uncond (ImageNet)": lambda s: GuidedDiffusionUNet.imagenet_256_uncond()},
        adapt=as_eps_model,  # learned sigma: the first 3 of its 6 output channels are eps
    ),
    CheckpointFamily(
        "score-SDE DDPM++", "diffusion", ("all_modules.0.weight", "all_modules.2.weight"),
        {"cifar10_ddpmpp_deep_continuous (DiffPure's checkpoint_8.pth)": lambda s: NCSNpp.cifar10_ddpmpp_continuous(deep=True),
         "cifar10_ddpmpp_continuous": lambda s: NCSNpp.cifar10_ddpmpp_continuous(deep=False)},
        may_lack=SCORE_SDE_MAY_LACK, prepare=_score_sde_prepare, notes=_score_sde_notes, adapt=ScoreSDEEps,
    ),
    CheckpointFamily(
        "EDM DDPM++ (SongUNet)", "diffusion", ("model.map_layer0.weight", "model.enc.32x32_conv.weight"),
        {"edm-cifar10-32x32-uncond-vp": lambda s: EDMDenoiser.cifar10_uncond_vp()},
        adapt=EDMDenoiserEps,
    ),
    CheckpointFamily(
        "robustwrap SmallUNet", "diffusion", ("time_mlp.0.weight", "conv_out.weight"),
        {"shipped MNIST DDPM": lambda s: SHIPPED_DIFFUSION["mnist"].build(),
         "small-unet (3 x 32 x 32)": lambda s: SmallUNet(3, base_channels=32, channel_mults=(1, 2, 2), sample_size=32)},
        adapt=as_eps_model,
    ),
    CheckpointFamily(
        "RobustBench WideResNet", "classifier", ("block1.layer.0.bn1.weight", "fc.weight"),
        {"WRN-depth-width (from the tensors)": _robustbench_wrn},
    ),
    CheckpointFamily(
        "RobustBench DM WideResNet", "classifier", ("init_conv.weight", "logits.weight"),
        {"DM WRN-depth-width, Swish (from the tensors)": _dm_wrn},
        notes=_dm_wrn_notes,
    ),
    CheckpointFamily(
        "CIFAR ResNet-18", "classifier", ("layer4.0.conv1.weight", "linear.weight"),
        {"ResNet-18 (pyautoattack's model_test.pt layout)": lambda s: CifarResNet18(s["linear.weight"].shape[0])},
    ),
    CheckpointFamily(
        "ResNet (torchvision / timm)", "classifier", ("layer4.0.conv1.weight", "fc.weight"),
        {"ResNet (depth from the tensors)": _torchvision_resnet},
    ),
    CheckpointFamily(
        "robustwrap SmallResNet", "classifier", ("stem.0.weight", "fc.weight"),
        {"shipped MNIST classifier": lambda s: SHIPPED_CLASSIFIERS["mnist"].build(),
         "small-resnet": lambda s: SmallResNet(s["stem.0.weight"].shape[1], s["fc.weight"].shape[0])},
    ),
)


__all__ = ["CheckpointFamily", "FAMILIES", "CIFAR100_MEAN", "CIFAR100_STD", "SCORE_SDE_MAY_LACK",
           "score_sde_ema_weights", "load_score_sde_checkpoint"]
