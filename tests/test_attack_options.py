"""Each attack owns its options: declared once (defaults, bounds, help), checked once, shown by the CLI."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from robustwrap.attacks import DeviationOptions, DiffHammerOptions, MaskAwareOptions, NoOptions
from robustwrap.attacks.registry import ATTACKS, option_fields, options_from_values
from robustwrap.cli.app import app
from robustwrap.evaluation import EvalConfig


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_at_its_options_defaults(name):
    cfg = EvalConfig(attack=name)
    options = cfg.options_for(name)
    assert type(options) is ATTACKS[name].options and isinstance(options.describe(), str)
    json.dumps(options.to_dict())
    recorded = cfg.resolved()["options"]
    assert recorded == ({} if ATTACKS[name].options is NoOptions else {name: options.to_dict()})


@pytest.mark.parametrize("make, words", [
    (lambda: MaskAwareOptions(mask_temperature=0.0), "mask_temperature must be > 0"),
    (lambda: DiffHammerOptions(em_samples=2.5), "em_samples must be an int"),
    (lambda: DiffHammerOptions(em_steps=0), "em_steps must be >= 1"),
    (lambda: DiffHammerOptions(em_reference="no"), "em_reference must be true or false"),
    (lambda: DeviationOptions(dev_weight=float("inf")), "dev_weight must be a finite number"),
    (lambda: EvalConfig(attack="diffhammer", options=(DiffHammerOptions(), DiffHammerOptions(em_steps=2))),
     "DiffHammerOptions more than once"),
])
def test_options_out_of_their_declared_range_are_refused(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_options_follow_the_attacks_they_belong_to():
    cfg = EvalConfig(attack="pgd-vote,diffhammer", options=(DeviationOptions(2.0), DiffHammerOptions(em_samples=3)))
    assert cfg.options_for("pgd-vote").dev_weight == 2.0 and cfg.options_for("diffhammer").em_samples == 3
    assert "deviation weight 2, diffhammer N=3 EM 5 rounds" in cfg.describe()
    assert cfg.resolved()["options"] == {"pgd-vote": {"dev_weight": 2.0},
                                         "diffhammer": {"em_samples": 3, "em_steps": 5, "em_reference": False}}
    assert cfg.with_attack("pgd-eot").options == (DeviationOptions(2.0),)  # pgd-eot takes the deviation term too
    assert cfg.with_attack("bpda").options == ()
    with pytest.raises(ValueError, match="none of"):
        dataclasses.replace(cfg, attack="bpda")  # switching attacks is with_attack's job


def test_flat_values_become_the_options_of_the_attacks_that_run():
    assert options_from_values(("pgd-eot",), {"dev_weight": 0.0, "em_samples": 10}) == ()  # all at defaults
    assert options_from_values(("pgd-eot", "pgd-vote"), {"dev_weight": 1.0}) == (DeviationOptions(1.0),)
    assert options_from_values(("bpda", "diffhammer"), {"em_samples": 4}) == (DiffHammerOptions(em_samples=4),)
    with pytest.raises(ValueError, match=r"em_samples is an option of \['diffhammer'\]; none of \['bpda'\]"):
        options_from_values(("bpda",), {"em_samples": 4})
    with pytest.raises(ValueError, match="unknown attack options"):
        options_from_values(("bpda",), {"samples": 4})


def test_the_cli_shows_one_flag_per_declared_option():
    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    fields = option_fields()
    assert set(fields) == {"dev_weight", "mask_temperature", "em_samples", "em_steps", "em_reference"}
    for field in fields.values():
        assert f"--{field.name.replace('_', '-')}" in result.output and field.help[:40] in result.output
    refused = CliRunner().invoke(app, ["eval", "--attack", "mask-aware", "--mask-temperature", "-1", "--out", "x"])
    assert refused.exit_code == 2 and "mask_temperature must be > 0" in " ".join(refused.output.split())


def test_numpy_numbers_become_plain_ones_so_the_results_header_stays_json():
    import numpy as np

    options = DiffHammerOptions(em_samples=np.int64(4))
    assert type(options.em_samples) is int and options.em_samples == 4
    json.dumps(EvalConfig(attack="diffhammer", options=options).resolved())
