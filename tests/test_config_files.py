"""PurifyConfig as a file: JSON or TOML, a format version, validation on load."""

import json

import pytest

from robustwrap import PurifyConfig


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_saved_config_loads_back_equal(tmp_path, suffix):
    config = PurifyConfig(t_l=0.3, t_s=0.15, steps=100, votes=4, vote="soft", mask_rule="top_fraction",
                          top_fraction=0.2, attention_norm="softmax", grad_checkpoint=True, p_root=True)
    path = config.save(tmp_path / f"defense{suffix}")
    assert PurifyConfig.load(path) == config


def test_load_refuses_other_files_versions_fields_and_values(tmp_path):
    def write(name, payload):
        path = tmp_path / name
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        return path

    good = {"format": "robustwrap.PurifyConfig", "version": 1, "config": {"steps": 100}}
    assert PurifyConfig.load(write("ok.json", good)).steps == 100
    cases = [
        ("not-json.json", "{", "not valid JSON"),
        ("other.json", {"format": "something", "config": {}}, "not a robustwrap config"),
        ("future.json", {**good, "version": 99}, "version 99"),
        ("unknown.json", {**good, "config": {"stepz": 100}}, r"unknown PurifyConfig fields \['stepz'\]"),
        ("type.json", {**good, "config": {"steps": "100"}}, "type.json: steps must be an int"),
        ("bool.json", {**good, "config": {"votes": True}}, "votes must be an int"),
        ("value.json", {**good, "config": {"t_l": 1.5}}, "t_l must be in"),
        ("bad.toml", "format = ", "not valid TOML"),
    ]
    for name, payload, message in cases:
        with pytest.raises(ValueError, match=message):
            PurifyConfig.load(write(name, payload))
    with pytest.raises(FileNotFoundError):
        PurifyConfig.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=".json or .toml"):
        PurifyConfig().save(tmp_path / "config.yaml")


def test_integers_are_accepted_for_float_fields_and_the_removed_names_are_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": "robustwrap.PurifyConfig", "version": 1, "config": {"tau": 1, "grad_checkpoint": True}}))
    config = PurifyConfig.load(path)
    assert config.tau == 1.0 and config.grad_checkpoint is True
    path.write_text(json.dumps({"format": "robustwrap.PurifyConfig", "version": 1, "config": {"checkpoint": True}}))
    with pytest.raises(ValueError, match="unknown PurifyConfig fields \\['checkpoint'\\]"):
        PurifyConfig.load(path)  # the 0.1 alias is gone (CHANGELOG)


def test_export_embeds_the_config_file_in_the_bundle(tmp_path):
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    config = PurifyConfig(t_l=0.3, t_s=0.1, steps=20, votes=2, tau=0.8).save(tmp_path / "defense.toml")
    result = CliRunner().invoke(app, ["export", "--config", str(config), "--steps", "10", "--classifier", "small-resnet",
                                      "--diffusion", "small-unet", "--image-size", "16", "--no-check",
                                      "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    embedded = json.loads((tmp_path / "bundle" / "config.json").read_text())["config"]
    assert embedded == {**PurifyConfig.load(config).to_dict(), "steps": 10}  # the file, with --steps on top


def _config_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_HEAD = '{"format": "robustwrap.PurifyConfig", "version": 1, "config": '


@pytest.mark.parametrize("name, text, message", [
    ("nan.json", GOOD_HEAD + '{"eta": NaN}}', "nan.json: eta must be a finite number, got nan"),
    ("inf.json", GOOD_HEAD + '{"p": Infinity}}', "p must be a finite number, got inf"),
    ("tl.json", GOOD_HEAD + '{"t_l": NaN}}', "t_l must be a finite number"),
    ("no.json", GOOD_HEAD + '{"grad_checkpoint": "no"}}', "grad_checkpoint must be true or false, got 'no'"),
    ("zero.json", GOOD_HEAD + '{"p_root": 0}}', "p_root must be true or false"),
    ("votes.json", GOOD_HEAD + '{"votes": 2.5}}', r"votes must be an int \(a whole number\), got 2.5"),
    ("rule.json", GOOD_HEAD + '{"mode": 3}}', "mode must be a string"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "deep.json is nested too deeply"),
    ("v1.json", '{"format": "robustwrap.PurifyConfig", "version": "1", "config": {}}',
     "version must be an integer .*got '1'"),
    ("vtrue.json", '{"format": "robustwrap.PurifyConfig", "version": true, "config": {}}', "version must be an integer"),
    ("nan.toml", 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\neta = nan\n', "nan.toml: eta must be a finite"),
    ("inf.toml", 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\ntau = inf\n', "tau must be a finite"),
    ("str.toml", 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\nsteps = "50"\n', "steps must be an int"),
])
def test_config_files_take_only_finite_numbers_real_ints_and_booleans(tmp_path, name, text, message):
    path = _config_file(tmp_path, name, text)
    with pytest.raises(ValueError, match=message) as error:
        PurifyConfig.load(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("eta", float("nan"), "eta must be a finite number"), ("p", float("inf"), "p must be a finite number"),
    ("t_l", float("nan"), "t_l must be a finite number"), ("votes", 2.5, "votes must be an int"),
    ("steps", True, "steps must be an int"), ("grad_checkpoint", "no", "grad_checkpoint must be true or false"),
    ("tau", "0.5", "tau must be a number"),
])
def test_the_constructor_and_replace_validate_types_too(field, value, message):
    import dataclasses

    with pytest.raises(ValueError, match=message):
        PurifyConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PurifyConfig(), **{field: value})


def test_numpy_numbers_are_taken_as_plain_ones():
    import numpy as np

    config = PurifyConfig(steps=np.int64(100), t_l=np.float32(0.25), tau=1)
    assert type(config.steps) is int and type(config.t_l) is float and type(config.tau) is float
    assert json.loads(json.dumps(config.to_dict()))["steps"] == 100


def test_tune_settings_validate_types():
    from robustwrap.tune import TuneSettings

    for bad, message in ((dict(calls=2.5), "calls must be an int"), (dict(refine="no"), "refine must be true or false"),
                         (dict(min_clean=float("nan")), "min_clean must be a finite number"),
                         (dict(uniform_levels=(0.1, float("nan"))), r"uniform_levels\[1\] must be a finite number"),
                         (dict(n_clean=2.5), "n_clean must be an int")):
        with pytest.raises(ValueError, match=message):
            TuneSettings(**bad)
