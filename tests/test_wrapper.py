"""RobustWrapper end to end on tiny models: randomness, autograd, votes, sizes, normalisation."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from robustwrap import Noise, PurifyConfig, RobustWrapper, vote_labels
from robustwrap.inputs import IMAGENET_MEAN, Normalize
from robustwrap.nets import SmallUNet

from .tiny import tiny_classifier, tiny_unet, tiny_wrapper


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_output_other_seed_other_output(images):
    wrapper = tiny_wrapper(votes=3)
    with torch.no_grad():
        first = wrapper(images, noise=Noise.stream(_seeded(7)))
        again = wrapper(images, noise=Noise.stream(_seeded(7)))
        other = wrapper(images, noise=Noise.stream(_seeded(8)))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(wrapper.predict(images, noise=Noise.stream(_seeded(7))), wrapper.predict(images, noise=Noise.stream(_seeded(7))))


def test_in_graph_noise_differs_between_calls(images):
    wrapper = tiny_wrapper()
    with torch.no_grad():
        assert not torch.equal(wrapper.purify(images), wrapper.purify(images))


def test_explicit_noise_reproduces_and_has_the_documented_layout(images):
    wrapper = tiny_wrapper(votes=2)
    shape = wrapper.noise_shape(images)
    assert shape == (3, wrapper.plan.noise_draws, 2, 3, 16, 16)  # (B, D, S, C, Hd, Wd)
    noise = torch.randn(shape)
    with torch.no_grad():
        probs = wrapper.vote_probabilities(images, noise=Noise.given(noise))
        # vote s of image b is a purification with noise[b, :, s]
        single = wrapper.purify(images, noise=Noise.given(noise[:, :, 1:2]))
        logits = wrapper.classifier(single)
        alone = wrapper.vote_probabilities(images[2:], noise=Noise.given(noise[2:]))  # batch first: slice it
    torch.testing.assert_close(probs[1], logits.softmax(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, probs[:, 2:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="given noise must have shape"):
        wrapper(images, noise=Noise.given(noise[:-1]))
    with pytest.raises(ValueError, match="given noise must have shape"):
        wrapper.purify(images, noise=Noise.given(noise))  # S = 2 noise for one purification
    with pytest.raises(TypeError, match="Noise.given"):
        wrapper(images, noise=noise)  # a bare tensor is refused, naming the constructor
    with pytest.raises(ValueError, match="floating tensor"):
        Noise.given(noise[0])  # five axes


def test_forward_is_mean_probability_and_differentiable(images):
    wrapper = tiny_wrapper(votes=2)
    x = images.clone().requires_grad_(True)
    probs = wrapper(x, noise=Noise.stream(_seeded(0)))
    assert probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    nn.functional.nll_loss(probs.log(), torch.tensor([0, 1, 2])).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in wrapper.parameters())  # networks are frozen


def test_gradient_flows_through_denoiser_not_only_the_input_re_noising(images):
    """The gradient with the real denoiser must differ from one through a constant denoiser."""
    class ZeroEps(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    grads = []
    for diffusion in (tiny_unet(), ZeroEps()):
        wrapper = RobustWrapper(tiny_classifier(), diffusion, PurifyConfig(steps=10), image_size=16)
        x = images.clone().requires_grad_(True)
        wrapper(x, noise=Noise.stream(_seeded(0)))[:, 0].sum().backward()
        grads.append(x.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_checkpointing_gives_the_same_gradient(images):
    grads = []
    for checkpoint in (False, True):
        wrapper = tiny_wrapper(grad_checkpoint=checkpoint, steps=20)
        x = images.clone().requires_grad_(True)
        wrapper(x, noise=Noise.stream(_seeded(3)))[:, 1].sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_predict_follows_the_vote_rule():
    probs = torch.tensor([[[0.5, 0.45, 0.05]], [[0.5, 0.45, 0.05]], [[0.0, 1.0, 0.0]]])  # S=3 runs, one image
    assert vote_labels(probs, "hard").tolist() == [0]  # two of three votes
    assert vote_labels(probs, "soft").tolist() == [1]  # mean probability 0.63 for class 1
    assert vote_labels(torch.tensor([[[0.1, 0.9]], [[0.8, 0.2]]]), "hard").tolist() == [1]  # tie: mean 0.55 wins


def test_predict_matches_labels_of_vote_probabilities(images):
    wrapper = tiny_wrapper(votes=5, vote="hard")
    noise = torch.randn(wrapper.noise_shape(images))
    probs = wrapper.vote_probabilities(images, noise=Noise.given(noise))
    assert torch.equal(wrapper.predict(images, noise=Noise.given(noise)), vote_labels(probs, "hard"))


def test_resizes_around_the_purifier_when_sizes_differ():
    """Classifier at 16 (input size), diffusion at 32: purify at 32, classify at 16."""
    seen_sizes = []

    class RecordingUNet(nn.Module):
        sample_size = 32

        def __init__(self):
            super().__init__()
            self.inner = tiny_unet(size=32)

        def forward(self, x, t):
            seen_sizes.append(tuple(x.shape[-2:]))
            return self.inner(x, t)

    wrapper = RobustWrapper(tiny_classifier(), RecordingUNet(), PurifyConfig(steps=10), image_size=16)
    x = torch.rand(2, 3, 16, 16)
    assert wrapper.mask(x).shape == (2, 1, 32, 32)
    with torch.no_grad():
        assert wrapper(x).shape == (2, 10)
        assert wrapper.purify(x).shape == (2, 3, 16, 16)
    assert set(seen_sizes) == {(32, 32)}


def test_timm_classifier_gets_its_normalisation_and_runs_at_sizes_other_than_its_declared_one():
    classifier = timm.create_model("resnet18", pretrained=False, num_classes=5)  # declares 224
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=10), diffusion_size=32)
    assert isinstance(wrapper.normalize, Normalize)
    assert tuple(wrapper.normalize.mean.flatten().tolist()) == pytest.approx(IMAGENET_MEAN)
    assert wrapper.image_size is None and wrapper.diffusion_size == (32, 32)
    for size in (32, 64):
        assert wrapper(torch.rand(1, 3, size, size)).shape == (1, 5)
    pinned = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=10), image_size=64, diffusion_size=32)
    with pytest.raises(ValueError, match=r"expected images of size \(64, 64\)"):
        pinned(torch.rand(1, 3, 32, 32))


def test_a_vit_without_dynamic_size_pins_its_size_with_a_message_that_says_what_to_pass():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)
    wrapper = RobustWrapper(vit, tiny_unet(size=32), PurifyConfig(steps=10))
    assert wrapper.image_size == (32, 32)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        RobustWrapper(vit, tiny_unet(size=32), PurifyConfig(steps=10), image_size=64)
    with pytest.raises(ValueError, match=r"expected images of size \(32, 32\)"):
        wrapper(torch.rand(1, 3, 48, 48))


def test_a_unet_size_that_its_downsampling_cannot_take_is_refused_before_compute():
    unet = SmallUNet(3, base_channels=8, channel_mults=(1, 2, 2), sample_size=None)  # sizes divisible by 4
    wrapper = RobustWrapper(tiny_classifier(), unet, PurifyConfig(steps=10))
    assert wrapper(torch.rand(1, 3, 20, 20)).shape == (1, 10)
    with pytest.raises(ValueError, match="divisible by 4.*diffusion_size="):
        wrapper(torch.rand(1, 3, 18, 18))


def test_torchvision_classifier_normalisation_and_override():
    classifier = torchvision.models.resnet18(weights=None, num_classes=4)
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=10))
    assert tuple(wrapper.normalize.mean.flatten().tolist()) == pytest.approx(IMAGENET_MEAN)
    assert isinstance(RobustWrapper(classifier, tiny_unet(), normalization=None).normalize, nn.Identity)
    custom = RobustWrapper(classifier, tiny_unet(), normalization=((0.5,) * 3, (0.25,) * 3))
    assert custom.normalize.std.flatten().tolist() == [0.25] * 3


def test_normalisation_is_applied_before_the_classifier(images):
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            seen.append(x)
            return self.head(self.layer1(x).mean((2, 3)))

    wrapper = RobustWrapper(Recorder(), tiny_unet(), PurifyConfig(steps=10), normalization=((0.5,) * 3, (0.5,) * 3))
    wrapper.mask(images)
    torch.testing.assert_close(seen[-1], images * 2 - 1)


def test_channel_mismatch_between_networks_is_refused():
    with pytest.raises(ValueError, match="3 channels but the diffusion model 1"):
        RobustWrapper(tiny_classifier(3), tiny_unet(1))


def test_train_keeps_the_defense_in_eval_mode():
    wrapper = tiny_wrapper().train()
    assert not wrapper.training and not wrapper.classifier.training and not wrapper.eps_model.training


def test_bfloat16_networks_take_float32_images_and_noise(images):
    wrapper = tiny_wrapper().to(torch.bfloat16)
    with torch.no_grad():
        assert wrapper(images).dtype == torch.bfloat16
        assert wrapper.purify(images, noise=Noise.given(torch.randn(wrapper.noise_shape(images, votes=1)))).shape == images.shape


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_every_resize_mode_works_and_stays_in_range(mode):
    # tiny_unet(size=32) declares sample_size 32: purification runs at 32, the input is 16
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(size=32), PurifyConfig(steps=10), image_size=16, resize_mode=mode)
    with torch.no_grad():
        purified = wrapper.purify(torch.rand(2, 3, 16, 16))
    assert purified.shape == (2, 3, 16, 16) and purified.min() >= 0 and purified.max() <= 1


def test_a_configuration_view_outlives_its_owner(images):
    from dataclasses import replace

    import gc

    view = tiny_wrapper(steps=20).with_config(replace(tiny_wrapper().config, steps=10))
    gc.collect()
    with torch.no_grad():
        assert view(images).shape == (3, 10)  # the owner, and so the hooks, are still alive


def test_stage_outputs_are_captured_only_for_the_mask(images):
    wrapper = tiny_wrapper()
    with torch.no_grad():
        wrapper.classify(images)
        wrapper(images)
    assert wrapper.stages._captured == {}


def test_per_image_seeds_make_an_images_result_independent_of_its_batch(images):
    """Image i's votes depend on seeds[i] alone: alone, in a batch, in another order."""
    wrapper = tiny_wrapper(votes=3)
    batch = torch.cat([images, torch.rand(2, 3, 16, 16)])
    seeds = torch.tensor([11, 12, 13, 14, 15])
    with torch.no_grad():
        together = wrapper.vote_probabilities(batch, noise=Noise.seeded(seeds))
        alone = wrapper.vote_probabilities(batch[1:2], noise=Noise.seeded([12]))
        reordered = wrapper.vote_probabilities(batch.flip(0), noise=Noise.seeded(seeds.flip(0)))
        other = wrapper.vote_probabilities(batch[1:2], noise=Noise.seeded([99]))
    torch.testing.assert_close(together[:, 1:2], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(together, reordered.flip(1), rtol=0, atol=1e-6)
    assert not torch.allclose(together[:, 1:2], other)
    assert torch.equal(wrapper.predict(batch, noise=Noise.seeded(seeds))[1:2], wrapper.predict(batch[1:2], noise=Noise.seeded([12])))


def test_per_image_seed_means_one_generator_per_image_in_plan_order(images):
    """The documented meaning: image i draws randn((S, C, Hd, Wd)) per plan draw from its own generator."""
    wrapper = tiny_wrapper(votes=2)
    seeds = [3, 5, 8]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    draws = torch.stack([torch.stack([torch.randn(2, 3, 16, 16, generator=g) for _ in range(wrapper.plan.noise_draws)])
                         for g in generators])  # (B, D, S, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(wrapper.vote_probabilities(images, noise=Noise.seeded(seeds)),
                                   wrapper.vote_probabilities(images, noise=Noise.given(draws)), rtol=0, atol=0)
        single = tiny_wrapper(votes=1)
        torch.testing.assert_close(single.purify(images, noise=Noise.seeded(seeds)),
                                   single.purify_and_classify(images, noise=Noise.seeded(seeds))[0][0], rtol=0, atol=0)


