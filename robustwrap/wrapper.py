"""`RobustWrapper`: any image classifier behind mask -> purify -> vote, as one nn.Module."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import as_eps_model, diffusion_input_spec, diffusion_size_multiple
from .config import PurifyConfig
from .inputs import Normalize, check_images, classifier_fixed_size, infer_classifier_spec, infer_normalization
from .mask import attention_map, binarize
from .network_checks import CheckedDenoiser, check_logits
from .noise import Noise, NoiseSource, as_noise
from .sampler import purify_latent
from .schedule import Step, make_plan
from .stages import StageSource, infer_stage_source
from .vote import log_mean_probability, vote_labels

logger = logging.getLogger(__name__)

Size = tuple[int, int]
NormalizationArg = Literal["auto"] | None | tuple[Sequence[float], Sequence[float]]
StagesArg = Sequence[str] | Sequence[int] | StageSource | None


def _as_size(size: int | Sequence[int] | None) -> Size | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


_FIXED_SIZE_HINT = (
    "resize the images to that size, or create the model for your size "
    "(timm: img_size=..., or dynamic_img_size=True)"
)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@dataclass(frozen=True)
class PurificationTrace:
    """One purification of S copies of B images, with what the reverse chain went through.

    Attributes:
        purified: (S, B, C, H, W) purified images in [0, 1] at the input size.
        x0: (S * B, C, Hd, Wd) the input in diffusion space ([-1, 1]), vote-major.
        mask: (S * B, 1, Hd, Wd) the mask (1 = strong noise).
        first_noise: (S * B, C, Hd, Wd) the noise of the initial forward diffusion (to t_l).
        states: per grid step, the step and the state (S * B, C, Hd, Wd) fed to its denoiser.
    """

    purified: Tensor
    x0: Tensor
    mask: Tensor
    first_noise: Tensor
    states: tuple[tuple[Step, Tensor], ...]


class FirstDraw:
    """A noise source that remembers its first draw (the initial forward diffusion's noise)."""

    def __init__(self, source: NoiseSource) -> None:
        self.source = source
        self.first: Tensor | None = None

    def __call__(self, like: Tensor) -> Tensor:
        draw = self.source(like)
        if self.first is None:
            self.first = draw
        return draw


class RobustWrapper(nn.Module):
    """A classifier defended by heterogeneous-noise diffusion purification (arXiv 2503.01407).

    ``forward`` takes images in [0, 1] and returns the mean class probabilities over
    ``config.votes`` stochastic purifications; it is differentiable w.r.t. the images (the
    binary mask is held constant, as in the paper), which is what adaptive attacks target.
    The algorithm is documented in docs/algorithm.md.

    Args:
        classifier: ``classifier(x) -> logits (N, K)`` over K classes; put in eval mode and frozen.
        diffusion: an epsilon model ``eps(x_t, t)`` trained on the linear DDPM schedule, or a
            network :func:`robustwrap.adapters.as_eps_model` recognises (diffusers UNet2DModel,
            learned-sigma UNets). Put in eval mode and frozen.
        config: the defense's settings; see :class:`PurifyConfig`.
        stages: where the mask's stage maps come from (:mod:`robustwrap.stages`): None to infer
            (timm ``forward_intermediates``; else hooks on each inferred stage's last
            activation), module names to hook, ``forward_intermediates`` indices, or a source.
        normalization: the classifier's input normalisation: "auto" (timm ``pretrained_cfg``,
            torchvision -> ImageNet statistics), None (the classifier takes [0, 1] images) or
            an explicit ``(mean, std)``.
        image_size: (H, W) the input images must have; default: any size the networks take
            (a classifier with a fixed input size, e.g. a ViT without ``dynamic_img_size``,
            pins it).
        diffusion_size: (H, W) the diffusion model works at; defaults to what it declares,
            else the input size. Images are resized to it for purification and back for
            classification (``resize_mode``, bilinear by default).

    Example:
        >>> wrapper = RobustWrapper(timm.create_model("resnet50", pretrained=True), unet)
        >>> labels = wrapper.predict(images)          # images: (B, 3, H, W) in [0, 1]
        >>> labels = wrapper.predict(images, noise=Noise.seeded(seeds))   # reproducible, per image
    """

    deterministic = False  # a Defense (robustwrap.defense) that draws noise: attacks take expectations over it

    def __init__(
        self,
        classifier: nn.Module,
        diffusion: nn.Module,
        config: PurifyConfig | None = None,
        *,
        stages: StagesArg = None,
        normalization: NormalizationArg = "auto",
        image_size: int | Sequence[int] | None = None,
        diffusion_size: int | Sequence[int] | None = None,
        resize_mode: str = "bilinear",
    ) -> None:
        super().__init__()
        self.config = config or PurifyConfig()
        self.classifier = classifier.eval().requires_grad_(False)
        self.eps_model = as_eps_model(diffusion).eval().requires_grad_(False)
        self.plan = make_plan(self.config)

        classifier_channels, _declared = infer_classifier_spec(classifier)  # a declared size is no requirement
        diffusion_channels, declared_diffusion_size = diffusion_input_spec(self.eps_model)
        if classifier_channels and diffusion_channels and classifier_channels != diffusion_channels:
            raise ValueError(
                f"the classifier takes {classifier_channels} channels but the diffusion model "
                f"{diffusion_channels}: they must work on the same images"
            )
        self.channels = classifier_channels or diffusion_channels
        self.fixed_classifier_size = classifier_fixed_size(classifier)
        self.image_size = _as_size(image_size) or self.fixed_classifier_size
        if self.fixed_classifier_size and self.image_size != self.fixed_classifier_size:
            raise ValueError(
                f"{type(classifier).__name__} only takes {self.fixed_classifier_size} images but image_size="
                f"{self.image_size} was asked for: {_FIXED_SIZE_HINT}"
            )
        self.diffusion_size = _as_size(diffusion_size) or declared_diffusion_size
        self.diffusion_multiple = diffusion_size_multiple(self.eps_model)
        self.resize_mode = resize_mode

        if normalization == "auto":
            normalization = infer_normalization(classifier)
        self.normalize: nn.Module = Normalize(*normalization) if normalization is not None else nn.Identity()

        probe = self.image_size or self.diffusion_size
        self.stages: StageSource = infer_stage_source(classifier, stages, probe)
        logger.info(
            "RobustWrapper: stage maps %s, normalization %s, image size %s, diffusion size %s, %d denoiser calls",
            self.stages.describe(), normalization, self.image_size or "any", self.diffusion_size or "the input's",
            self.plan.denoiser_calls,
        )

    # --- public API -------------------------------------------------------------------------

    def forward(self, x: Tensor, *, noise: Noise | None = None) -> Tensor:
        """Mean class probabilities over the S votes.

        Args:
            x: (B, C, H, W) images in [0, 1].
            noise: where the purification noise comes from (:class:`robustwrap.Noise`): None or
                ``Noise.fresh()`` (new draws), ``Noise.seeded(seeds)`` ((B,) per-image seeds: image
                i's result does not depend on the batch it is in), ``Noise.stream(generator)`` (one
                generator for the batch) or ``Noise.given(tensor)`` of shape ``self.noise_shape(x)``
                = (B, D, S, C, Hd, Wd), D = ``self.plan.noise_draws``.

        Returns:
            (B, K) probabilities over the K classes, differentiable w.r.t. ``x``.
        """
        return self.vote_probabilities(x, noise=noise).mean(dim=0)

    @torch.no_grad()
    def predict(self, x: Tensor, *, noise: Noise | None = None) -> Tensor:
        """(B,) int64 labels by the configured vote rule (``config.vote``), without gradient; ``noise`` as in
        :meth:`forward`."""
        return self.decide(self.vote_logits(x, noise=noise))

    def decide(self, vote_logits: Tensor) -> Tensor:
        """(B,) int64 labels from (S, B, K) vote logits by the configured vote rule (``config.vote``)."""
        return vote_labels(vote_logits.softmax(dim=2), self.config.vote)

    def scores(self, x: Tensor, *, noise: Noise | None = None, mask: Tensor | None = None) -> Tensor:
        """(B, K) what an attack differentiates: the log of the mean vote probability, computed stably from the
        vote logits (:func:`robustwrap.vote.log_mean_probability`); ``noise`` and ``mask`` as in :meth:`vote_logits`."""
        return log_mean_probability(self.vote_logits(x, noise=noise, mask=mask))

    def vote_logits(self, x: Tensor, *, noise: Noise | None = None, mask: Tensor | None = None) -> Tensor:
        """(S, B, K) classifier logits of each of the S purifications of each image.

        ``noise`` as in :meth:`forward`; ``mask`` as in :meth:`purify` ((B, 1, Hd, Wd), shared by the
        S purifications; None: the classifier's own)."""
        return self._purify_and_classify(x, noise, mask)[1]

    def vote_probabilities(self, x: Tensor, *, noise: Noise | None = None) -> Tensor:
        """(S, B, K) class probabilities of each of the S purifications of each image; ``noise`` as in
        :meth:`forward`."""
        return self.vote_logits(x, noise=noise).softmax(dim=2)

    def purify_and_classify(self, x: Tensor, *, noise: Noise | None = None) -> tuple[Tensor, Tensor]:
        """The whole pipeline, keeping its intermediate result; ``noise`` as in :meth:`forward`.

        Returns:
            purified: (S, B, C, H, W) purified images in [0, 1] at the input size.
            probs: (S, B, K) class probabilities of each purification.
        """
        purified, logits = self._purify_and_classify(x, noise)
        return purified, logits.softmax(dim=2)

    def purify(self, x: Tensor, *, noise: Noise | None = None, mask: Tensor | None = None) -> Tensor:
        """One purification per image.

        Args:
            x: (B, C, H, W) images in [0, 1].
            noise: as in :meth:`forward`, for one vote: given noise has shape
                ``self.noise_shape(x, votes=1)`` = (B, D, 1, C, Hd, Wd); image i's purification with
                ``Noise.seeded`` equals the single vote of a ``votes=1`` forward with the same seed.
            mask: (B, 1, Hd, Wd) mask in [0, 1] to use instead of the classifier's
                (1 = strong noise); a soft mask may carry gradient.

        Returns:
            (B, C, H, W) purified images in [0, 1] at the input size.
        """
        noise = as_noise(noise)
        x = self.validate(x, noise=noise, votes=1)
        self._check_mask(x, mask)
        return self._resize(self._purify(x, 1, NoiseSource(noise, votes=1), mask), x.shape[-2:])

    def purify_trace(self, x: Tensor, *, votes: int | None = None, noise: Noise | None = None) -> PurificationTrace:
        """The purification with its intermediate states (for DiffAttack's deviation loss).

        Args:
            x: (B, C, H, W) images in [0, 1].
            votes: S copies per image (default ``config.votes``); ``noise`` as in :meth:`forward`
                (given noise: ``self.noise_shape(x, votes)``).

        Returns:
            A :class:`PurificationTrace`; everything in it is differentiable w.r.t. ``x``
            (except the mask, held constant as everywhere).
        """
        votes = self.config.votes if votes is None else votes
        noise = as_noise(noise)
        x = self.validate(x, noise=noise, votes=votes)
        source = FirstDraw(NoiseSource(noise, votes=votes))
        x0, mask = self._diffusion_inputs(x, votes, None)
        states: list[tuple[Step, Tensor]] = []
        latent = purify_latent(self._denoiser(), x0, mask, self.plan, source, self.config.grad_checkpoint,
                               observe=lambda step, state: states.append((step, state)))
        purified = self._resize((latent + 1.0) / 2.0, x.shape[-2:]).view(votes, x.shape[0], *x.shape[1:])
        return PurificationTrace(purified, x0, mask, source.first, tuple(states))

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """The classifier's stage maps on ``x``, the one seam the mask is built on.

        Args:
            x: (B, C, H, W) images in [0, 1] (normalised for the classifier here).

        Returns:
            M tensors (B, C_m, H_m, W_m), one per stage (``self.stages.describe()`` says
            which); differentiable w.r.t. ``x`` when grad is enabled.
        """
        x = self.validate(x)
        return self.stages.capture(self.classifier, self.normalize(x))

    def attention(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) attention map at the diffusion size, from :meth:`stage_maps` by
        :func:`robustwrap.mask.attention_map`: in [0, 1] with min-max normalisation, a per-image
        probability map with ``attention_norm="softmax"``. Differentiable when grad is enabled."""
        cfg = self.config
        size = self.diffusion_size_for(x)
        return attention_map(self.stage_maps(x), size, cfg.p, cfg.p_root, cfg.attention_norm)

    @torch.no_grad()
    def mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) {0, 1} mask of the pixels getting the strong noise (all ones in uniform mode)."""
        return self._mask(self.validate(x))

    def noise_shape(self, x: Tensor, votes: int | None = None) -> tuple[int, ...]:
        """Shape of ``Noise.given`` for images like ``x``: (B, D, S, C, Hd, Wd), D = ``plan.noise_draws``,
        S = ``votes`` (default ``config.votes``; 1 for :meth:`purify`)."""
        votes = self.config.votes if votes is None else votes
        return (x.shape[0], self.plan.noise_draws, votes, x.shape[1], *self.diffusion_size_for(x))

    def diffusion_size_for(self, x: Tensor) -> Size:
        """(Hd, Wd) at which images like ``x`` are purified."""
        return self.diffusion_size or (int(x.shape[-2]), int(x.shape[-1]))

    def classify(self, x: Tensor) -> Tensor:
        """(B, K) logits of the bare classifier on (B, C, H, W) images in [0, 1]: no defense."""
        return self._classify(self.validate(x))

    def validate(self, x: Tensor, *, noise: Noise | None = None, votes: int | None = None) -> Tensor:
        """Check images (and the noise) before any compute; return them in the networks' dtype.

        Skipped while tracing (compile, export), where shapes are symbolic.

        Args:
            x: expected (B, C, H, W) floats in [0, 1], finite, of a size the networks take.
            noise: the call's :class:`Noise`, checked against :meth:`noise_shape` (one seed per image,
                given noise of the right shape).
            votes: the S the noise is for (default ``config.votes``; 1 for :meth:`purify`).

        Raises:
            TypeError, ValueError: naming what was received and what is expected.
        """
        if not _tracing():
            self._check_eagerly(x, None if noise is None else as_noise(noise), self.config.votes if votes is None else votes)
        return x.to(next(self.classifier.parameters(), x).dtype)

    @property
    def calls_per_image(self) -> int:
        """Denoiser calls one decision costs per image: the plan's calls times the S votes."""
        return self.plan.denoiser_calls * self.config.votes

    def with_votes(self, votes: int) -> "RobustWrapper":
        """The same defense purifying ``votes`` copies per image in one batched pass (itself when it already does)."""
        return self if self.config.votes == votes else self.with_config(dataclasses.replace(self.config, votes=votes))

    def with_config(self, config: PurifyConfig) -> "RobustWrapper":
        """The same networks, sizes, normalisation and stage source under another configuration.

        For attacks that take gradients through a cheaper surrogate (fewer steps) while the
        defense is evaluated at its full settings. Nothing is copied or probed again.
        """
        view = RobustWrapper.__new__(RobustWrapper)
        nn.Module.__init__(view)
        view.config, view.plan = config, make_plan(config)
        view.classifier, view.eps_model, view.normalize = self.classifier, self.eps_model, self.normalize
        for name in ("channels", "fixed_classifier_size", "image_size", "diffusion_size", "diffusion_multiple",
                     "resize_mode", "stages"):
            setattr(view, name, getattr(self, name))
        return view

    def train(self, mode: bool = True) -> "RobustWrapper":
        """The defense always runs its networks in eval mode; ``train()`` changes nothing."""
        return super().train(False)

    # --- pipeline ---------------------------------------------------------------------------

    def _check_eagerly(self, x: Tensor, noise: Noise | None, votes: int) -> None:
        if isinstance(x, Tensor):
            self._check_device(x)
        check_images(x, self.channels, self.image_size)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if self.diffusion_size is None and self.diffusion_multiple > 1 and (height % self.diffusion_multiple or width % self.diffusion_multiple):
            raise ValueError(
                f"the diffusion model needs sizes divisible by {self.diffusion_multiple}, got {(height, width)}: "
                f"pass diffusion_size=(H, W) (images are resized to it for purification) or resize the images"
            )
        if noise is not None:
            noise.check(self.noise_shape(x, votes))

    def _check_device(self, x: Tensor) -> None:
        """ValueError when the images are not where the networks' weights are (engine-backed networks, which have
        no weights here, move their inputs themselves) or hold no data (the meta device)."""
        weight = next(itertools.chain(self.classifier.parameters(), self.classifier.buffers(),
                                      self.eps_model.parameters(), self.eps_model.buffers()), None)
        if x.device.type == "meta":
            raise ValueError("the images are on the meta device (shapes only, no values): pass real images")
        if weight is not None and weight.device != x.device:
            raise ValueError(f"the images are on {x.device} but the networks' weights are on {weight.device}: move "
                             f"the images (images.to('{weight.device}')) or the wrapper (wrapper.to('{x.device}'))")

    def _check_mask(self, x: Tensor, mask: Tensor | None) -> None:
        """ValueError unless ``mask`` is None or (B, 1, Hd, Wd) for the validated images ``x``."""
        if mask is not None and mask.shape != (x.shape[0], 1, *self.diffusion_size_for(x)):
            raise ValueError(
                f"mask must have shape {(x.shape[0], 1, *self.diffusion_size_for(x))}, got {tuple(mask.shape)}"
            )

    def _purify_and_classify(self, x: Tensor, noise: Noise | None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(S, B, C, H, W) purified images and (S, B, K) logits (``mask``: None for the classifier's)."""
        noise = as_noise(noise)
        x = self.validate(x, noise=noise)
        self._check_mask(x, mask)
        votes, batch = self.config.votes, x.shape[0]
        purified = self._resize(self._purify(x, votes, NoiseSource(noise, votes=votes), mask=mask), x.shape[-2:])
        logits = self._classify(purified)
        return purified.view(votes, batch, *x.shape[1:]), logits.view(votes, batch, -1)

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """Images in [0, 1] to ``size`` with ``resize_mode``, clamped back to [0, 1] (bicubic overshoots)."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        linear = self.resize_mode in ("linear", "bilinear", "bicubic", "trilinear")
        resized = F.interpolate(x, size=tuple(size), mode=self.resize_mode, align_corners=False if linear else None)
        return resized.clamp(0.0, 1.0)

    def _classify(self, x: Tensor) -> Tensor:
        """Logits (N, K) for images in [0, 1] at the input size (checked: robustwrap.network_checks)."""
        logits = self.classifier(self.normalize(x))
        return logits if _tracing() else check_logits(logits, x.shape[0])

    def _denoiser(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The epsilon model the loop calls: checked in eager runs (robustwrap.network_checks), bare while tracing."""
        return self.eps_model if _tracing() else CheckedDenoiser(self.eps_model)

    def _mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) binary mask, built without gradient on validated images."""
        cfg = self.config
        size = self.diffusion_size_for(x)
        if cfg.mode == "uniform":
            return x.new_ones(x.shape[0], 1, *size)
        with torch.no_grad():
            maps = self.stages.capture(self.classifier, self.normalize(x))
            attention = attention_map(maps, size, cfg.p, cfg.p_root, cfg.attention_norm)
        return binarize(attention, cfg.mask_rule, cfg.tau, cfg.top_fraction).to(x.dtype)

    def _diffusion_inputs(self, x: Tensor, votes: int, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(votes * B, C, Hd, Wd) inputs in [-1, 1] and (votes * B, 1, Hd, Wd) masks, vote-major."""
        mask = self._mask(x) if mask is None else mask.to(x.dtype)
        x0 = 2.0 * self._resize(x, self.diffusion_size_for(x)) - 1.0
        if votes > 1:
            x0, mask = x0.repeat(votes, 1, 1, 1), mask.repeat(votes, 1, 1, 1)
        return x0, mask

    def _purify(self, x: Tensor, votes: int, noise: NoiseSource, mask: Tensor | None) -> Tensor:
        """(votes * B, C, Hd, Wd) purified images in [0, 1], vote-major."""
        x0, mask = self._diffusion_inputs(x, votes, mask)
        purified = purify_latent(self._denoiser(), x0, mask, self.plan, noise, self.config.grad_checkpoint)
        return (purified + 1.0) / 2.0
