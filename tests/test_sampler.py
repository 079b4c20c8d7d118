"""The sampler and mask against the plain reference of DESIGN section 1 (tests/reference.py)."""

import pytest
import torch

from robustwrap import Noise, NoiseSource, PurifyConfig, make_plan, purify_latent
from robustwrap.mask import attention_map, binarize

from .tiny import tiny_classifier, tiny_unet, tiny_wrapper
from .reference import reference_mask, reference_noise_count, reference_purify

CASES = [
    dict(steps=10, t_s=0.1, U=3, resampling="single", eta=0.0),
    dict(steps=50, t_s=0.1, U=3, resampling="single", eta=0.0),
    dict(steps=50, t_s=0.0, U=10, resampling="single", eta=0.0),
    dict(steps=20, t_s=0.1, U=0, resampling="none", eta=0.0),
    dict(steps=20, t_s=0.1, U=2, resampling="repaint", eta=0.0),
    dict(steps=20, t_s=0.05, U=2, resampling="single", eta=0.5),
    dict(steps=10, t_s=0.1, U=2, resampling="repaint", eta=1.0),
]


def _config(case: dict, t_l: float = 0.2) -> PurifyConfig:
    return PurifyConfig(
        t_l=t_l, t_s=case["t_s"], steps=case["steps"], resample_steps=case["U"],
        resampling=case["resampling"], eta=case["eta"],
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_sampler_equals_reference_with_fixed_noise(case):
    plan = make_plan(_config(case))
    assert plan.noise_draws == reference_noise_count(0.2, **case)
    unet = tiny_unet().double()
    x0 = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16) > 0.7).double()
    noise = torch.randn(plan.noise_draws, 2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ours = purify_latent(unet, x0, mask, plan, NoiseSource(Noise.given(noise.transpose(0, 1)[:, :, None])))
    expected = reference_purify(unet, x0, mask, t_l=0.2, noise=list(noise), **case)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)


def test_float32_sampler_stays_close_to_float64_reference():
    case = CASES[1]
    plan = make_plan(_config(case))
    unet = tiny_unet()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    noise = torch.randn(plan.noise_draws, 2, 3, 16, 16)
    with torch.no_grad():
        ours = purify_latent(unet, x0, mask, plan, NoiseSource(Noise.given(noise.transpose(0, 1)[:, :, None])))
    expected = reference_purify(unet, x0, mask, t_l=0.2, noise=list(noise), **case)
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rule", ["threshold", "top_fraction"])
@pytest.mark.parametrize("normalization", ["minmax", "softmax"])
@pytest.mark.parametrize("root", [False, True])
def test_mask_equals_reference(rule, normalization, root):
    activations = [torch.randn(3, 4, 8, 8).double(), torch.randn(3, 6, 4, 4).double(), torch.randn(3, 2, 2, 2).double()]
    tau = 0.6 if normalization == "minmax" else 0.01
    ours = binarize(attention_map(activations, (16, 16), 3.0, root, normalization), rule, tau, 0.2)
    expected = reference_mask(activations, (16, 16), 3.0, root, normalization, rule, tau, 0.2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_wrapper_mask_is_the_reference_mask_of_the_classifier_stages(images):
    wrapper = tiny_wrapper(tau=0.7)
    classifier = tiny_classifier()
    stage_outputs = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(classifier, name).register_forward_hook(lambda m, i, o, name=name: stage_outputs.__setitem__(name, o))
    with torch.no_grad():
        classifier(images)
    expected = reference_mask([stage_outputs[n].double() for n in ("layer1", "layer2", "layer3")], (16, 16), tau=0.7)
    mask = wrapper.mask(images)
    assert 0 < mask.sum() < mask.numel()
    torch.testing.assert_close(mask.double(), expected, rtol=0, atol=0)


def test_uniform_mode_equals_heterogeneous_with_all_ones_mask(images):
    uniform = tiny_wrapper(mode="uniform")
    heterogeneous = tiny_wrapper(mode="heterogeneous")
    noise = torch.randn(uniform.noise_shape(images, votes=1))
    ones = torch.ones(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            uniform.purify(images, noise=Noise.given(noise)), heterogeneous.purify(images, noise=Noise.given(noise), mask=ones), rtol=0, atol=0
        )
        assert not torch.equal(heterogeneous.purify(images, noise=Noise.given(noise)), uniform.purify(images, noise=Noise.given(noise)))
    assert torch.equal(uniform.mask(images), ones)


def test_inpainting_keeps_unattended_pixels_close_to_the_input():
    """With an all-zeros mask, stage 1 re-noises everything from the input: the result must
    sit much nearer the input than a run where everything is attended (t_l noise)."""
    wrapper = tiny_wrapper(t_l=0.6, t_s=0.0, steps=20, resampling="none")
    x = torch.rand(4, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        kept = wrapper.purify(x, mask=torch.zeros(4, 1, 16, 16), noise=Noise.stream(generator))
        attended = wrapper.purify(x, mask=torch.ones(4, 1, 16, 16), noise=Noise.stream(generator))
    assert (kept - x).abs().mean() < 0.5 * (attended - x).abs().mean()
