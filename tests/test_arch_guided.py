"""GuidedDiffusionUNet against the recorded layout of guided-diffusion's 256x256_diffusion_uncond.pt.

The recorded list (tests/data/arch/guided_diffusion_256_uncond.txt) was enumerated from the
reference source's control flow, independently of our module; the total 552,814,086 is the
publicly quoted parameter count of that checkpoint (x 4 bytes fits its 2,211,383,297-byte file).
"""

from __future__ import annotations

import math

import pytest
import torch

from robustwrap.adapters import LearnedSigmaEps, as_eps_model
from robustwrap.nets.guided_unet import AttentionBlock, GuidedDiffusionUNet, timestep_embedding

from .recordings import layout, layout_diff, recorded, recorded_meta_state

RECORDING = "guided_diffusion_256_uncond.txt"
REAL_TOTAL = 552_814_086
TINY = dict(
    image_size=32,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(16,),
    num_head_channels=16,
)


@pytest.fixture(scope="module")
def real_net() -> GuidedDiffusionUNet:
    with torch.device("meta"):
        return GuidedDiffusionUNet.imagenet_256_uncond()


def test_recorded_list_is_self_consistent() -> None:
    rows = recorded(RECORDING)
    assert len(rows) == len({name for name, _ in rows}) == 566
    assert sum(math.prod(shape) for _, shape in rows) == REAL_TOTAL


def test_real_config_state_dict_matches_checkpoint_layout(real_net: GuidedDiffusionUNet) -> None:
    ours, expected = layout(real_net), recorded(RECORDING)
    if sorted(ours) != sorted(expected):
        pytest.fail("state dict differs from the recorded checkpoint layout:\n" + layout_diff(ours, expected))
    assert ours == expected  # same registration order too (not needed for loading, but exact)
    assert sum(p.numel() for p in real_net.parameters()) == REAL_TOTAL
    assert not list(real_net.buffers())


def test_real_config_loads_recorded_state_dict_strictly(real_net: GuidedDiffusionUNet) -> None:
    state = recorded_meta_state(RECORDING)
    result = real_net.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_real_config_attributes(real_net: GuidedDiffusionUNet) -> None:
    assert (real_net.in_channels, real_net.out_channels, real_net.image_size) == (3, 6, 256)
    assert real_net.learn_sigma
    heads = {m.num_heads for m in real_net.modules() if isinstance(m, AttentionBlock)}
    assert heads == {8, 16}  # 64 channels per head; attention sits at widths 512 (32px) and 1024


def test_tiny_forward_shape_finite_and_eps_adapter() -> None:
    torch.manual_seed(0)
    net = GuidedDiffusionUNet(**TINY).eval()
    for p in net.parameters():  # undo the zero init so the output is not trivially 0
        torch.nn.init.normal_(p, std=0.05)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.tensor([0.0, 999.0])
    with torch.no_grad():
        out = net(x, t)
        assert out.shape == (2, 6, 32, 32)
        assert torch.isfinite(out).all() and out.abs().sum() > 0
        assert torch.equal(net(x, t.long()), out)
        assert torch.equal(net(x, 0.0)[:1], out[:1])  # scalar timestep broadcast
        eps_model = as_eps_model(net)
        assert isinstance(eps_model, LearnedSigmaEps)
        eps = eps_model(x, t)
    assert eps.shape == (2, 3, 32, 32)
    assert torch.equal(eps, out[:, :3])
    assert any(isinstance(m, AttentionBlock) for m in net.input_blocks.modules())


def test_fresh_network_outputs_zero() -> None:
    net = GuidedDiffusionUNet(**TINY)
    with torch.no_grad():
        assert torch.count_nonzero(net(torch.randn(1, 3, 32, 32), torch.tensor([5]))) == 0


def test_conv_resampling_variant_names() -> None:
    net = GuidedDiffusionUNet(**TINY, resblock_updown=False)
    names = set(net.state_dict())
    assert {"input_blocks.2.0.op.weight", "output_blocks.1.2.conv.weight"} <= names
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.tensor([1])).shape == (1, 6, 32, 32)


def test_timestep_embedding_hand_computed() -> None:
    # dim 8: half 4, frequencies 10000 ** (-i / 4) = 1, 0.1, 0.01, 0.001; cos block then sin block.
    emb = timestep_embedding(torch.tensor([3]), 8)
    angles = [3.0, 0.3, 0.03, 0.003]
    expected = torch.tensor([[math.cos(a) for a in angles] + [math.sin(a) for a in angles]])
    torch.testing.assert_close(emb, expected, rtol=1e-6, atol=1e-6)
    assert timestep_embedding(torch.tensor([0.0]), 5).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]


def test_attention_uses_legacy_head_major_qkv_layout() -> None:
    torch.manual_seed(0)
    c, heads, ch = 64, 2, 32
    block = AttentionBlock(c, heads)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, c, 3, 3)
    with torch.no_grad():
        out = block(x)
        flat = x.reshape(1, c, -1)
        qkv = block.qkv(block.norm(flat))[0]  # (3C, T): head j owns rows [3 ch j, 3 ch (j + 1))
        per_head = []
        for j in range(heads):
            q, k, v = qkv[3 * ch * j : 3 * ch * (j + 1)].split(ch)
            weights = torch.softmax(q.T @ k / math.sqrt(ch), dim=-1)  # (T, T)
            per_head.append(v @ weights.T)  # (ch, T)
        expected = flat + block.proj_out(torch.cat(per_head)[None])
    torch.testing.assert_close(out, expected.reshape(1, c, 3, 3), rtol=1e-5, atol=1e-5)


def test_attention_resolutions_are_checked() -> None:
    with pytest.raises(ValueError, match="attention_resolutions"):
        GuidedDiffusionUNet(**{**TINY, "attention_resolutions": (8,)})


def test_exported_from_nets_package() -> None:
    import robustwrap.nets as nets

    assert nets.GuidedDiffusionUNet is GuidedDiffusionUNet
    assert "GuidedDiffusionUNet" in nets.__all__
