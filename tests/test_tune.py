"""`robustwrap tune`: the sweep, its choice, its files, resumption and the CLI."""

import json
from dataclasses import replace

import pytest
import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.evaluation import EvalConfig
from robustwrap.tune import TUNE_ATTACK, Candidate, Point, TuneSettings, choose, pareto_front, steps_for_calls, tune

from .tiny import tiny_classifier, tiny_unet


def _point(name_level: float, clean: float, robust: float) -> Point:
    return Point(Candidate("uniform", name_level), None, 10, clean, 100, robust, 32)


def test_steps_give_the_requested_denoiser_budget():
    assert steps_for_calls(PurifyConfig(t_l=0.2), 10) == 50
    for t_l in (0.1, 0.3, 0.45, 0.6):
        from robustwrap.schedule import make_plan

        config = PurifyConfig(t_l=t_l, t_s=t_l / 2)
        assert make_plan(replace(config, steps=steps_for_calls(config, 10))).denoiser_calls == 10


def test_choice_is_the_most_robust_point_above_the_clean_floor_else_the_cleanest():
    points = [_point(0.1, 0.99, 0.05), _point(0.2, 0.97, 0.20), _point(0.3, 0.90, 0.40), _point(0.4, 0.97, 0.20)]
    chosen, meets = choose(points, clean_floor=0.95)
    assert meets and chosen is points[1]  # ties on robust go to the first of equal clean
    chosen, meets = choose(points, clean_floor=0.995)
    assert not meets and chosen is points[0]
    assert [p.candidate.t_l for p in pareto_front(points)] == [0.3, 0.2, 0.4, 0.1]  # equal points both stay


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 16, 16, generator=generator)
    with torch.no_grad():
        labels = tiny_classifier()(images).argmax(1)  # the undefended classifier is right on all of them
    return images, labels


ATTACK = replace(TUNE_ATTACK, iters=1, eot=1, eps=8 / 255, batch_size=8)
SMALL = dict(calls=2, uniform_levels=(0.2,), heterogeneous_levels=(0.2,), cuts=(0.8,), n_attack=8, evaluation=ATTACK)


@pytest.mark.slow
def test_tune_writes_table_plot_and_a_config_the_chosen_point_reproduces(tmp_path, data):
    images, labels = data
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig())
    seen = []
    result = tune(wrapper, images, labels, tmp_path / "sweep", TuneSettings(**SMALL), num_classes=10,
                  on_progress=lambda done, planned, name: seen.append((done, planned, name)))
    names = {p.candidate.name for p in result.points}
    assert {"uniform-t0.200", "heterogeneous-t0.200-cut0.800"} <= names
    assert len(names) > 2  # the refinement added neighbours
    assert seen[-1][0] == seen[-1][1] == len(names) + 1  # + the undefended baseline
    assert result.baseline.clean == 1.0 and result.baseline.n_clean == 24 and result.baseline.n_robust == 8
    assert all(p.calls == 2 for p in result.points)
    out = tmp_path / "sweep"
    assert PurifyConfig.load(out / "best.json") == result.config
    assert (out / "frontier.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    assert "(chosen)" in table and "stratified subset of 8 images" in table and "Wilson 95% interval" in table
    assert "% [" in table  # each accuracy with its interval
    summary = json.loads((out / "points.json").read_text())
    assert summary["chosen"] == result.chosen.candidate.name
    # Each family's own choice: the same rule over its members only, at the same budget.
    for family in ("uniform", "heterogeneous"):
        point, meets = result.by_family[family]
        members = [p for p in result.points if p.candidate.family == family]
        assert (point, meets) == choose(members, result.clean_floor)
        assert PurifyConfig.load(out / f"best-{family}.json") == point.config and point.config.mode == family
        assert summary["chosen_by_family"][family]["name"] == point.candidate.name
        assert f"config in best-{family}.json" in table
    assert result.chosen in [point for point, _ in result.by_family.values()]

    # Resume: nothing is recomputed (the results files do not grow) and the choice is the same.
    sizes = {path: path.stat().st_size for path in out.rglob("results.jsonl")}
    again = tune(wrapper, images, labels, out, TuneSettings(**SMALL), num_classes=10, resume=True)
    assert {path: path.stat().st_size for path in out.rglob("results.jsonl")} == sizes
    assert again.chosen.candidate == result.chosen.candidate
    with pytest.raises(FileExistsError, match="resume"):
        tune(wrapper, images, labels, out, TuneSettings(**SMALL), num_classes=10)
    with pytest.raises(ValueError, match="other settings"):
        tune(wrapper, images, labels, out, TuneSettings(**{**SMALL, "evaluation": replace(ATTACK, iters=2)}), num_classes=10, resume=True)


def test_n_clean_scores_clean_accuracy_on_a_stratified_subset_and_records_it(tmp_path, data):
    from robustwrap.data import draw_subset

    images, labels = data
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig())
    settings = TuneSettings(calls=2, uniform_levels=(0.2,), families=("uniform",), refine=False, n_attack=2,
                            n_clean=6, evaluation=replace(ATTACK, iters=0, batch_size=4))
    out = tmp_path / "sweep"
    result = tune(wrapper, images, labels, out, settings, num_classes=10)
    indices, subset = draw_subset(labels, 6, ATTACK.seed)
    assert result.baseline.n_clean == 6 and all(p.n_clean == 6 for p in result.points)
    assert result.baseline.n_robust == 2 and result.n_images == 24
    for name in ("none", "uniform-t0.200"):
        report = json.loads((out / name / "clean" / "report.json").read_text())
        assert report["subset"]["indices"] == indices.tolist() and report["subset"]["seed"] == ATTACK.seed
        assert report["n_samples"] == 6 and report["subset"]["rule"].startswith("stratified")
    header = json.loads((out / "tune.json").read_text())
    assert header["tune"]["n_clean"] == 6
    assert header["clean_subset"] == {k: v for k, v in subset.items() if k != "indices"}
    assert "clean accuracy on a seeded stratified subset of 6 of 24 images (seed 0)" in (out / "table.md").read_text()
    with pytest.raises(ValueError, match="other settings"):  # n_clean is part of the sweep's settings
        tune(wrapper, images, labels, out, replace(settings, n_clean=8), num_classes=10, resume=True)
    every = tune(wrapper, images, labels, tmp_path / "all", replace(settings, n_clean=24), num_classes=10)
    assert every.baseline.n_clean == 24 and every.baseline.clean == 1.0  # n_clean = N: every image
    with pytest.raises(ValueError, match="n_clean is 25 but the data holds 24 images"):
        tune(wrapper, images, labels, tmp_path / "big", replace(settings, n_clean=25), num_classes=10)
    assert not (tmp_path / "big").exists()


