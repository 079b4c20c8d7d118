"""DiffHammer: the EM step against a transcription of the reference, exact gradient grafting,
and the attack's strength and reproducibility."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from robustwrap import BareClassifier, Noise
from robustwrap.attacks.diffhammer import DiffHammerOptions, diffhammer, em_aggregate, graft, select_copy
from robustwrap.attacks.pgd import attack_loss
from robustwrap.evaluation import EvalConfig, attack_batch, image_seeds
from robustwrap.sanity import sanity_checks

from .tiny import tiny_wrapper


def _reference_em(grads, loss, eps, lam, em_steps, norm):
    """Ka1b0/DiffHammer attacker.py ``seeds_select`` + ``EM`` with n_eot = 1, transcribed in its
    own layout: grads (n_eval, B, d), loss (n_eval, B). Returns (w, em_grad, selected index)."""
    n_eval, batch = loss.shape

    def unit_(x, dim=-1):
        return x.sign() if norm == "inf" else x / x.norm(dim=dim, p=2, keepdim=True)

    eval_grads_a = grads.unsqueeze(0)
    eval_grads_b = torch.transpose(eval_grads_a, 0, 1)
    delta = (unit_(eval_grads_a) * eval_grads_b).sum(-1)
    expected_loss = F.elu(loss.view(-1, 1, batch) + eps * delta).sum(0)
    idxs = expected_loss.topk(k=1, dim=0)[1]
    r = grads[idxs[0], torch.arange(batch), :].unsqueeze(0)
    for _ in range(em_steps):
        expected_loss = loss.view(-1, batch) + (unit_(r) * grads).sum(-1)
        w = torch.sigmoid(lam * expected_loss).view(-1, batch, 1)
        _ = (w * grads).sum(0, keepdim=True) / w.sum(0, keepdim=True)  # the reference assigns r0, never r
    r_grads = grads[idxs, torch.arange(batch), :].unsqueeze(0)
    sub_weight = F.cosine_similarity(grads.unsqueeze(1), r_grads, dim=-1)
    sub_weight = F.softmax(sub_weight, dim=1).transpose(0, 1).unsqueeze(-1)
    sub_weight = 1 * sub_weight * w.unsqueeze(0)
    r = (sub_weight * grads).sum(1) / sub_weight.sum(1)
    return w.squeeze(-1), r[0], idxs[0]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_em_step_equals_the_reference_equations_on_random_inputs(norm):
    generator = torch.Generator().manual_seed(4)
    grads = torch.randn(10, 3, 50, generator=generator, dtype=torch.float64) * 0.05
    losses = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    eps = 8 / 255
    w_ref, r_ref, pick_ref = _reference_em(grads, losses, eps, 5.0, 4, "inf" if norm == "Linf" else 2)
    pick = select_copy(losses, grads, eps, norm)
    assert torch.equal(pick, pick_ref)
    w, r = em_aggregate(losses, grads, grads[pick, torch.arange(3)], lam=5.0, steps=4, norm=norm, reference=True)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r, r_ref, rtol=1e-12, atol=1e-12)
    # as intended, r is updated: more rounds change it; each round is the reference's one weighting from the last r
    w2, r2 = em_aggregate(losses, grads, grads[pick, torch.arange(3)], lam=5.0, steps=2, norm=norm)
    _, once = em_aggregate(losses, grads, grads[pick, torch.arange(3)], lam=5.0, steps=1, norm=norm)
    _, twice = em_aggregate(losses, grads, once, lam=5.0, steps=1, norm=norm)
    torch.testing.assert_close(r2, twice, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(r2, r_ref)


def test_grafting_with_all_weight_on_one_copy_is_that_copys_exact_gradient():
    wrapper = tiny_wrapper(votes=1)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=generator)
    y = torch.tensor([1, 7])
    seeds = torch.tensor([41, 42])
    point = x.clone().requires_grad_(True)
    exact = torch.autograd.grad(attack_loss(wrapper.vote_logits(point, noise=Noise.seeded(seeds))[0], y).sum(), point)[0]
    with torch.no_grad():
        purified = wrapper.purify_and_classify(x, noise=Noise.seeded(seeds))[0][0]
    at = purified.clone().requires_grad_(True)
    g = torch.autograd.grad(attack_loss(wrapper.classify(at), y).sum(), at)[0]
    grafted = graft(wrapper, x, seeds, g)
    torch.testing.assert_close(grafted, exact, rtol=1e-5, atol=1e-7)
    assert exact.abs().sum() > 0
    other = graft(wrapper, x, torch.tensor([43, 44]), g)  # another chain's noise: another gradient
    assert not torch.allclose(other, exact)


def test_diffhammer_lowers_an_undefended_classifier_to_the_pgd_level_and_sanity_flags_a_no_op():
    wrapper = tiny_wrapper()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        labels = wrapper.classify(x).argmax(1)
    cfg = EvalConfig(iters=6, eot=1, eps=0.3, loss="margin")

    def accuracy(attack, config):
        outcome = attack_batch(BareClassifier(wrapper), x, labels, config, attack=attack, seeds=image_seeds(0, range(8)))
        with torch.no_grad():
            return float((wrapper.classify(outcome.adversarial).argmax(1) == labels).float().mean())

    hammer_cfg = cfg.with_attack("diffhammer")
    hammer_cfg = dataclasses.replace(hammer_cfg, options=DiffHammerOptions(em_samples=3))
    pgd, hammer = accuracy("pgd-eot", cfg), accuracy("diffhammer", hammer_cfg)
    assert pgd <= 1 / 8 and hammer <= pgd + 1 / 8
    assert accuracy("diffhammer", dataclasses.replace(hammer_cfg, step_size=1e-6)) == 1.0
    weak = EvalConfig(attack="diffhammer", iters=4, eot=1, eps=0.1, step_size=1e-6,
                      options=DiffHammerOptions(em_samples=2))
    checks = {c.name: c for c in sanity_checks(wrapper, x, labels, weak)}
    assert not checks["attack drives the undefended classifier to <= 5%"].passed
    strong = EvalConfig(attack="diffhammer", iters=4, eot=1, eps=0.5, loss="margin",
                        options=DiffHammerOptions(em_samples=2))
    checks = {c.name: c for c in sanity_checks(wrapper, x, labels, strong)}
    assert checks["attack drives the undefended classifier to <= 5%"].passed


def test_diffhammer_on_the_defense_is_per_image_and_stays_in_the_ball():
    wrapper = tiny_wrapper(votes=2)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        labels = wrapper.classify(x).argmax(1)
    seeds = image_seeds(3, range(4))
    result = diffhammer(wrapper, x, labels, seeds=seeds, eps=0.3, steps=3, samples=3)
    assert (result.adversarial - x).abs().max() <= 0.3 + 1e-6 and not torch.equal(result.adversarial, x)
    assert result.wrong_copies.max() <= 3 and bool((result.broken | (result.wrong_copies == 0)).all())
    alone = diffhammer(wrapper, x[2:3], labels[2:3], seeds=seeds[2:3], eps=0.3, steps=3, samples=3)
    torch.testing.assert_close(alone.adversarial, result.adversarial[2:3], rtol=0, atol=1e-6)
    reference = diffhammer(wrapper, x, labels, seeds=seeds, eps=0.3, steps=3, samples=3, em_reference=True)
    assert reference.adversarial.shape == x.shape
