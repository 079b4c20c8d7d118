"""The calibrated defenses shipped with the MNIST models, and eval's like-with-like default comparison."""

import json
import shutil
from dataclasses import replace

import pytest

from robustwrap import PurifyConfig
from robustwrap.evaluation.figure import accuracy_bars, plot_accuracy
from robustwrap.schedule import make_plan
from robustwrap.evaluation import Accuracy, AttackAccuracy, OwnVerdict, Report, RobustAccuracy
from robustwrap.evaluation.comparison import calibrated_defenses
from robustwrap.store import SHIPPED_CALIBRATIONS, SHIPPED_CLASSIFIERS, calibrated_configs, shipped_dir

from .test_cli_and_packaging import invoke


def test_shipped_calibrations_spend_the_same_budget_and_record_their_sweep():
    files = calibrated_configs("mnist", "mnist")
    assert set(files) == {"uniform", "heterogeneous"}
    configs = {mode: PurifyConfig.load(path) for mode, path in files.items()}
    assert {mode: config.mode for mode, config in configs.items()} == {"uniform": "uniform",
                                                                       "heterogeneous": "heterogeneous"}
    calls = {mode: make_plan(config).denoiser_calls * config.votes for mode, config in configs.items()}
    assert calls["uniform"] == calls["heterogeneous"], calls
    card = (shipped_dir() / SHIPPED_CALIBRATIONS[("mnist", "mnist")] / "README.md").read_text()
    assert "robustwrap tune" in card and "best-uniform.json" in card and "best-heterogeneous.json" in card
    assert calibrated_configs("small-resnet", "mnist") == {} and calibrated_configs("mnist", "small-unet") == {}


def test_retrained_weights_in_the_model_dir_are_not_the_calibrated_ones(tmp_path, monkeypatch):
    entry = SHIPPED_CLASSIFIERS["mnist"]
    retrained = tmp_path / entry.weights
    retrained.parent.mkdir(parents=True)
    shutil.copyfile(shipped_dir() / entry.weights, retrained)
    monkeypatch.setenv("ROBUSTWRAP_MODEL_DIR", str(tmp_path))
    assert calibrated_configs("mnist", "mnist") == {}


@pytest.mark.parametrize("own_weights, own_defense, calibrated", [(False, False, True), (True, False, False),
                                                                  (False, True, False)])
def test_other_weights_or_a_given_defense_turn_the_calibration_off_and_votes_apply(own_weights, own_defense,
                                                                                   calibrated):
    given = PurifyConfig(steps=50, votes=3)
    files = calibrated_configs("mnist", "mnist")
    configs, sentence = calibrated_defenses(("none", "uniform", "heterogeneous"), given,
                                            {} if own_weights else files, own_defense=own_defense)
    for mode in ("uniform", "heterogeneous"):
        expected = replace(PurifyConfig.load(files[mode]), votes=3) if calibrated else replace(given, mode=mode)
        assert configs[mode] == expected
    assert configs["none"] == given and ("calibrated to the shipped" in sentence) == calibrated
    assert "3 votes" in sentence
    only = calibrated_defenses(("uniform",), given, files, own_defense=False)[0]
    assert list(only) == ["uniform"] and only["uniform"].t_l == PurifyConfig.load(files["uniform"]).t_l


@pytest.mark.slow
def test_eval_with_no_defense_options_compares_the_calibrated_settings_and_draws_them(tmp_path):
    out = tmp_path / "run"
    code, output = invoke("eval", "--n-samples", "4", "--batch-size", "4", "--iters", "1", "--eot", "1",
                          "--votes", "1", "--out", str(out))
    assert code == 0, output
    assert "calibrated to the shipped models" in output
    files = calibrated_configs("mnist", "mnist")
    for mode, path in files.items():
        header = json.loads((out / mode / "report.json").read_text())["settings"]
        assert PurifyConfig.from_dict(header["defense"]) == PurifyConfig.load(path), mode
    assert (out / "accuracy.png").stat().st_size > 5_000
    # A defense set on the command line replaces the calibration: both modes at the same levels.
    code, output = invoke("eval", "--n-samples", "4", "--batch-size", "4", "--iters", "0", "--t-l", "0.3",
                          "--defenses", "uniform,heterogeneous", "--out", str(tmp_path / "given"))
    assert code == 0, output
    assert "calibrated to the shipped" not in output and "the given setting in both modes" in output
    levels = {mode: json.loads((tmp_path / "given" / mode / "report.json").read_text())["settings"]["defense"]["t_l"]
              for mode in ("uniform", "heterogeneous")}
    assert levels == {"uniform": 0.3, "heterogeneous": 0.3}


def _report(clean: float, robust: dict[str, float]) -> Report:
    def robust_at(value: float, interval: list[float]) -> dict:
        return dict(mean=value, std=0.0, per_run=[value], interval=interval, worst_run=value,
                    worst_run_interval=interval, all_runs=value, all_runs_interval=interval)

    worst = min(robust.values())
    return Report(n_samples=64, runs=1, subset=None, attacks=list(robust), threat={},
                  clean_accuracy=Accuracy(clean, 0.0, [clean], [clean - 0.1, min(1.0, clean + 0.05)]),
                  robust_accuracy=RobustAccuracy(**robust_at(worst, [0.0, worst + 0.1])),
                  robust_accuracy_by_attack={a: AttackAccuracy(**robust_at(v, [max(0.0, v - 0.1), v + 0.1]),
                                                               attack_own=OwnVerdict(v, [0.0, 1.0], 0, 0))
                                             for a, v in robust.items()},
                  verdicts="", intervals="", seconds=0.0, seconds_by_attack={}, settings={}, versions={})


def test_the_figure_has_a_bar_per_defense_and_attack_with_the_reports_intervals(tmp_path):
    reports = {"none": _report(0.99, {"pgd-eot": 0.0, "diffhammer": 0.0}),
               "heterogeneous": _report(0.97, {"pgd-eot": 0.4, "diffhammer": 0.3})}
    bars = accuracy_bars(reports["heterogeneous"])
    assert [label for label, _, _ in bars] == ["clean", "pgd-eot", "diffhammer", "all attacks"]
    assert bars[-1][1] == 0.3 and bars[1][2] == pytest.approx([0.3, 0.5])
    assert [label for label, _, _ in accuracy_bars(_report(0.9, {"pgd-eot": 0.2}))] == ["clean", "pgd-eot"]
    plot_accuracy(reports, tmp_path / "accuracy.png", title="t", caption="c")
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
