"""Our EDM denoiser has exactly the state-dict layout of edm-cifar10-32x32-uncond-vp.pkl's network.

The recording in tests/data/arch/ was enumerated from NVlabs/edm's training/networks.py and
train.py (--arch=ddpmpp, --precond=edm, augment_dim 9), not from our module. The real
configuration is built on the meta device.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustwrap.adapters import EDMDenoiserEps
from robustwrap.nets import EDMDenoiser, SongUNet
from robustwrap.nets.song_unet import _Conv2d
from robustwrap.checkpoints import load_state_dict

from .recordings import layout, layout_diff, recorded

ROOT = Path(__file__).resolve().parents[1]
EDM_CIFAR10_PARAMS = 55_733_891  # "DDPM++, about 56M" (EDM paper); exact value from the reference layout


def tiny_songunet(augment_dim: int = 9) -> SongUNet:
    torch.manual_seed(5)
    return SongUNet(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), augment_dim=augment_dim, dropout=0.0)


def test_cifar10_uncond_vp_matches_the_recorded_layout():
    with torch.device("meta"):
        denoiser = EDMDenoiser.cifar10_uncond_vp()
    ours = layout(denoiser)
    real = recorded("edm_cifar10_uncond_vp.txt")
    assert ours == real, "state-dict layout differs from EDM's:\n" + layout_diff(ours, real)
    params = sum(p.numel() for p in denoiser.parameters())
    recorded_params = sum(math.prod(s) for k, s in real if not k.endswith("resample_filter"))
    assert params == recorded_params == EDM_CIFAR10_PARAMS
    assert 55e6 < params < 57e6  # "about 56M"
    assert {k for k, _ in real if k.endswith("resample_filter")} == {
        f"model.{side}.{res}_{kind}.{conv}.resample_filter"
        for side, res, kind in (("enc", "16x16", "down"), ("enc", "8x8", "down"), ("dec", "16x16", "up"), ("dec", "32x32", "up"))
        for conv in ("conv0", "skip")
    }


def test_tiny_songunet_forward():
    net = tiny_songunet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor([-0.5, 0.3]), augment_labels=torch.zeros(2, 9))
        same = net(x, torch.tensor([-0.5, 0.3]))  # zero augment labels == none (map_augment has no bias)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, same)


def test_resampling_with_the_1_1_filter_is_average_pool_and_nearest_upsampling():
    x = torch.randn(1, 4, 8, 8)
    down, up = _Conv2d(4, 4, 0, down=True), _Conv2d(4, 4, 0, up=True)
    assert down.resample_filter.shape == (1, 1, 2, 2) and down.weight is None
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


class _Recorder(nn.Module):
    """Stands in for SongUNet: records its inputs and returns a fixed F_x."""

    augment_dim = 9

    def __init__(self) -> None:
        super().__init__()
        self.map_augment = nn.Linear(9, 4, bias=False)
        self.calls: list = []

    def forward(self, x, noise_labels, augment_labels=None):
        self.calls.append((x, noise_labels, augment_labels))
        return torch.full_like(x, 0.25)


def test_edm_preconditioning_coefficients():
    denoiser = EDMDenoiser(_Recorder())  # type: ignore[arg-type]
    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.1, 5.0])
    out = denoiser(x, sigma)
    s = sigma.view(-1, 1, 1, 1)
    fed, noise, augment = denoiser.model.calls[0]
    torch.testing.assert_close(fed, x / (0.25 + s**2).sqrt())
    torch.testing.assert_close(noise, sigma.log() / 4)
    assert augment.shape == (2, 9) and not augment.any()
    torch.testing.assert_close(out, 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * 0.25)
    denoiser(x, 2.0)  # a scalar sigma is broadcast to the batch
    assert denoiser.model.calls[1][1].shape == (2,)


def test_edm_denoiser_eps_returns_epsilon_of_the_input_shape():
    eps_model = EDMDenoiserEps(EDMDenoiser(tiny_songunet()).eval())
    x_t = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        eps = eps_model(x_t, torch.tensor([10.0, 500.0]))
    assert eps.shape == x_t.shape and torch.isfinite(eps).all()


def test_denoiser_state_dict_is_model_prefixed_and_loads_strictly_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = EDMDenoiser(tiny_songunet())
    assert all(key.startswith("model.") for key in source.state_dict())
    path = tmp_path / "edm.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = EDMDenoiser(SongUNet(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0))
    target.load_state_dict(load_state_dict(path), strict=True)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x, sigma), source.eval()(x, sigma))


def test_convert_example_saves_the_ema_state_dict(tmp_path):
    spec = importlib.util.spec_from_file_location("convert_edm", ROOT / "examples" / "convert_edm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = EDMDenoiser(tiny_songunet())
    pkl = tmp_path / "net.pkl"
    with open(pkl, "wb") as f:  # a pickle this test made itself
        pickle.dump({"ema": source, "augment_pipe": None}, f)
    dest = tmp_path / "net.safetensors"
    module.convert(str(pkl), str(dest), opener=lambda p: open(p, "rb"))
    state = load_state_dict(dest)
    assert state.keys() == source.state_dict().keys()
    EDMDenoiser(tiny_songunet()).load_state_dict(state, strict=True)
