import pytest
import torch

import timm

from robustwrap.mask import attention_map, binarize, soft_mask, top_count


def _hand_built_stages():
    """Stage 1 at image size with energy 0..15 (row-major); stage 2 at half size, hot top-left."""
    energy = torch.arange(16.0).view(1, 1, 4, 4)
    # Two channels whose squares add up to the energy, with signs that |.| must undo.
    stage1 = torch.cat([-(energy * 0.5).sqrt(), (energy * 0.5).sqrt()], dim=1)
    stage2 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    return stage1, stage2


def test_single_stage_threshold_marks_the_top_energies():
    stage1, _ = _hand_built_stages()
    mask = binarize(attention_map([stage1], (4, 4)), "threshold", tau=0.9)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 3, 2:] = 1  # energies 14 and 15: 14/15 >= 0.9 > 13/15
    torch.testing.assert_close(mask, expected)


def test_union_over_stages_after_bilinear_upsampling():
    stage1, stage2 = _hand_built_stages()
    attention = attention_map([stage1, stage2], (4, 4))
    # Stage 2 upsampled (align_corners=False): 1 at the corner, 0.75 beside it, 0.5625 diagonally.
    assert attention[0, 0, 0, 0] == 1 and attention[0, 0, 0, 1] == pytest.approx(0.75)
    mask = binarize(attention, "threshold", tau=0.9)
    assert mask.flatten().nonzero().flatten().tolist() == [0, 14, 15]


def test_top_fraction_marks_exactly_k_pixels_per_image():
    stage1, _ = _hand_built_stages()
    mask = binarize(attention_map([stage1], (4, 4)), "top_fraction", top_fraction=0.25)
    assert mask.flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]
    random_maps = torch.rand(5, 1, 10, 10)
    assert binarize(random_maps, "top_fraction", top_fraction=0.15).sum(dim=(1, 2, 3)).tolist() == [15.0] * 5


def test_p_root_and_softmax_options_change_the_map_as_stated():
    stage1, _ = _hand_built_stages()
    rooted = attention_map([stage1], (4, 4), p=2.0, root=True)
    torch.testing.assert_close(rooted.flatten(), torch.arange(16.0).sqrt() / 15.0**0.5)
    soft = attention_map([stage1], (4, 4), normalization="softmax")
    torch.testing.assert_close(soft.flatten(), torch.arange(16.0).softmax(0))


def test_minmax_map_is_in_unit_range_and_per_image():
    activations = [torch.randn(4, 6, 8, 8) * torch.tensor([1.0, 10, 100, 1000]).view(4, 1, 1, 1), torch.randn(4, 3, 4, 4)]
    attention = attention_map(activations, (16, 16))
    assert attention.shape == (4, 1, 16, 16)
    assert torch.all(attention.amax(dim=(1, 2, 3)) == 1) and torch.all(attention.amin(dim=(1, 2, 3)) >= 0)


def test_top_fraction_floors_k_like_the_reference_code():
    # 0.15 * 32 * 32 = 153.6: the paper's code keeps 153 pixels (rounding would keep 154).
    attention = torch.rand(3, 1, 32, 32)
    assert binarize(attention, "top_fraction", top_fraction=0.15).sum(dim=(1, 2, 3)).tolist() == [153.0] * 3
    assert top_count(1024, 0.15) == 153 and top_count(10, 0.01) == 1  # at least one pixel


def test_a_flat_stage_map_marks_no_pixel():
    # ResNet-50's layer4 is 1x1 at 32x32 input: upsampled, its range is float rounding, and
    # min-max normalisation used to stretch that into [0, 1] and mark random pixels.
    informative_stage = torch.zeros(2, 4, 8, 8)
    informative_stage[:, :, 2, 3] = 1.0
    one_by_one = torch.rand(2, 16, 1, 1) * 30
    nearly_flat = 1.0 + 1.2e-7 * torch.arange(16.0).view(1, 1, 4, 4).expand(2, 3, 4, 4)  # float steps near 1
    attention = attention_map([informative_stage, one_by_one, nearly_flat], (32, 32))
    alone = attention_map([informative_stage], (32, 32))
    torch.testing.assert_close(attention, alone)
    mask = binarize(attention, "threshold", tau=0.9)
    assert 0 < mask.sum() < 20 * 2
    assert binarize(attention_map([one_by_one], (32, 32)), "threshold", tau=0.9).sum() == 0


def test_resnet50_at_32_pixels_marks_only_pixels_its_informative_stages_mark():
    model = timm.create_model("resnet50", pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[1, 2, 3, 4], output_fmt="NCHW", intermediates_only=True)
    assert maps[-1].shape[-2:] == (1, 1)
    with_flat = binarize(attention_map(maps, (32, 32)), "threshold", tau=0.9)
    without = binarize(attention_map(maps[:-1], (32, 32)), "threshold", tau=0.9)
    torch.testing.assert_close(with_flat, without)


def test_soft_mask_tends_to_the_binary_mask_and_carries_gradient():
    attention = torch.rand(2, 1, 8, 8, requires_grad=True)
    for rule in ("threshold", "top_fraction"):
        hard = binarize(attention.detach(), rule, tau=0.7, top_fraction=0.25)
        soft = soft_mask(attention, rule, tau=0.7, top_fraction=0.25, temperature=1e-4)
        away_from_cut = (attention.detach() - (0.7 if rule == "threshold" else attention.detach().flatten(1).topk(16, 1).values[:, -1].view(-1, 1, 1, 1))).abs() > 1e-2
        torch.testing.assert_close(soft[away_from_cut], hard[away_from_cut], atol=1e-6, rtol=0)
        (gradient,) = torch.autograd.grad(soft_mask(attention, rule, 0.7, 0.25, 0.1).sum(), attention)
        assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        soft_mask(attention, temperature=0.0)
