"""pgd-vote (the DiffBreak protocol) and held-out verdicts: the attack against the deployed vote."""

import json
from dataclasses import replace

import pytest
import torch

from robustwrap import BareClassifier, Noise
from robustwrap.attacks.pgd_vote import pgd_vote, true_margin
from robustwrap.attacks.registry import ATTACKS, describe_attacks
from robustwrap.evaluation import EvalConfig, attack_batch, image_seeds, run_evaluation
from robustwrap.sanity import sanity_checks

from .tiny import tiny_wrapper


def _data(n: int, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=generator)


def _accuracy(wrapper, x, labels, cfg, attack):
    outcome = attack_batch(wrapper, x, labels, cfg, attack=attack, seeds=image_seeds(cfg.seed, range(x.shape[0])))
    with torch.no_grad():
        return float((wrapper.classify(outcome.adversarial).argmax(1) == labels).float().mean()), outcome


def test_registry_names_every_attack_once_with_its_defaults():
    assert list(ATTACKS) == ["none", "pgd-eot", "bpda", "mask-aware", "pgd-vote", "diffhammer", "autoattack"]
    assert ATTACKS["pgd-vote"].default_loss == "margin" and ATTACKS["pgd-eot"].default_loss == "ce"
    assert "pgd-vote" in describe_attacks() and "--eot K" in describe_attacks()
    cfg = EvalConfig(attack="pgd-eot,pgd-vote")
    assert cfg.loss_for("pgd-vote") == "margin" and cfg.loss_for("pgd-eot") == "ce"
    assert cfg.resolved()["losses"] == {"pgd-eot": "ce", "pgd-vote": "margin"}
    assert replace(cfg, loss="dlr").loss_for("pgd-vote") == "dlr"  # --loss overrides every attack's default


def test_pgd_vote_lowers_an_undefended_classifier_to_the_pgd_level():
    """On the bare classifier (right on every image) pgd-vote reaches what PGD reaches."""
    wrapper = tiny_wrapper()
    x = _data(12)
    with torch.no_grad():
        labels = wrapper.classify(x).argmax(1)
    cfg = EvalConfig(iters=6, eot=1, eps=0.3, loss="margin")
    pgd, _ = _accuracy(BareClassifier(wrapper), x, labels, cfg, "pgd-eot")
    vote, outcome = _accuracy(BareClassifier(wrapper), x, labels, cfg, "pgd-vote")
    assert pgd <= 1 / 12 and vote <= pgd  # both break (nearly) all; pgd-vote keeps the best iterate
    assert torch.equal(~outcome.own_correct, wrapper.classify(outcome.adversarial).argmax(1) != labels)
    assert (outcome.adversarial - x).abs().max() <= 0.3 + 1e-6
    weak, _ = _accuracy(BareClassifier(wrapper), x, labels, replace(cfg, step_size=1e-6), "pgd-vote")
    assert weak == 1.0  # a no-op step breaks nothing: the test above can fail


def test_pgd_vote_keeps_the_best_iterate_stops_early_and_stays_in_the_ball():
    wrapper = tiny_wrapper(votes=3)
    x = _data(6)
    with torch.no_grad():
        labels = wrapper.classify(x).argmax(1)
    seeds = image_seeds(1, range(6))
    result = pgd_vote(wrapper, wrapper, x, labels, seeds=seeds, eps=0.5, steps=5, copies=2)
    assert result.adversarial.shape == x.shape and ((result.adversarial - x).abs().max() <= 0.5 + 1e-6)
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert result.broken.dtype == torch.bool and result.steps.max() <= 5
    assert bool((result.steps[result.broken] <= 5).all()) and bool((result.steps[~result.broken] == 5).all())
    assert bool(result.broken.any())  # eps 0.5 breaks some image of a random tiny network
    # batch independence: each image alone gives the same iterate (per-image seeds, early stop per image)
    for i in range(6):
        alone = pgd_vote(wrapper, wrapper, x[i:i + 1], labels[i:i + 1], seeds=seeds[i:i + 1], eps=0.5, steps=5, copies=2)
        torch.testing.assert_close(alone.adversarial, result.adversarial[i:i + 1], rtol=0, atol=1e-6)
        assert bool(alone.broken[0]) == bool(result.broken[i])
    logits = torch.tensor([[[2.0, 1.0, -1.0]], [[0.0, 3.0, 1.0]]])
    assert true_margin(logits, torch.tensor([0])).tolist() == [[1.0], [-3.0]]


