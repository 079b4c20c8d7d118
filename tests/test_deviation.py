"""DiffAttack's deviated-reconstruction term: its gradient against an unrolled transcription."""

import math

import pytest
import torch

from robustwrap import Noise
from robustwrap.attacks.deviation import DeviationOptions, deviation
from robustwrap.attacks.pgd import attack_loss
from robustwrap.attacks.targets import DeviationLogits
from robustwrap.evaluation import EvalConfig, attack_batch, image_seeds
from robustwrap.noise import derive_seeds
from robustwrap.vote import log_mean_probability

from .tiny import tiny_wrapper


def _unrolled_deviation(wrapper, x, noise):
    """The chain of docs/algorithm.md unrolled by hand (one copy, eta 0, single-step resampling)
    with explicit noise (D, B, C, H, W), and the deviation of each denoiser input from the input
    diffused with the first draw: stage 1 mask-weighted, weight 1/K per step."""
    plan, draws = wrapper.plan, iter(noise)
    mask = wrapper.mask(x)
    x0 = 2 * x - 1
    abar = plan.abar
    z0 = next(draws)
    state = math.sqrt(abar[plan.t_start]) * x0 + math.sqrt(1 - abar[plan.t_start]) * z0
    terms = []
    for step in plan.steps:
        if step.inpaint:
            renoised = math.sqrt(abar[step.t]) * x0 + math.sqrt(1 - abar[step.t]) * next(draws)
            state = mask * state + (1 - mask) * renoised
            for alpha in step.resample_alphas:
                state = math.sqrt(alpha) * state + math.sqrt(1 - alpha) * next(draws)
        target = math.sqrt(abar[step.t_model]) * x0 + math.sqrt(1 - abar[step.t_model]) * z0
        diff = (mask if step.inpaint else 1.0) * (state - target)
        terms.append(diff.pow(2).flatten(1).mean(1))
        t = torch.full((x.shape[0],), float(step.t_model))
        eps = wrapper.eps_model(state, t)
        a_t, a_s = abar[step.t_model], abar[step.s]
        state = math.sqrt(a_s) * (state - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t) + math.sqrt(1 - a_s) * eps
    assert next(draws, None) is None  # every draw used, in order
    return sum(terms) / len(terms), (state.clamp(-1, 1) + 1) / 2


def test_deviation_gradient_equals_unrolled_autograd_with_all_noise_fixed():
    wrapper = tiny_wrapper(votes=1, resample_steps=2)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    assert any(s.inpaint for s in wrapper.plan.steps) and not all(s.inpaint for s in wrapper.plan.steps)
    assert wrapper.mask(x).mean() < 1  # the mask weighting matters
    noise = torch.randn(wrapper.plan.noise_draws, 2, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    y = torch.tensor([2, 5])

    def ours(point):
        trace = wrapper.purify_trace(point, votes=1, noise=Noise.given(noise.transpose(0, 1)[:, :, None]))  # (B, D, 1, ...)
        logits = wrapper.classify(trace.purified.flatten(0, 1)).view(1, 2, -1)
        return (attack_loss(log_mean_probability(logits), y) + 0.7 * deviation(trace, wrapper.plan)).sum()

    def unrolled(point):
        dev, purified = _unrolled_deviation(wrapper, point, noise)
        return (attack_loss(wrapper.classify(purified).log_softmax(1), y) + 0.7 * dev).sum()

    grads = []
    for fn in (ours, unrolled):
        point = x.clone().requires_grad_(True)
        value = fn(point)
        grads.append((value.detach(), torch.autograd.grad(value, point)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)
    assert grads[0][1].abs().sum() > 0


def test_deviation_view_adds_the_weighted_term_and_changes_the_attack():
    wrapper = tiny_wrapper(votes=2)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    seeds = torch.tensor([1, 2, 3])
    scores, bonus = DeviationLogits(wrapper, 2.0, seeds=seeds)(x)
    trace = wrapper.purify_trace(x, noise=Noise.seeded(derive_seeds(seeds, 0)))  # the view's first call
    torch.testing.assert_close(bonus, 2.0 * deviation(trace, wrapper.plan))
    assert scores.shape == (3, 10) and bool((bonus > 0).all())
    labels = torch.tensor([0, 1, 2])
    cfg = EvalConfig(attack="pgd-eot", iters=2, eot=1, eps=0.1)
    plain = attack_batch(wrapper, x, labels, cfg, seeds=image_seeds(0, range(3))).adversarial
    with_dev = attack_batch(wrapper, x, labels, EvalConfig(attack="pgd-eot", iters=2, eot=1, eps=0.1,
                                                                   options=DeviationOptions(dev_weight=50.0)),
                            seeds=image_seeds(0, range(3))).adversarial
    assert not torch.equal(plain, with_dev)
    vote = attack_batch(wrapper, x, labels, EvalConfig(attack="pgd-vote", iters=1, eot=2, eps=0.1,
                                                                options=DeviationOptions(dev_weight=1.0)),
                        seeds=image_seeds(0, range(3))).adversarial
    assert (vote - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("attack, weight, words", [
    ("bpda", 1.0, "DeviationOptions is the options of"),
    ("pgd-eot", -1.0, "dev_weight must be >= 0"),
    ("pgd-eot", float("nan"), "dev_weight must be a finite number"),
    ("pgd-eot", True, "dev_weight must be a number"),
])
def test_bad_deviation_settings_are_refused(attack, weight, words):
    with pytest.raises(ValueError, match=words):
        EvalConfig(attack=attack, options=DeviationOptions(dev_weight=weight))
