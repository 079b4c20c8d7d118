"""`robustwrap tune`: the sweep, its choice, its files, resumption and the CLI."""

import json

import pytest
import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.tune import Candidate, Point, TuneSettings, choose, pareto_front, steps_for_calls, tune

from .tiny import tiny_classifier, tiny_unet


def _point(name_level: float, clean: float, robust: float) -> Point:
    return Point(Candidate("uniform", name_level), None, 10, clean, 100, robust, 32)


def test_steps_give_the_requested_denoiser_budget():
    assert steps_for_calls(PurifyConfig(t_l=0.2), 10) == 50
    for t_l in (0.1, 0.3, 0.45, 0.6):
        from dataclasses import replace

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


SMALL = dict(calls=2, uniform_levels=(0.2,), heterogeneous_levels=(0.2,), cuts=(0.8,), n_attack=8, iters=1,
             eot=1, eps=8 / 255, batch_size=8)


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

    # Resume: nothing is recomputed (the results files do not grow) and the choice is the same.
    sizes = {path: path.stat().st_size for path in out.rglob("results.jsonl")}
    again = tune(wrapper, images, labels, out, TuneSettings(**SMALL), num_classes=10, resume=True)
    assert {path: path.stat().st_size for path in out.rglob("results.jsonl")} == sizes
    assert again.chosen.candidate == result.chosen.candidate
    with pytest.raises(FileExistsError, match="resume"):
        tune(wrapper, images, labels, out, TuneSettings(**SMALL), num_classes=10)
    with pytest.raises(ValueError, match="other settings"):
        tune(wrapper, images, labels, out, TuneSettings(**{**SMALL, "iters": 2}), num_classes=10, resume=True)


def test_bad_tune_settings_are_refused():
    for bad in (dict(min_clean=0.0), dict(families=("bogus",)), dict(attack="autoattack"), dict(calls=0),
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
