"""The UNet layout of OpenAI's guided-diffusion ("ADM"), written so that its checkpoints load.

Parameter names, shapes and registration order follow the released checkpoints (for
example ``256x256_diffusion_uncond.pt`` loads with ``strict=True`` into
:meth:`GuidedDiffusionUNet.imagenet_256_uncond`). The network always runs in the dtype of
its parameters (fp32 for us); group normalisation is computed in float32 regardless.

Layout in brief (``C = model_channels``, ``E = 4 C`` the embedding width)::

    time_embed          Linear(C, E), SiLU, Linear(E, E)
    input_blocks.0      3x3 conv in_channels -> mult[0] C
    input_blocks.k      [ResBlock, (Attention)] per res block, then one down-sampling block
                        per level except the last
    middle_block        ResBlock, Attention, ResBlock
    output_blocks.k     [ResBlock on concat(h, skip), (Attention), (up-sampling block)]
    out                 GroupNorm, SiLU, 3x3 conv -> out_channels (zero-initialised)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_GROUPS = 32


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (N, dim), float32, of timesteps (N,) (may be fractional).

    With ``half = dim // 2`` and ``f_i = max_period ** (-i / half)`` for i in [0, half):
    the first half is ``cos(t f_i)``, the second ``sin(t f_i)``; an odd ``dim`` gets a
    trailing zero column.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups evaluated in at least float32, returned in the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(_GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return y.to(x.dtype)


def _zeroed(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class _TimestepModule(nn.Module):
    """Marker base: ``forward(x, emb)`` also takes the timestep embedding (N, E)."""


class _EmbedSequential(nn.ModuleList):
    """Children applied in order; those that are ``_TimestepModule`` also receive ``emb``.

    A ModuleList (not Sequential) so the children keep the checkpoint's ``0``, ``1``, ...
    names while the forward takes two arguments.
    """

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _TimestepModule) else layer(x)
        return x


class _Resample(nn.Module):
    """Factor-2 nearest up-sampling or 2x2 average-pool down-sampling, optionally followed
    (up) or replaced (down) by a learned 3x3 convolution.

    Learned weights live in ``conv`` (up) or ``op`` (down), as in the checkpoints that use
    ``resblock_updown=False``; the parameter-free variants are used inside ResBlocks.
    """

    def __init__(self, channels: int, up: bool, learned: bool) -> None:
        super().__init__()
        self.up = up
        if up:
            if learned:
                self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if learned else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.up:
            return self.op(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        conv = getattr(self, "conv", None)
        return conv(x) if conv is not None else x


class ResBlock(_TimestepModule):
    """Pre-activation residual block conditioned on the timestep embedding.

    ``x`` (N, in_ch, H, W) -> (N, out_ch, H', W') with H' = 2H (``up``), H/2 (``down``)
    or H. With ``scale_shift`` the embedding gives (scale, shift) applied as
    ``norm(h) * (1 + scale) + shift``; otherwise it is added before the norm.
    The last convolution starts at zero, so a fresh block is the identity (or skip).
    """

    def __init__(
        self,
        in_ch: int,
        emb_dim: int,
        out_ch: int | None = None,
        *,
        dropout: float = 0.0,
        scale_shift: bool = True,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.resample: nn.Module | None = _Resample(in_ch, up=up, learned=False) if (up or down) else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zeroed(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_ch == in_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_act, conv_in = self.in_layers[:-1], self.in_layers[-1]
        h = norm_act(x)
        if self.resample is not None:
            # Resample after the activation, before the convolution; the skip path too.
            h, x = self.resample(h), self.resample(x)
        h = conv_in(h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = norm_out(h) * (1 + scale) + shift
        else:
            h = norm_out(h + e)
        return self.skip_connection(x) + rest(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions with a residual connection.

    ``qkv`` is a 1x1 Conv1d to 3C channels laid out head-major ("legacy" order of the
    checkpoints): head j owns rows [3 c j, 3 c (j+1)), split there into q, k, v of c = C /
    heads rows each. ``proj_out`` is zero-initialised. (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, *spatial = x.shape
        flat = x.reshape(n, c, -1)
        length = flat.shape[-1]
        qkv = self.qkv(self.norm(flat)).reshape(n, self.num_heads, 3, c // self.num_heads, length)
        q, k, v = (qkv[:, :, i].transpose(-1, -2) for i in range(3))  # (N, heads, T, c)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        a = a.transpose(-1, -2).reshape(n, c, length)
        return (flat + self.proj_out(a)).reshape(n, c, *spatial)


class GuidedDiffusionUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (unconditional), predicting eps (and variance values).

    ``forward(x, timesteps)``: x is the DDPM state x_t (N, in_channels, H, W) in the
    [-1, 1]-image scale; timesteps (N,) (int or float; a scalar is broadcast) are the
    unscaled steps in [0, num_timesteps) of the 1000-step schedule. Returns
    (N, out_channels, H, W): eps in the first ``in_channels`` channels and, when
    ``learn_sigma``, the variance-interpolation values v in the rest.
    H and W must be divisible by ``2 ** (len(channel_mult) - 1)``.

    Args:
        image_size: training resolution (used to place attention and read by the wrapper).
        in_channels: image channels C.
        model_channels: base width; the timestep embedding has 4x this width.
        out_channels: C (eps only) or 2C (learned sigma).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map side lengths (in pixels, as in the original
            ``--attention_resolutions 32,16,8`` flag), NOT down-sampling factors; level
            ``l`` has side ``image_size / 2**l``. Each entry must be one of those sides.
        dropout: dropout rate inside the ResBlocks.
        channel_mult: width multiplier per level (may be fractional, e.g. 0.5).
        num_heads: heads per attention block, used when ``num_head_channels == -1``.
        num_head_channels: channels per head (overrides ``num_heads`` unless -1).
        use_scale_shift_norm: FiLM-style (scale, shift) conditioning in the ResBlocks.
        resblock_updown: resample with ResBlocks (parameter-free pool / nearest inside);
            otherwise with a strided 3x3 conv (``op``) / nearest + 3x3 conv (``conv``).
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        model_channels: int = 32,
        out_channels: int = 6,
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2),
        num_heads: int = 1,
        num_head_channels: int = 16,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.learn_sigma = out_channels == 2 * in_channels
        self.channel_mult = tuple(channel_mult)
        self.attention_resolutions = tuple(attention_resolutions)

        sides = [image_size // 2**level for level in range(len(channel_mult))]
        unknown = [r for r in self.attention_resolutions if r not in sides]
        if unknown:
            raise ValueError(f"attention_resolutions {unknown} match no level side {sides}")
        attend = set(self.attention_resolutions)

        def heads(ch: int) -> int:
            if num_head_channels == -1:
                return num_heads
            if ch % num_head_channels:
                raise ValueError(f"{ch} channels not divisible by num_head_channels={num_head_channels}")
            return ch // num_head_channels

        emb_dim = 4 * model_channels
        widths = [int(m * model_channels) for m in channel_mult]

        def res(ci: int, co: int | None = None, **kw) -> ResBlock:
            return ResBlock(ci, emb_dim, co, dropout=dropout, scale_shift=use_scale_shift_norm, **kw)

        def resample(ch: int, up: bool) -> nn.Module:
            if resblock_updown:
                return res(ch, up=up, down=not up)
            return _Resample(ch, up=up, learned=True)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        ch = widths[0]
        stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList([_EmbedSequential([stem])])
        skip_widths = [ch]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if sides[level] in attend:
                    layers.append(AttentionBlock(ch, heads(ch)))
                self.input_blocks.append(_EmbedSequential(layers))
                skip_widths.append(ch)
            if level < len(widths) - 1:
                self.input_blocks.append(_EmbedSequential([resample(ch, up=False)]))
                skip_widths.append(ch)

        self.middle_block = _EmbedSequential([res(ch), AttentionBlock(ch, heads(ch)), res(ch)])

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_widths.pop(), widths[level])]
                ch = widths[level]
                if sides[level] in attend:
                    layers.append(AttentionBlock(ch, heads(ch)))
                if level > 0 and i == num_res_blocks:
                    layers.append(resample(ch, up=True))
                self.output_blocks.append(_EmbedSequential(layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    @classmethod
    def imagenet_256_uncond(cls) -> "GuidedDiffusionUNet":
        """The architecture of ``256x256_diffusion_uncond.pt`` (552,814,086 parameters).

        Tip: build under ``with torch.device("meta"):`` and load the checkpoint with
        ``load_state_dict(state, assign=True)`` to avoid a throwaway initialisation.
        """
        return cls(
            image_size=256,
            in_channels=3,
            model_channels=256,
            out_channels=6,
            num_res_blocks=2,
            attention_resolutions=(32, 16, 8),
            dropout=0.0,
            channel_mult=(1, 1, 2, 2, 4, 4),
            num_heads=4,
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=True,
        )

    def forward(self, x: Tensor, timesteps: Tensor | float) -> Tensor:
        """x (N, in_channels, H, W) in [-1, 1] scale, timesteps (N,) or scalar -> (N, out_channels, H, W)."""
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        param_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(param_dtype))
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


__all__ = ["GuidedDiffusionUNet", "timestep_embedding"]
