"""Attacks on the defended pipeline: they work, their gradients are what they claim."""

import pytest
import torch
from torch import nn

from robustwrap import BareClassifier, Noise, PurifyConfig, RobustWrapper
from robustwrap.attacks import BPDALogits, DefenseLogits, MaskAwareLogits, autoattack, eot_gradient, pgd_eot

from .tiny import tiny_classifier, tiny_unet, tiny_wrapper


def _own_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("norm, eps", [("Linf", 0.3), ("L2", 6.0)])
def test_pgd_drives_an_undefended_model_to_zero(norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    x = torch.rand(16, 3, 16, 16)
    y = _own_labels(model, x)  # clean accuracy 100% by construction
    x_adv = pgd_eot(model, x, y, eps=eps, norm=norm, steps=20, step_size=eps / 8, eot=1)
    assert (_own_labels(model, x_adv) == y).float().mean() <= 0.1
    delta = (x_adv - x).flatten(1)
    bound = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert bound.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_eot_gradient_is_the_average_of_per_sample_gradients():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(12, 3)

        def forward(self, x):
            return self.linear((x + 0.3 * torch.randn_like(x)).flatten(1))

    model, x, y = Noisy(), torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(5)
    averaged = eot_gradient(model, x, y, samples=4)
    torch.manual_seed(5)
    manual = []
    for _ in range(4):
        point = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(point), y, reduction="sum").backward()
        manual.append(point.grad)
    torch.testing.assert_close(averaged, torch.stack(manual).mean(0))
    torch.manual_seed(6)
    assert not torch.allclose(eot_gradient(model, x, y, samples=1), averaged)  # it is stochastic


def test_full_gradient_target_is_the_defense(images):
    wrapper = tiny_wrapper(votes=2)
    torch.manual_seed(1)
    logits = DefenseLogits(wrapper)(images)
    torch.manual_seed(1)
    torch.testing.assert_close(logits.exp(), wrapper(images))
    assert torch.isfinite(eot_gradient(DefenseLogits(wrapper), images, torch.zeros(3, dtype=torch.long), 1)).all()


def test_bpda_forward_is_the_defense_and_backward_the_classifier_at_the_purified_image(images):
    wrapper = tiny_wrapper()
    torch.manual_seed(2)
    bpda = BPDALogits(wrapper)(images)
    torch.manual_seed(2)
    torch.testing.assert_close(bpda.exp(), wrapper(images), rtol=1e-5, atol=1e-6)

    torch.manual_seed(3)
    x = images.clone().requires_grad_(True)
    BPDALogits(wrapper)(x)[:, 4].sum().backward()
    torch.manual_seed(3)
    with torch.no_grad():
        purified = wrapper.purify_and_classify(images)[0][0].requires_grad_(True)
    wrapper.classify(purified).softmax(1).clamp_min(1e-12).log()[:, 4].sum().backward()
    torch.testing.assert_close(x.grad, purified.grad)


def test_mask_aware_attack_differentiates_through_the_mask(images):
    wrapper = tiny_wrapper(tau=0.6)
    target = MaskAwareLogits(wrapper, temperature=0.05)
    x = images.clone().requires_grad_(True)
    soft = target.soft_mask(x)
    hard = wrapper.mask(images)
    assert ((soft > 0.5).float() == hard).float().mean() > 0.99  # the relaxation of the same mask
    soft.sum().backward()
    assert x.grad.abs().sum() > 0  # the gradient reaches the input through the classifier's stages
    assert target(images).shape == (3, 10)
    with pytest.raises(ValueError, match="temperature"):
        MaskAwareLogits(wrapper, temperature=0)


def test_surrogate_view_shares_networks_and_runs_cheaper(images):
    from dataclasses import replace

    wrapper = tiny_wrapper(steps=50)
    surrogate = wrapper.with_config(replace(wrapper.config, steps=10))
    assert surrogate.plan.denoiser_calls < wrapper.plan.denoiser_calls
    assert surrogate.classifier is wrapper.classifier and surrogate.eps_model is wrapper.eps_model
    y = torch.zeros(3, dtype=torch.long)
    x_adv = pgd_eot(DefenseLogits(surrogate), images, y, eps=8 / 255, steps=2, eot=1)
    assert (x_adv - images).abs().max() <= 8 / 255 + 1e-6


def test_autoattack_adapter_runs_on_the_defense():
    pytest.importorskip("pyautoattack")
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(steps=5), image_size=16)
    x = torch.rand(4, 3, 16, 16)
    y = _own_labels(DefenseLogits(BareClassifier(wrapper)), x)
    x_adv = autoattack(DefenseLogits(wrapper), x, y, eps=8 / 255, version="rand", iterations=2, eot=1, batch_size=4)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 8 / 255 + 1e-5
    standard = autoattack(DefenseLogits(BareClassifier(wrapper)), x, y, eps=0.3, version="standard", iterations=5,
                          batch_size=4)
    assert (_own_labels(DefenseLogits(BareClassifier(wrapper)), standard) == y).float().mean() <= 0.25


def test_bad_attack_settings_are_refused():
    model, x, y = DefenseLogits(BareClassifier(tiny_wrapper())), torch.rand(1, 3, 16, 16), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="norm"):
        pgd_eot(model, x, y, eps=0.1, norm="L1")
    with pytest.raises(ValueError, match="eps >= 0"):
        pgd_eot(model, x, y, eps=-0.1)


class _Confident(nn.Module):
    """A classifier whose class-0 logit leads by ~40: its softmax rounds to exactly 1 in float32."""

    def __init__(self):
        super().__init__()
        self.base = tiny_classifier()

    def forward(self, x):
        logits = self.base(x)
        return logits + 40.0 * nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10)


@pytest.mark.parametrize("target", [DefenseLogits, BPDALogits, MaskAwareLogits])
def test_confident_classifiers_still_give_a_finite_non_zero_input_gradient(target, images):
    wrapper = RobustWrapper(_Confident(), tiny_unet(), PurifyConfig(steps=10, votes=2, tau=0.6))
    x = images.clone().requires_grad_(True)
    model = target(wrapper, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (wrapper(images)[:, 0] == 1.0).all()  # the case that used to have a zero gradient
    loss = nn.functional.cross_entropy(model(x), torch.zeros(3, dtype=torch.long), reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_targets_are_reproducible_from_their_generator_and_leave_the_global_rng_alone(images):
    wrapper = tiny_wrapper(votes=2)
    state = torch.random.get_rng_state()
    first = DefenseLogits(wrapper, generator=torch.Generator().manual_seed(5))(images)
    second = DefenseLogits(wrapper, generator=torch.Generator().manual_seed(5))(images)
    torch.testing.assert_close(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_mask_aware_gradient_reaches_the_input_through_the_mask_alone(images):
    wrapper = tiny_wrapper(tau=0.6)
    target = MaskAwareLogits(wrapper, temperature=0.05, generator=torch.Generator().manual_seed(0))
    x = images.clone().requires_grad_(True)
    noise = torch.randn(wrapper.noise_shape(images, votes=1),
                        generator=torch.Generator().manual_seed(1))
    # Purify a fixed image under the soft mask of x: any gradient on x comes through the mask.
    purified = wrapper.purify(images, mask=target.soft_mask(x), noise=Noise.given(noise))
    (gradient,) = torch.autograd.grad(wrapper.classify(purified).log_softmax(1)[:, 3].sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