def test_per_image_seeds_are_validated_before_compute(images):
    wrapper = tiny_wrapper()
    for seeds, error, words in (
        (torch.tensor([1, 2]), ValueError, "for 2 images, but the call has 3"),
        (torch.tensor([[1, 2, 3]]), ValueError, "shape"),
        (torch.tensor([1.0, 2.0, 3.0]), TypeError, "integer"),
        (torch.tensor([True, False, True]), TypeError, "integer"),
        ([1, -2, 3], ValueError, ">= 0"),
        ([1, 2.5, 3], TypeError, "ints"),
    ):
        with pytest.raises(error, match=words):
            wrapper.predict(images, noise=Noise.seeded(seeds))
    with pytest.raises(TypeError, match="torch.Generator"):
        Noise.stream(7)
    with pytest.raises(TypeError, match="unexpected keyword"):
        wrapper(images, seeds=[1, 2, 3])  # the 0.1 keywords are gone: one noise= value


def test_per_image_seeds_keep_gradients_and_mix_seed_is_stable(images):
    from robustwrap.noise import derive_seeds, mix_seed

    wrapper = tiny_wrapper(votes=2)
    x = images.clone().requires_grad_(True)
    wrapper(x, noise=Noise.seeded([1, 2, 3]))[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(2, 1)
    assert 0 <= mix_seed(-5, 2**70) < 2**63
    derived = derive_seeds([4, 5], 7)
    assert derived.dtype == torch.int64 and derived.tolist() == [mix_seed(4, 7), mix_seed(5, 7)]


def test_a_noise_value_is_checked_when_built_and_keeps_its_seeds():
    from robustwrap.noise import Noise

    seeds = torch.tensor([1, 2])
    noise = Noise.seeded(seeds)
    seeds[0] = 99  # the caller's tensor changes; the value does not
    assert noise.seeds.tolist() == [1, 2]
    with pytest.raises(ValueError, match="a seeded Noise holds seeds"):
        Noise("seeded")
    with pytest.raises(ValueError, match="a fresh Noise holds nothing"):
        Noise(tensor=torch.zeros(1, 1, 1, 1, 1, 1))
    with pytest.raises(TypeError, match="floating tensor"):
        Noise.given([1.0])
    assert Noise.fresh() != Noise.fresh()  # no value equality over tensors (identity only)
