"""Adapters that give every diffusion model the one call the sampler makes: ``eps(x_t, t)``.

The sampler passes x_t (N, C, H, W) in the DDPM's scaled space and t as a float tensor (N,)
of integer timesteps in [0, 999] of the linear schedule. Each adapter overrides ``forward``
only, owning the foreign network as ``self.inner``. Every adapter of the library lives here;
the networks in :mod:`robustwrap.nets` know nothing of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .schedule import linear_alphas_cumprod


class EpsModel(nn.Module):
    """A module already predicting epsilon: ``inner(x_t, t) -> (N, C, H, W)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.inner(x, t)


class LearnedSigmaEps(EpsModel):
    """guided-diffusion-style output (N, 2C, H, W) = [eps, variance values]: keep the first C."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.inner(x, t)[:, : x.shape[1]]


class DiffusersUNetEps(EpsModel):
    """diffusers ``UNet2DModel``: returns ``.sample``, keeping the first C channels (learned sigma)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.inner(x, t).sample[:, : x.shape[1]]


class EDMDenoiserEps(EpsModel):
    """An EDM-style denoiser ``D(x, sigma) -> x0_hat`` on unscaled images x = x0 + sigma n.

    With the DDPM state ``x_t = sqrt(abar_t) (x0 + sigma_t n)``, ``sigma_t = sqrt(1/abar_t - 1)``,
    so ``eps = (x_t / sqrt(abar_t) - D(x_t / sqrt(abar_t), sigma_t)) / sigma_t``.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__(inner)
        self.register_buffer("abar", linear_alphas_cumprod().float(), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        abar = self.abar.to(x.device)[t.long()].view(-1, 1, 1, 1)
        sigma = (1.0 / abar - 1.0).sqrt()
        x_unscaled = x / abar.sqrt()
        return (x_unscaled - self.inner(x_unscaled, sigma.flatten())) / sigma


def ddpm_step_to_vp_time(
    steps: Tensor | None = None,
    *,
    mapping: Literal["alpha_bar", "diffpure"] = "alpha_bar",
    beta_min: float = 0.1,
    beta_max: float = 20.0,
) -> Tensor:
    """Continuous VP time t (float64) for DDPM linear-schedule steps n (default: all n = 0..999).

    The VP SDE with beta(t) = beta_min + t (beta_max - beta_min) has
    ``abar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2)``; its N = 1000 discretisation
    is exactly the DDPM linear schedule (betas 1e-4 .. 2e-2).

    - ``"alpha_bar"``: the t with ``abar(t)`` equal to the discrete ``abar_n`` (root of the
      quadratic), clamped to [0, 1], so the network sees the noise level x_t really has.
    - ``"diffpure"``: ``t = (n + 1) / 1000``, DiffPure's convention (noise to ``abar[n]``, then
      integrate the reverse SDE from ``t = (n + 1) / 1000``).

    The two differ by at most 0.0034 in t (3.4 label units, largest at n = 999 where the
    matched t would be 1.0034 before clamping); ``(n + 1) / 1000`` misstates sigma by up to 4.9%
    (at n = 0) and alpha by up to 3.4% (at n = 999).
    """
    abar = linear_alphas_cumprod()
    n = torch.arange(abar.numel(), dtype=torch.float64) if steps is None else steps.to(torch.float64)
    if mapping == "diffpure":
        return (n + 1.0) / abar.numel()
    if mapping != "alpha_bar":
        raise ValueError(f"mapping must be 'alpha_bar' or 'diffpure', got {mapping!r}")
    log_abar = torch.log(abar)[n.long()]
    slope = beta_max - beta_min
    t = (torch.sqrt(beta_min**2 - 2.0 * slope * log_abar) - beta_min) / slope
    return t.clamp(0.0, 1.0)


class ScoreSDEEps(EpsModel):
    """A score_sde VP continuous network (e.g. :class:`~robustwrap.nets.NCSNpp`) ``net(x, 999 t_vp)``.

    ``forward(x_t, t)``: x_t (N, C, H, W) in the DDPM scaled space (``sqrt(abar_t) x0 +
    sqrt(1 - abar_t) eps`` with x0 in [-1, 1], which is also the VP-SDE state the network was
    trained on), t float (N,) of integer timesteps in [0, 999] of the linear schedule. Returns
    the network output unchanged (it is epsilon), after mapping each step n to the label
    ``999 * t_vp(n)`` (see :func:`ddpm_step_to_vp_time` for the two mappings).
    """

    def __init__(self, inner: nn.Module, mapping: Literal["alpha_bar", "diffpure"] = "alpha_bar") -> None:
        super().__init__(inner)
        self.mapping = mapping
        labels = 999.0 * ddpm_step_to_vp_time(mapping=mapping)
        self.register_buffer("labels", labels.float(), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        labels = self.labels.to(x.device)[t.reshape(-1).long()]
        return self.inner(x, labels.expand(x.shape[0]))


def _is_diffusers_unet(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.startswith("diffusers.") and cls.__name__ == "UNet2DModel"


def as_eps_model(diffusion: nn.Module) -> EpsModel:
    """Wrap a diffusion network so that ``model(x_t, t)`` returns epsilon of x_t's shape.

    Recognises our adapters (returned as they are), diffusers ``UNet2DModel`` and networks
    declaring ``learn_sigma=True`` or ``out_channels == 2 * in_channels`` (guided-diffusion).
    Anything else is taken to predict epsilon directly; wrap it yourself otherwise
    (e.g. ``EDMDenoiserEps(net)``).
    """
    if isinstance(diffusion, EpsModel):
        return diffusion
    if _is_diffusers_unet(diffusion):
        return DiffusersUNetEps(diffusion)
    in_ch, out_ch = getattr(diffusion, "in_channels", None), getattr(diffusion, "out_channels", None)
    if getattr(diffusion, "learn_sigma", False) or (in_ch and out_ch and out_ch == 2 * in_ch):
        return LearnedSigmaEps(diffusion)
    return EpsModel(diffusion)


def diffusion_input_spec(diffusion: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (H, W)) the diffusion network declares, or None where it says nothing.

    Reads ``in_channels`` and ``sample_size`` / ``image_size`` from the network or its
    diffusers ``config``.
    """
    net = diffusion.inner if isinstance(diffusion, EpsModel) else diffusion
    config = getattr(net, "config", None)
    sources = ([config] if config is not None else []) + [net]

    def read(*names: str):
        for source in sources:
            for name in names:
                value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                if value is not None:
                    return value
        return None

    channels = read("in_channels")
    size = read("sample_size", "image_size")
    if isinstance(size, int):
        size = (size, size)
    return (int(channels) if channels else None), (tuple(size) if size else None)  # type: ignore[return-value]


def diffusion_size_multiple(diffusion: nn.Module) -> int:
    """The factor the diffusion network's input size must be divisible by (1 when unknown).

    A UNet halves the resolution at each level but the last: 2 ** (levels - 1). Read from
    ``size_multiple`` if the network declares it, ``channel_mults`` (our UNets) or a diffusers
    config's ``down_block_types``.
    """
    net = diffusion.inner if isinstance(diffusion, EpsModel) else diffusion
    declared = getattr(net, "size_multiple", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    mults = getattr(net, "channel_mults", None)
    config = getattr(net, "config", None)
    blocks = config.get("down_block_types") if isinstance(config, dict) else getattr(config, "down_block_types", None)
    levels = len(mults) if isinstance(mults, (list, tuple)) else len(blocks) if isinstance(blocks, (list, tuple)) else 1
    return 2 ** max(levels - 1, 0)


__all__ = [
    "EpsModel",
    "LearnedSigmaEps",
    "DiffusersUNetEps",
    "EDMDenoiserEps",
    "ScoreSDEEps",
    "ddpm_step_to_vp_time",
    "as_eps_model",
    "diffusion_input_spec",
    "diffusion_size_multiple",
]
