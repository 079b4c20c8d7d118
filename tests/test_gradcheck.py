"""The gradient checks of --sanity: autograd vs float64 finite differences, surrogate cosine."""

import dataclasses

import torch
from torch import nn

from robustwrap import Noise
from robustwrap.evaluation import EvalConfig
from robustwrap.gradcheck import finite_difference_check, float64_copy, surrogate_cosine
from robustwrap.sanity import gradient_checks

from .tiny import tiny_wrapper


class DetachedDenoiser(nn.Module):
    """A broken backward: the denoiser's output carries no gradient (what a careless adapter does)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x, t).detach()


def _batch():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    return x, torch.tensor([3, 4]), torch.tensor([10, 11])


def test_the_true_gradient_matches_float64_central_differences():
    wrapper = tiny_wrapper(votes=2)
    x, y, seeds = _batch()
    result = finite_difference_check(wrapper, x, y, seeds, loss="margin")
    assert result.max_relative_error < 1e-5 and len(result.analytic) == 3
    assert all(abs(a) > 0 for a in result.analytic)
    assert next(wrapper.parameters()).dtype == torch.float32  # the check works on a copy


def test_a_broken_backward_is_caught():
    wrapper = tiny_wrapper(votes=1)
    wrapper.eps_model = DetachedDenoiser(wrapper.eps_model)
    x, y, seeds = _batch()
    result = finite_difference_check(wrapper, x, y, seeds)
    assert result.max_relative_error > 1e-2
    checks = gradient_checks(wrapper, x, y, EvalConfig(iters=1, eot=1), "pgd-eot")
    assert not checks[0].passed and "relative error" in checks[0].detail


def test_surrogate_cosine_is_one_for_the_same_chain_and_reported_in_sanity():
    wrapper = tiny_wrapper(votes=1)
    x, y, seeds = _batch()
    same = wrapper.with_config(wrapper.config)
    torch.testing.assert_close(surrogate_cosine(wrapper, same, x, y, seeds), torch.ones(2), rtol=0, atol=1e-5)
    cheap = wrapper.with_config(dataclasses.replace(wrapper.config, steps=5))
    assert bool((surrogate_cosine(wrapper, cheap, x, y, seeds) < 0.9999).all())
    checks = gradient_checks(wrapper, x, y, EvalConfig(iters=1, eot=1, surrogate_steps=5), "pgd-eot")
    assert [c.name.split(" (")[0] for c in checks] == ["gradient matches float64 finite differences",
                                                       "surrogate gradient aligned with the exact one"]
    assert "5-step surrogate" in checks[1].detail and "mean" in checks[1].detail


def test_the_float64_copy_runs_the_deployed_mask_even_at_tau_one():
    # tau = 1.0 (the shipped heterogeneous calibration) marks each map's maximum in float32 only: the
    # official min-max normalisation leaves it just below 1.0 in float64. The check fixes the mask.
    wrapper = tiny_wrapper(tau=1.0)
    x, labels, seeds = _batch()
    deployed = wrapper.mask(x)
    copy64 = float64_copy(wrapper)
    assert deployed.sum() > 0 and copy64.mask(x.double()).sum() == 0
    with torch.no_grad():
        ours = wrapper.vote_logits(x, noise=Noise.seeded(seeds))
        fixed = copy64.vote_logits(x.double(), noise=Noise.seeded(seeds), mask=deployed.double())
        own = copy64.vote_logits(x.double(), noise=Noise.seeded(seeds))
    torch.testing.assert_close(fixed.float(), ours, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(own.float(), ours, rtol=1e-4, atol=1e-4)
    assert finite_difference_check(wrapper, x, labels, seeds).max_relative_error < 1e-4
