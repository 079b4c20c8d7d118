"""The networks the library's wrapper runs over engine runners: the one place bundles become wrappers.

:func:`wrapper_over_runners` builds a :class:`~robustwrap.RobustWrapper` whose classifier and
epsilon model are computed by runners (ONNX Runtime, TensorRT, or Triton BLS calls in the
served Python model): the loop, the noise, the mask and the vote stay the library's own code.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from robustwrap.config import PurifyConfig
from robustwrap.inputs import check_images
from robustwrap.wrapper import RobustWrapper

from ..format import BundleInfo, ComponentSpec
from .runner import Runner


class EngineClassifier(nn.Module):
    """A classifier computed by a runner: ``forward(x) -> logits``, ``stage_maps(x) -> maps``.

    Inference only (no gradient). The wrapper reads the maps through ``stage_maps``
    (:class:`robustwrap.stages.OwnStageMaps`).

    Args:
        runner: ``runner({"images": x}) -> [logits, stage_0, ...]`` for x (N, C, H, W) in [0, 1].
        channels: C, declared so that the wrapper checks its inputs.
    """

    def __init__(self, runner: Runner, channels: int) -> None:
        super().__init__()
        self.runner = runner
        self.in_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, K) logits for (N, C, H, W) images in [0, 1]."""
        return self.runner({"images": x})[0]

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """M stage maps (N, C_m, H_m, W_m) for (N, C, H, W) images in [0, 1]."""
        return list(self.runner({"images": x})[1:])


class EngineEps(nn.Module):
    """An epsilon model computed by a runner: ``forward(x_t, t) -> eps``.

    Args:
        runner: ``runner({"x_t": x_t, "t": t}) -> [eps]`` with x_t (N, C, Hd, Wd), t (N,) float32.
        channels, size: what the graph was exported for (the wrapper reads them).
    """

    size_multiple = 1

    def __init__(self, runner: Runner, channels: int, size: Sequence[int]) -> None:
        super().__init__()
        self.runner = runner
        self.in_channels = channels
        self.sample_size = tuple(size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """(N, C, Hd, Wd) predicted noise."""
        return self.runner({"x_t": x, "t": t.to(torch.float32)})[0]


def resolve_config(info: BundleInfo, config: PurifyConfig | Mapping[str, Any] | None) -> PurifyConfig:
    """The configuration to run: the saved one, a replacement, or the saved one with overrides.

    Overrides are validated as config files are (:meth:`PurifyConfig.from_dict`).

    Raises:
        ValueError: unknown or invalid fields; TypeError: not a config, a mapping or None.
    """
    if config is None:
        return info.config
    if isinstance(config, PurifyConfig):
        return config
    if isinstance(config, Mapping):
        return PurifyConfig.from_dict({**info.config.to_dict(), **dict(config)}, source="the config overrides")
    raise TypeError(f"config must be a PurifyConfig, a mapping of overrides or None, got {type(config).__name__}")


def wrapper_over_runners(info: BundleInfo, classifier: Runner, denoiser: Runner,
                         config: PurifyConfig | Mapping[str, Any] | None = None) -> RobustWrapper:
    """A :class:`RobustWrapper` for the bundle described by ``info`` over two runners.

    Args:
        info: the bundle's validated ``config.json``.
        classifier, denoiser: runners for the two graphs (any engine).
        config: None (the saved configuration), a :class:`PurifyConfig` or a mapping of overrides.
    """
    return RobustWrapper(EngineClassifier(classifier, info.channels),
                         EngineEps(denoiser, info.channels, info.diffusion_size),
                         resolve_config(info, config), normalization=None, image_size=info.image_size,
                         diffusion_size=info.diffusion_size, resize_mode=info.resize_mode)


class UnrolledModel:
    """The unrolled graph (the whole loop, configuration fixed at export) behind a small model.

    Call: ``model(images[, noise]) -> (probabilities (B, K), labels (B,) int64)`` for images
    (B, C, H, W) float in [0, 1]; ``noise`` (B, D, S, C, Hd, Wd) only for an explicit-noise graph.

    Args:
        runner: the graph's runner (any engine).
        spec: the graph's recorded contract.
        channels, image_size: what the graph takes (checked before the call).
    """

    def __init__(self, runner: Runner, spec: ComponentSpec, channels: int, image_size: Sequence[int]) -> None:
        self.runner = runner
        self.spec = spec
        self.channels = channels
        self.image_size = tuple(image_size)

    @property
    def explicit_noise(self) -> bool:
        return self.spec.noise == "explicit"

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        """(B, D, S, C, Hd, Wd) of the ``noise`` input of an explicit-noise graph."""
        if not self.explicit_noise:
            raise ValueError("this graph draws its noise in-graph: it has no noise input")
        return (batch, *self.spec.inputs[1].item_shape)

    def __call__(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_images(images, self.channels, self.image_size)
        feeds = {"images": images}
        if self.explicit_noise != (noise is not None):
            raise ValueError(f"this graph takes explicit noise: pass noise of shape {self.noise_shape(images.shape[0])}"
                             if self.explicit_noise else "this graph draws its noise in-graph: do not pass noise")
        if noise is not None:
            if tuple(noise.shape) != self.noise_shape(images.shape[0]):
                raise ValueError(f"noise must have shape {self.noise_shape(images.shape[0])}, got {tuple(noise.shape)}")
            feeds["noise"] = noise
        probabilities, labels = self.runner(feeds)
        return probabilities, labels

    def predict(self, images: Tensor, noise: Tensor | None = None) -> Tensor:
        """(B,) labels by the vote rule the graph was exported with."""
        return self(images, noise)[1]
