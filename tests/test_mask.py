import pytest
import torch

from robustwrap.mask import attention_map, binarize


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