def test_cli_tune_refuses_a_bad_n_clean_in_one_line(tmp_path, data, monkeypatch):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from robustwrap.cli import common
    from robustwrap.cli.app import app

    monkeypatch.setattr(common.console, "width", 100_000)  # one message, one line
    images, labels = data
    save_file({"images": images, "labels": labels}, str(tmp_path / "data.safetensors"))
    command = ["tune", "--data", f"tensors:{tmp_path / 'data.safetensors'}", "--classifier", "small-resnet",
               "--diffusion", "small-unet", "--calls", "2", "--n-attack", "2", "--iters", "1",
               "--out", str(tmp_path / "tune")]
    for value, message in (("0", "n_clean must be >= 1"), ("25", "n_clean is 25 but the data holds 24 images"),
                           ("-3", "n_clean must be >= 1")):
        result = CliRunner().invoke(app, [*command, "--n-clean", value])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "tune").exists()


def test_bad_tune_settings_are_refused():
    for bad in (dict(min_clean=0.0), dict(families=("bogus",)), dict(evaluation=EvalConfig(attack="autoattack")), dict(calls=0),
                dict(n_clean=0), dict(n_clean=2.5), dict(evaluation="pgd-eot"),
                dict(uniform_levels=(1.5,))):
        with pytest.raises(ValueError, match="invalid tune settings"):
            TuneSettings(**bad)


@pytest.mark.slow
def test_cli_tune_then_eval_with_its_config_reproduces_the_chosen_point(tmp_path, data):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    images, labels = data
    save_file({"images": images, "labels": labels}, str(tmp_path / "data.safetensors"))
    common = ["--data", f"tensors:{tmp_path / 'data.safetensors'}", "--classifier", "small-resnet",
              "--diffusion", "small-unet", "--eps", "0.03", "--iters", "1", "--eot", "1", "--batch-size", "8", "--seed", "0"]
    runner = CliRunner()
    tuned = runner.invoke(app, ["tune", *common, "--calls", "2", "--n-attack", "8", "--no-refine",
                                "--out", str(tmp_path / "tune")])
    output = " ".join(tuned.output.split())
    assert tuned.exit_code == 0, output
    assert "chosen" in output and "best.json" in output and "stratified subset of 8 images" in output
    summary = json.loads((tmp_path / "tune" / "points.json").read_text())
    chosen = next(p for p in summary["points"] if p["name"] == summary["chosen"])

    evaluated = runner.invoke(app, ["eval", *common, "--config", str(tmp_path / "tune" / "best.json"),
                                    "--n-samples", "8", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "config" / "report.json").read_text())
    assert report["settings"]["defense"] == chosen["config"]
    assert report["robust_accuracy"]["mean"] == chosen["robust"]  # same subset, attack, seeds and defense
