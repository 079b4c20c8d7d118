"""The score-SDE "DDPM++ continuous" network (``ncsnpp`` with the DDPM++ settings), checkpoint-compatible.

Our own implementation of the subset of score_sde_pytorch's ``NCSNpp`` that the VP-SDE DDPM++
CIFAR-10 models use: positional (sinusoidal) time embedding, BigGAN-style residual blocks with
nearest-neighbour / 2x2-mean resampling (no FIR), skip rescaling by 1/sqrt(2), no progressive
input/output paths, no ``scale_by_sigma``. Module names, registration order and shapes follow
the reference so that the released checkpoints load strictly:

- one flat ``nn.ModuleList`` named ``all_modules``: time MLP (two ``Linear``), input conv,
  down path, middle (res, attention, res), up path, output ``GroupNorm`` + conv;
- residual blocks hold ``GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Dropout_0, Conv_1`` and a
  1x1 ``Conv_2`` skip when the width changes or the block resamples;
- attention blocks hold ``GroupNorm_0`` and four ``NIN_i`` (1x1 maps stored as ``W`` of shape
  (C_in, C_out) and ``b``);
- a persistent float64 buffer ``sigmas`` (the SMLD noise ladder, shape (num_scales,)) that the
  reference registers; it does not affect the output of these VP models.

Which checkpoint: DiffPure's CIFAR-10 model is score_sde's ``vp/cifar10_ddpmpp_deep_continuous``
``checkpoint_8.pth`` (``num_res_blocks=8``, 106,632,579 parameters). The non-deep
``vp/cifar10_ddpmpp_continuous`` config differs only by ``num_res_blocks=4`` (61,804,419).

Time and scale conventions (from score_sde's ``get_score_fn`` / ``get_sde_loss_fn``): the
VP-SDE continuous model is called as ``net(x, 999 * t)`` with ``t`` in (0, 1], where
``x = alpha(t) x0 + sigma(t) z`` and ``x0`` is data already mapped to [-1, 1] (the configs set
``data.centered = True``, so the network applies no rescaling of its own). The score is
``-net(x, 999 t) / sigma(t)`` and training minimises ``|score * sigma + z|^2``, so the raw
network output is the noise ``z``: an epsilon prediction.

This module is the network only. The sampler's ``eps(x_t, t)`` call is
``robustwrap.adapters.ScoreSDEEps`` (with the DDPM step to VP time mapping), and training
checkpoints (EMA weights, ``module.`` prefixes) are read by ``robustwrap.families``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _uniform_fan_avg_(weight: Tensor, fan_in: int, fan_out: int, scale: float) -> None:
    """DDPM-style initialisation: U(-a, a) with variance scale / mean(fan_in, fan_out); scale 0 -> 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    _uniform_fan_avg_(conv.weight, in_ch * kernel * kernel, out_ch * kernel * kernel, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    _uniform_fan_avg_(layer.weight, in_features, out_features, 1.0)
    nn.init.zeros_(layer.bias)
    return layer


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def sinusoidal_embedding(labels: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Embedding (N, dim) float32 of labels (N,): ``[sin(l * f_k), cos(l * f_k)]``.

    Frequencies ``f_k = max_period ** (-k / (dim/2 - 1))`` for k = 0 .. dim/2 - 1 (the last one
    is exactly 1/max_period); sines first, then cosines; a zero column is appended for odd dim.
    """
    half = dim // 2
    exponent = torch.arange(half, device=labels.device, dtype=torch.float32) / (half - 1)
    angles = labels.float()[:, None] * torch.exp(-math.log(max_period) * exponent)[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _NIN(nn.Module):
    """Per-pixel linear map: ``y[:, u] = sum_c x[:, c] W[c, u] + b[u]`` with W (C_in, C_out)."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_ch, out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))
        _uniform_fan_avg_(self.W, out_ch, in_ch, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("nchw,cu->nuhw", x, self.W) + self.b[None, :, None, None]


class _AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual and rescaled by 1/sqrt(2)."""

    def __init__(self, channels: int, init_scale: float, skip_rescale: bool) -> None:
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = _NIN(channels, channels)
        self.NIN_1 = _NIN(channels, channels)
        self.NIN_2 = _NIN(channels, channels)
        self.NIN_3 = _NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        normed = self.GroupNorm_0(x)
        q = self.NIN_0(normed).flatten(2)  # (N, C, HW)
        k = self.NIN_1(normed).flatten(2)
        v = self.NIN_2(normed).flatten(2)
        weights = torch.softmax(torch.einsum("ncp,ncq->npq", q, k) * c**-0.5, dim=-1)
        attended = torch.einsum("npq,ncq->ncp", weights, v).reshape(n, c, height, width)
        out = x + self.NIN_3(attended)
        return out * _SQRT_HALF if self.skip_rescale else out


class _ResBlock(nn.Module):
    """BigGAN-style residual block conditioned on the time embedding; optional 2x up/down.

    Resampling (no FIR): nearest-neighbour 2x upsampling or 2x2 mean pooling, applied to both
    the residual branch (after the first norm + activation) and the skip branch.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None,
        temb_dim: int,
        dropout: float,
        init_scale: float,
        skip_rescale: bool,
        resample: Literal["up", "down"] | None = None,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _group_norm(in_ch)
        self.Conv_0 = _conv(in_ch, out_ch, 3)
        self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, 3, init_scale=init_scale)
        self.Conv_2 = _conv(in_ch, out_ch, 1) if (in_ch != out_ch or resample is not None) else None
        self.resample = resample
        self.skip_rescale = skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        skip = self._resample(x)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.Conv_2 is not None:
            skip = self.Conv_2(skip)
        out = skip + h
        return out * _SQRT_HALF if self.skip_rescale else out


class NCSNpp(nn.Module):
    """DDPM++ score network: ``forward(x, labels) -> eps_hat`` of x's shape (N, C, H, W).

    Args:
        in_channels: image channels C (input and output).
        image_size: the square training resolution H = W; inputs must have exactly this size.
        nf: base width; level i has ``nf * ch_mult[i]`` channels, the time MLP has 4 * nf.
        ch_mult: width multipliers, one per resolution level (each level after the first halves H, W).
        num_res_blocks: residual blocks per level on the way down (one more per level going up).
        attn_resolutions: spatial sizes (e.g. 16) at which self-attention follows each block.
        dropout: dropout inside residual blocks (inactive in eval mode).
        centered: True (all score_sde VP configs) means x is already in the [-1, 1] data space;
            False makes the network map [0, 1] input with ``2 x - 1`` first.
        skip_rescale: divide every residual sum by sqrt(2).
        init_scale: initial scale of the last conv in each block / attention output (0 -> 1e-10).
        sigma_min, sigma_max, num_scales: define the stored ``sigmas`` buffer (reference layout only).

    Attributes ``in_channels``, ``out_channels`` and ``image_size`` describe the interface.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 8,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        centered: bool = True,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
    ) -> None:
        super().__init__()
        levels = len(ch_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2 ** {levels - 1}")
        if nf % 2:
            raise ValueError(f"nf must be even, got {nf}")
        self.in_channels = self.out_channels = in_channels
        self.image_size = image_size
        self.nf = nf
        self.num_res_blocks = num_res_blocks
        self.centered = centered
        self.register_buffer(
            "sigmas",
            torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64)),
        )
        resolutions = [image_size // 2**i for i in range(levels)]
        self._attn_levels = tuple(r in tuple(attn_resolutions) for r in resolutions)

        temb_dim = 4 * nf

        def res(in_ch: int, out_ch: int | None = None, resample: Literal["up", "down"] | None = None) -> _ResBlock:
            return _ResBlock(in_ch, out_ch, temb_dim, dropout, init_scale, skip_rescale, resample)

        def attn(channels: int) -> _AttnBlock:
            return _AttnBlock(channels, init_scale, skip_rescale)

        modules: list[nn.Module] = [_linear(nf, temb_dim), _linear(temb_dim, temb_dim), _conv(in_channels, nf, 3)]
        skip_widths = [nf]
        width = nf
        for level in range(levels):
            for _ in range(num_res_blocks):
                modules.append(res(width, nf * ch_mult[level]))
                width = nf * ch_mult[level]
                if self._attn_levels[level]:
                    modules.append(attn(width))
                skip_widths.append(width)
            if level != levels - 1:
                modules.append(res(width, resample="down"))
                skip_widths.append(width)
        modules += [res(width), attn(width), res(width)]
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                modules.append(res(width + skip_widths.pop(), nf * ch_mult[level]))
                width = nf * ch_mult[level]
            if self._attn_levels[level]:
                modules.append(attn(width))
            if level != 0:
                modules.append(res(width, resample="up"))
        modules += [_group_norm(width), _conv(width, in_channels, 3, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(modules)
        self._levels = levels

    @classmethod
    def cifar10_ddpmpp_continuous(cls, *, deep: bool = True) -> NCSNpp:
        """score_sde's CIFAR-10 DDPM++ continuous VP network (3 x 32 x 32, nf 128, ch_mult 1-2-2-2).

        ``deep=True`` (default) is ``vp/cifar10_ddpmpp_deep_continuous``: 8 blocks per level,
        106,632,579 parameters, the ``checkpoint_8.pth`` DiffPure loads. ``deep=False`` is
        ``vp/cifar10_ddpmpp_continuous``: 4 blocks per level, 61,804,419 parameters.
        """
        return cls(num_res_blocks=8 if deep else 4)

    @classmethod
    def tiny(cls) -> NCSNpp:
        """A small network with every block type (attention at 16 x 16), for tests: 3 x 32 x 32."""
        return cls(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Predicted noise (N, C, H, W) for noisy images x and time labels.

        Args:
            x: (N, C, image_size, image_size). With ``centered=True`` (the released configs)
                this is the VP-SDE state ``alpha(t) x0 + sigma(t) z`` for data x0 in [-1, 1];
                with ``centered=False``, data in [0, 1] that the network maps by ``2 x - 1``.
            labels: float (N,) = 999 * t for continuous time t in (0, 1] (0 = least noise).
        """
        if x.shape[-2:] != (self.image_size, self.image_size) or x.shape[1] != self.in_channels:
            raise ValueError(
                f"NCSNpp expects (N, {self.in_channels}, {self.image_size}, {self.image_size}) input, "
                f"got {tuple(x.shape)}"
            )
        modules = iter(self.all_modules)
        time_in, time_out = next(modules), next(modules)
        temb = sinusoidal_embedding(labels.reshape(-1).expand(x.shape[0]), self.nf).to(time_in.weight.dtype)
        temb = time_out(F.silu(time_in(temb)))
        if not self.centered:
            x = 2.0 * x - 1.0

        skips = [next(modules)(x)]
        for level in range(self._levels):
            for _ in range(self.num_res_blocks):
                h = next(modules)(skips[-1], temb)
                if self._attn_levels[level]:
                    h = next(modules)(h)
                skips.append(h)
            if level != self._levels - 1:
                skips.append(next(modules)(skips[-1], temb))

        h = next(modules)(skips[-1], temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)

        for level in reversed(range(self._levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, skips.pop()], dim=1), temb)
            if self._attn_levels[level]:
                h = next(modules)(h)
            if level != 0:
                h = next(modules)(h, temb)

        norm_out, conv_out = next(modules), next(modules)
        return conv_out(F.silu(norm_out(h)))


__all__ = ["NCSNpp", "sinusoidal_embedding"]
