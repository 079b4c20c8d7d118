"""`RobustWrapper`: any image classifier behind mask -> purify -> vote, as one nn.Module."""

from __future__ import annotations

import copy
import logging
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import as_eps_model, diffusion_input_spec
from .config import PurifyConfig
from .hooks import StageHooks, infer_stage_modules
from .inputs import Normalize, check_images, infer_classifier_spec, infer_normalization
from .mask import attention_map, binarize
from .noise import NoiseSource
from .sampler import purify_latent
from .schedule import make_plan
from .vote import vote_labels

logger = logging.getLogger(__name__)

Size = tuple[int, int]
NormalizationArg = Literal["auto"] | None | tuple[Sequence[float], Sequence[float]]


def _as_size(size: int | Sequence[int] | None) -> Size | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class RobustWrapper(nn.Module):
    """A classifier defended by heterogeneous-noise diffusion purification (arXiv 2503.01407).

    ``forward`` takes images in [0, 1] and returns the mean class probabilities over
    ``config.votes`` stochastic purifications; it is differentiable w.r.t. the images (the
    binary mask is held constant, as in the paper), which is what adaptive attacks target.

    Args:
        classifier: ``classifier(x) -> logits (N, K)``; put in eval mode and frozen.
        diffusion: an epsilon model ``eps(x_t, t)`` trained on the linear DDPM schedule, or a
            network :func:`robustwrap.adapters.as_eps_model` recognises (diffusers UNet2DModel,
            learned-sigma UNets). Put in eval mode and frozen.
        config: the defense's settings; see :class:`PurifyConfig`.
        blocks: names of the classifier modules ending each stage; inferred when None.
        normalization: "auto" (timm ``pretrained_cfg``, torchvision -> ImageNet statistics),
            None (the classifier takes [0, 1] images) or an explicit ``(mean, std)``.
        image_size: (H, W) of the input images; defaults to the classifier's declared input
            size, else the diffusion model's, else any size.
        diffusion_size: (H, W) the diffusion model works at; defaults to what it declares,
            else the input size. Images are resized to it for purification and back for
            classification (``resize_mode``, bilinear by default).

    Example:
        >>> wrapper = RobustWrapper(timm.create_model("resnet50", pretrained=True), unet)
        >>> labels = wrapper.predict(images)          # images: (B, 3, 224, 224) in [0, 1]
    """

    def __init__(
        self,
        classifier: nn.Module,
        diffusion: nn.Module,
        config: PurifyConfig | None = None,
        *,
        blocks: Sequence[str] | None = None,
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

        classifier_channels, classifier_size = infer_classifier_spec(classifier)
        diffusion_channels, declared_diffusion_size = diffusion_input_spec(self.eps_model)
        if classifier_channels and diffusion_channels and classifier_channels != diffusion_channels:
            raise ValueError(
                f"the classifier takes {classifier_channels} channels but the diffusion model "
                f"{diffusion_channels}: they must work on the same images"
            )
        self.channels = classifier_channels or diffusion_channels
        self.image_size = _as_size(image_size) or classifier_size or declared_diffusion_size
        self.diffusion_size = _as_size(diffusion_size) or declared_diffusion_size or self.image_size
        self.resize_mode = resize_mode

        if normalization == "auto":
            normalization = infer_normalization(classifier)
        self.normalize: nn.Module = Normalize(*normalization) if normalization is not None else nn.Identity()

        self.blocks = tuple(blocks) if blocks is not None else tuple(infer_stage_modules(classifier))
        self._hooks = StageHooks(classifier, self.blocks)
        self._hooks.capturing = False  # on only inside _attention
        logger.info(
            "RobustWrapper: stages %s, normalization %s, image size %s, diffusion size %s, %d denoiser calls",
            self.blocks, normalization, self.image_size, self.diffusion_size, self.plan.denoiser_calls,
        )

    # --- public API -------------------------------------------------------------------------

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """Mean class probabilities over the S votes.

        Args:
            x: (B, C, H, W) images in [0, 1].
            generator: draw the noise from this generator (reproducible from its seed).
            noise: explicit noise of shape ``self.noise_shape(x)`` = (K, S, B, C, Hd, Wd).

        Returns:
            (B, K) probabilities, differentiable w.r.t. ``x``.
        """
        return self.vote_probabilities(x, generator=generator, noise=noise).mean(dim=0)

    @torch.no_grad()
    def predict(self, x: Tensor, *, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """(B,) int64 labels by the configured vote rule (``config.vote``), without gradient."""
        return vote_labels(self.vote_probabilities(x, generator=generator, noise=noise), self.config.vote)

    def vote_probabilities(
        self, x: Tensor, *, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """(S, B, K) class probabilities of each of the S purifications of each image."""
        return self.purify_and_classify(x, generator=generator, noise=noise)[1]

    def purify_and_classify(
        self, x: Tensor, *, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The whole pipeline, keeping its intermediate result.

        Returns:
            purified: (S, B, C, H, W) purified images in [0, 1] at the input size.
            probs: (S, B, K) class probabilities of each purification.
        """
        x = self._check(x, noise, self.config.votes)
        votes, batch = self.config.votes, x.shape[0]
        if noise is not None:
            noise = noise.flatten(1, 2)  # (K, S, B, ...) -> (K, S * B, ...), vote-major like repeat()
        purified = self._resize(self._purify(x, votes, NoiseSource(generator, noise), mask=None), x.shape[-2:])
        probs = self._classify(purified).softmax(dim=1)
        return purified.view(votes, batch, *x.shape[1:]), probs.view(votes, batch, -1)

    def purify(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """One purification per image.

        Args:
            x: (B, C, H, W) images in [0, 1].
            noise: explicit noise (K, B, C, Hd, Wd), K = ``self.plan.noise_draws``.
            mask: (B, 1, Hd, Wd) mask to use instead of the classifier's (1 = strong noise).

        Returns:
            (B, C, H, W) purified images in [0, 1] at the input size.
        """
        x = self._check(x, noise, None)
        if mask is not None and mask.shape != (x.shape[0], 1, *self.diffusion_size_for(x)):
            raise ValueError(
                f"mask must have shape {(x.shape[0], 1, *self.diffusion_size_for(x))}, got {tuple(mask.shape)}"
            )
        return self._resize(self._purify(x, 1, NoiseSource(generator, noise), mask), x.shape[-2:])

    @torch.no_grad()
    def attention(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) attention map at the diffusion size: in [0, 1] with min-max normalisation,
        a per-image probability map with ``normalization="softmax"``."""
        x = self._check(x, None, None)
        return self._attention(x)

    @torch.no_grad()
    def mask(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) {0, 1} mask of the pixels getting the strong noise (all ones in uniform mode)."""
        x = self._check(x, None, None)
        return self._mask(x)

    def noise_shape(self, x: Tensor, votes: int | None = None) -> tuple[int, ...]:
        """Shape of explicit noise for ``forward`` (K, S, B, C, Hd, Wd); for ``purify`` drop S."""
        votes = self.config.votes if votes is None else votes
        return (self.plan.noise_draws, votes, x.shape[0], x.shape[1], *self.diffusion_size_for(x))

    def diffusion_size_for(self, x: Tensor) -> Size:
        """(Hd, Wd) at which images like ``x`` are purified."""
        return self.diffusion_size or (int(x.shape[-2]), int(x.shape[-1]))

    def classify(self, x: Tensor) -> Tensor:
        """(B, K) logits of the bare classifier on (B, C, H, W) images in [0, 1]: no defense."""
        return self._classify(self._check(x, None, None))

    def with_config(self, config: PurifyConfig) -> "RobustWrapper":
        """The same networks, sizes, normalisation and hooks under another configuration.

        For attacks that take gradients through a cheaper surrogate (fewer steps) while the
        defense is evaluated at its full settings. The view shares this wrapper's hooks:
        ``close()`` on the view leaves them in place; ``close()`` on this wrapper removes them.
        """
        view = copy.copy(self)
        view.__dict__["_modules"] = dict(self._modules)  # own module table, same module objects
        view.__dict__["_owns_hooks"] = False
        view.__dict__["_hook_owner"] = self  # the owner removes the hooks when collected: keep it alive
        view.config = config
        view.plan = make_plan(config)
        return view

    def close(self) -> None:
        """Remove the forward hooks from the classifier (idempotent)."""
        if self.__dict__.get("_owns_hooks", True):
            self._hooks.remove()

    def __del__(self) -> None:
        hooks = self.__dict__.get("_hooks")
        if hooks is not None and self.__dict__.get("_owns_hooks", True):
            hooks.remove()

    def train(self, mode: bool = True) -> "RobustWrapper":
        """The defense always runs its networks in eval mode; ``train()`` changes nothing."""
        return super().train(False)

    # --- pipeline ---------------------------------------------------------------------------

    def _check(self, x: Tensor, noise: Tensor | None, votes: int | None) -> Tensor:
        """Validate the images (outside tracing) and cast them to the networks' dtype."""
        if not _tracing():
            self._check_eagerly(x, noise, votes)
        return x.to(next(self.classifier.parameters(), x).dtype)

    def _check_eagerly(self, x: Tensor, noise: Tensor | None, votes: int | None) -> None:
        check_images(x, self.channels, self.image_size)
        if noise is not None:
            expected = self.noise_shape(x, votes)
            if votes is None:
                expected = expected[:1] + expected[2:]
            if tuple(noise.shape) != expected:
                raise ValueError(f"explicit noise must have shape {expected}, got {tuple(noise.shape)}")

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """Images in [0, 1] to ``size`` with ``resize_mode``, clamped back to [0, 1] (bicubic overshoots)."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        linear = self.resize_mode in ("linear", "bilinear", "bicubic", "trilinear")
        resized = F.interpolate(x, size=tuple(size), mode=self.resize_mode, align_corners=False if linear else None)
        return resized.clamp(0.0, 1.0)

    def _classify(self, x: Tensor) -> Tensor:
        """Logits (N, K) for images in [0, 1] at the input size."""
        return self.classifier(self.normalize(x))

    def _attention(self, x: Tensor) -> Tensor:
        """(B, 1, Hd, Wd) attention map: min-max in [0, 1], or per-image probabilities with softmax."""
        with torch.no_grad():
            activations = self._hooks.capture(self.classifier, self.normalize(x))
        cfg = self.config
        return attention_map(activations, self.diffusion_size_for(x), cfg.p, cfg.p_root, cfg.normalization)

    def _mask(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.mode == "uniform":
            return x.new_ones(x.shape[0], 1, *self.diffusion_size_for(x))
        return binarize(self._attention(x), cfg.mask_rule, cfg.tau, cfg.top_fraction).to(x.dtype)

    def _purify(self, x: Tensor, votes: int, noise: NoiseSource, mask: Tensor | None) -> Tensor:
        """(votes * B, C, Hd, Wd) purified images in [0, 1], vote-major."""
        mask = self._mask(x) if mask is None else mask.to(x.dtype)
        x0 = 2.0 * self._resize(x, self.diffusion_size_for(x)) - 1.0
        if votes > 1:
            x0, mask = x0.repeat(votes, 1, 1, 1), mask.repeat(votes, 1, 1, 1)
        purified = purify_latent(self.eps_model, x0, mask, self.plan, noise, self.config.checkpoint)
        return (purified + 1.0) / 2.0
