"""PurifyConfig as a file: JSON or TOML, a format version, validation on load."""

import json
import warnings

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
        ("type.json", {**good, "config": {"steps": "100"}}, "steps must be a int"),
        ("bool.json", {**good, "config": {"votes": True}}, "votes must be a int"),
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


def test_integers_are_accepted_for_float_fields_and_old_names_warn(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": "robustwrap.PurifyConfig", "version": 1, "config": {"tau": 1, "checkpoint": True}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PurifyConfig.load(path)
    assert config.tau == 1.0 and config.grad_checkpoint is True
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


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
