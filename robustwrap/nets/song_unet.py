"""NVIDIA EDM's CIFAR-10 denoiser (``edm-cifar10-32x32-uncond-vp.pkl``), loadable from a state dict.

The released pickle holds an ``EDMPrecond`` wrapping a ``SongUNet`` in the DDPM++ configuration
(NVlabs/edm ``train.py --cond=0 --arch=ddpmpp`` with the default ``--precond=edm``,
``--dropout=0.13`` and ``--augment=0.12``, hence ``augment_dim=9``): model_channels 128,
channel_mult (2, 2, 2), num_blocks 4, attention at 16x16, positional noise embedding,
standard encoder and decoder, resample filter [1, 1]. :class:`SongUNet` re-implements only
that subset of ``training/networks.py``, with the same module names, parameters and buffers
(``resample_filter`` of the up/down convolutions), so ``net.state_dict()`` of the pickle's
``EDMPrecond`` (keys ``model.<SongUNet key>``; the preconditioning itself has no parameters
or buffers) loads into :class:`EDMDenoiser` with ``strict=True``.
``examples/convert_edm.py`` makes that state dict once, in a trusted environment.

:class:`EDMDenoiser` is the EDM preconditioning: ``D(x, sigma)`` on unscaled images
x = x0 + sigma n (x0 in [-1, 1]); wrap it in :class:`robustwrap.adapters.EDMDenoiserEps`
for the sampler. 55,733,891 parameters at the CIFAR-10 configuration.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Conv2d(nn.Module):
    """EDM's Conv2d: optional 2x up/down-sampling by the stored ``resample_filter``, then a
    ``kernel``x``kernel`` convolution (none when kernel is 0), 'same' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a convolution cannot both up- and down-sample")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down = up, down
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        if self.weight is not None:
            nn.init.xavier_uniform_(self.weight)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        f = self.resample_filter
        if f is not None:
            f = f.to(x.dtype)
            f_pad = (f.shape[-1] - 1) // 2
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            else:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


def _group_norm(channels: int, eps: float) -> nn.GroupNorm:
    # EDM's GroupNorm: min(32, channels // 4) groups, parameters ``weight`` and ``bias``.
    return nn.GroupNorm(min(32, channels // 4), channels, eps=eps)


class _UNetBlock(nn.Module):
    """EDM's UNetBlock as DDPM++ uses it: one attention head, resample_proj, no adaptive scale,
    skip scale sqrt(1/2), GroupNorm eps 1e-6."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)
        eps = 1e-6
        self.norm0 = _group_norm(in_channels, eps)
        self.conv0 = _Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = nn.Linear(emb_channels, out_channels)
        self.norm1 = _group_norm(out_channels, eps)
        self.conv1 = _Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = _Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
        self.attention = attention
        if attention:
            self.norm2 = _group_norm(out_channels, eps)
            self.qkv = _Conv2d(out_channels, out_channels * 3, 1)
            self.proj = _Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.attention:
            n, c = x.shape[:2]
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, -1).unbind(2)  # one head
            w = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(c)).float()).softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class SongUNet(nn.Module):
    """EDM's DDPM++ network (SongUNet, positional embedding, standard encoder/decoder, unconditional).

    ``forward(x, noise_labels, augment_labels=None)`` -> (N, out_channels, H, W); the defaults
    are the CIFAR-10 configuration.
    """

    def __init__(
        self,
        img_resolution: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        augment_dim: int = 9,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.13,
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.augment_dim = augment_dim
        emb_channels = model_channels * channel_mult_emb
        self.noise_channels = noise_channels = model_channels  # channel_mult_noise = 1
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter)

        # Mapping (map_noise is parameter-free; no map_label: unconditional).
        self.map_augment = nn.Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = nn.Linear(noise_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = _Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = _UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = _UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [module.out_channels for module in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = _UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = _UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = _UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = _UNetBlock(cin, cout, attention=attention, **block)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = _group_norm(cout, 1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = _Conv2d(cout, out_channels, 3)

    def _noise_embedding(self, noise_labels: Tensor) -> Tensor:
        # PositionalEmbedding(endpoint=True, max_positions=10000), then sin/cos swapped as EDM does.
        half = self.noise_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=noise_labels.device) / (half - 1)
        freqs = (1 / 10000) ** freqs
        angles = torch.outer(noise_labels, freqs.to(noise_labels.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: Tensor, noise_labels: Tensor, augment_labels: Tensor | None = None) -> Tensor:
        emb = self._noise_embedding(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, _UNetBlock) else module(x)
            skips.append(x)

        out = None
        for name, module in self.dec.items():
            if name.endswith("aux_norm"):
                out = module(x)
            elif name.endswith("aux_conv"):
                out = module(F.silu(out))
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out


class EDMDenoiser(nn.Module):
    """EDM preconditioning (EDMPrecond) around :class:`SongUNet`: ``forward(x, sigma) -> D(x, sigma)``.

    x is the unscaled noisy image x0 + sigma n with x0 in [-1, 1]; sigma has shape (N,) (a
    scalar is broadcast). With sigma_data = 0.5:
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sd^2 + sigma^2), c_noise = log(sigma) / 4, and the augmentation labels are
    zero (no augmentation), which equals leaving ``map_augment`` out. Computes in float32.
    """

    def __init__(self, model: SongUNet, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data
        # read by the wrapper (diffusion_input_spec); absent on stand-in networks
        self.in_channels = getattr(model, "in_channels", None)
        self.image_size = getattr(model, "img_resolution", None)

    @classmethod
    def cifar10_uncond_vp(cls) -> "EDMDenoiser":
        """The architecture of ``edm-cifar10-32x32-uncond-vp.pkl`` (weights not included)."""
        return cls(SongUNet())

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (sd2 + s**2).sqrt()
        c_noise = sigma.log() / 4
        augment = None
        if self.model.map_augment is not None:
            augment = x.new_zeros(x.shape[0], self.model.augment_dim)
        f_x = self.model(c_in * x, c_noise, augment_labels=augment)
        return c_skip * x + c_out * f_x.to(torch.float32)


__all__ = ["SongUNet", "EDMDenoiser"]
