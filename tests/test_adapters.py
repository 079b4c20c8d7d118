"""Diffusion adapters: every network ends up answering eps(x_t, t) with x_t's shape."""

import pytest
import torch
from torch import nn

from robustwrap import PurifyConfig, DiffusersUNetEps, EDMDenoiserEps, EpsModel, LearnedSigmaEps, RobustWrapper, as_eps_model
from robustwrap.adapters import diffusion_input_spec
from robustwrap.schedule import linear_alphas_cumprod

from .tiny import tiny_classifier


class TwoCOutput(nn.Module):
    """guided-diffusion style: in_channels C, out_channels 2C = [eps, variance]."""

    in_channels, out_channels, image_size = 3, 6, 16

    def forward(self, x, t):
        return torch.cat([x * 0.5, torch.full_like(x, 7.0)], dim=1)


def test_learned_sigma_keeps_the_first_c_channels():
    model = as_eps_model(TwoCOutput())
    assert isinstance(model, LearnedSigmaEps)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x, torch.zeros(2)), x * 0.5)
    assert diffusion_input_spec(model) == (3, (16, 16))


def test_diffusers_unet2d_model():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    model = as_eps_model(unet)
    assert isinstance(model, DiffusersUNetEps)
    assert diffusion_input_spec(model) == (3, (16, 16))
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 100.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), unet(x, t).sample)
        wrapper = RobustWrapper(tiny_classifier(), unet, PurifyConfig(steps=10))
        assert wrapper(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_edm_adapter_recovers_epsilon_from_an_oracle_denoiser():
    abar = linear_alphas_cumprod().float()
    x0, eps = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    t = torch.tensor([50.0, 400.0])
    x_t = abar[t.long()].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t.long()]).sqrt().view(-1, 1, 1, 1) * eps

    class Oracle(nn.Module):
        def forward(self, x, sigma):
            # x = x0 + sigma * eps in EDM's unscaled space: the oracle knows x0
            torch.testing.assert_close(x, x0 + sigma.view(-1, 1, 1, 1) * eps, rtol=1e-4, atol=1e-4)
            return x0

    torch.testing.assert_close(EDMDenoiserEps(Oracle())(x_t, t), eps, rtol=1e-4, atol=1e-4)


def test_plain_modules_and_our_adapters_pass_through():
    inner = nn.Identity()
    assert isinstance(as_eps_model(inner), EpsModel) and as_eps_model(inner).inner is inner
    adapter = LearnedSigmaEps(TwoCOutput())
    assert as_eps_model(adapter) is adapter