def test_sanity_flags_a_pgd_vote_that_does_nothing():
    wrapper = tiny_wrapper()
    x = _data(6)
    with torch.no_grad():
        labels = wrapper.classify(x).argmax(1)
    weak = EvalConfig(attack="pgd-vote", iters=4, eot=1, eps=0.1, step_size=1e-6)
    checks = {c.name: c for c in sanity_checks(wrapper, x, labels, weak)}
    assert not checks["attack drives the undefended classifier to <= 5%"].passed
    assert "pgd-vote" in checks["attack drives the undefended classifier to <= 5%"].detail
    strong = EvalConfig(attack="pgd-vote", iters=4, eot=1, eps=0.5)
    checks = {c.name: c for c in sanity_checks(wrapper, x, labels, strong)}
    assert checks["attack drives the undefended classifier to <= 5%"].passed


def test_verdicts_are_held_out_and_the_attacks_own_count_is_kept_beside_them(tmp_path):
    """A very noisy defense (t_l 0.9, one vote): the attack's own check and the held-out runs use
    different seeds, so they disagree on some images; the report counts both ways."""
    wrapper = tiny_wrapper(t_l=0.6, t_s=0.3, steps=10, votes=1)
    x = _data(16, seed=9)
    fc = wrapper.classifier.fc
    with torch.no_grad():  # a coin-flip defense: classes 3 and 5 tie on average, the others never win
        fc.bias -= wrapper.vote_logits(x, noise=Noise.seeded(list(range(16)))).mean(dim=(0, 1))
        fc.bias[[c for c in range(10) if c not in (3, 5)]] -= 10.0
    labels = torch.full((16,), 5, dtype=torch.int64)
    cfg = EvalConfig(attack="none,pgd-vote", iters=1, eot=1, runs=1, batch_size=16, seed=2)
    report = run_evaluation(wrapper, x, labels, cfg, tmp_path, num_classes=10).to_json()
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[1])
    for attack in ("none", "pgd-vote"):
        own, held = record["own"][attack], record["robust"][attack][0]
        stats = report["robust_accuracy_by_attack"][attack]["attack_own"]
        assert stats["accuracy"] == pytest.approx(sum(own) / 16)
        assert stats["broken_by_attack_but_robust_held_out"] == sum(not o and h for o, h in zip(own, held))
        assert stats["robust_by_attack_but_broken_held_out"] == sum(o and not h for o, h in zip(own, held))
    own, held = record["own"]["none"], record["robust"]["none"][0]
    assert own != held  # the same seeds would give the same verdicts: these are held out
    assert "held out" in report["verdicts"]


def test_cli_runs_the_new_attacks_and_reports_their_settings_and_own_counts(tmp_path):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    data = tmp_path / "data.safetensors"
    save_file({"images": _data(4), "labels": torch.tensor([0, 1, 2, 3])}, str(data))
    result = CliRunner().invoke(app, [
        "eval", "--data", f"tensors:{data}", "--attack", "pgd-vote,diffhammer", "--iters", "1", "--eot", "2",
        "--em-samples", "2", "--em-steps", "2", "--steps", "10", "--batch-size", "2",
        "--classifier", "small-resnet", "--diffusion", "small-unet", "--defenses", "heterogeneous",
        "--n-samples", "0", "--out", str(tmp_path / "r")])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "diffhammer N=2 EM 2 rounds" in output and "attack's own" in output
    report = json.loads((tmp_path / "r" / "heterogeneous" / "report.json").read_text())
    threat = report["threat"]
    assert threat["losses"] == {"pgd-vote": "margin", "diffhammer": "ce"} and threat["options"]["diffhammer"]["em_samples"] == 2
    assert threat["options"]["pgd-vote"] == {"dev_weight": 0.0} and set(report["seconds_by_attack"]) == {"pgd-vote", "diffhammer"}
    for attack in ("pgd-vote", "diffhammer"):
        assert 0 <= report["robust_accuracy_by_attack"][attack]["attack_own"]["accuracy"] <= 1
    refused = CliRunner().invoke(app, ["eval", "--data", f"tensors:{data}", "--attack", "diffhammer", "--dev-weight", "1",
                                       "--out", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "dev_weight is an option of ['pgd-eot', 'pgd-vote']; none of ['diffhammer']" in " ".join(refused.output.split())


@pytest.mark.parametrize("attack", [name for name in ATTACKS if name != "autoattack"])
def test_zero_iterations_leave_the_images_clean_for_every_attack(attack):
    wrapper = tiny_wrapper()
    x = _data(3)
    outcome = attack_batch(wrapper, x, torch.tensor([0, 1, 2]), EvalConfig(attack=attack, iters=0, eot=1), attack=attack)
    assert torch.equal(outcome.adversarial, x) and outcome.own_correct.shape == (3,)
