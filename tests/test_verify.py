"""robustwrap verify: the parity certificate of an engine against the fp32 eager defense, and the engine registry."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustwrap import Noise
from robustwrap.cpus import cpu_features, native_bf16
from robustwrap.cli.app import app
from robustwrap.evaluation import EvalConfig
from robustwrap.export import Thresholds, export_bundle, find_verification, load_bundle, verify, write_record
from robustwrap.export.engines import ENGINE_SPECS, resolve_precision
from robustwrap.export.verification import record_name

from .tiny import tiny_wrapper

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ATTACK = EvalConfig(attack="pgd-eot", iters=1, eot=1, loss="ce")
MODELS = ["--classifier", "small-resnet", "--diffusion", "small-unet", "--num-classes", "10"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    wrapper = tiny_wrapper()
    result = export_bundle(wrapper, tmp_path_factory.mktemp("verify") / "tiny", image_size=16)
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = wrapper.classify(images).argmax(1)
    return wrapper, result.path, images, labels


def damage(bundle: Path, copy: Path, component: str, scale: float) -> Path:
    """A copy of the bundle whose ``component`` graph has its last layer (the classifier: its 1-D and 2-D floats) or
    its convolutions (the denoiser) multiplied by ``scale`` (-1 on the last layer reverses the order of the logits)."""
    shutil.copytree(bundle, copy)
    path = copy / f"{component}.onnx"
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        if (array.ndim <= 2 if component == "classifier" else array.ndim == 4) and array.dtype == np.float32:
            tensor.CopyFrom(onnx.numpy_helper.from_array(array * np.float32(scale), tensor.name))
    onnx.save(model, str(path))
    return copy


def test_an_fp32_engine_passes_and_its_record_is_found_again(exported, caplog):
    wrapper, bundle, images, labels = exported
    report = verify(wrapper, bundle, images, labels, num_classes=10, engine="onnxruntime", n_attack=4, attack=ATTACK)
    figures = report.figures
    assert report.passed and [c.name for c in report.checks] == ["decision_agreement", "clean_accuracy",
                                                                  "robust_accuracy"]
    assert figures["decision_agreement"]["hits"] == 16 and figures["mask_pixel_agreement"]["flipped"] == 0
    assert figures["probability_gap"]["max"] < 1e-5 and figures["purified_pixel_gap"]["max"] < 1e-5
    assert figures["robust"]["engine"]["n"] == 4 and report.settings["n_attack"] == 4
    assert find_verification(bundle, "onnxruntime", report.precisions) is None  # not written yet
    written = write_record(report, bundle / "verified", record_name(report.engine, report.precisions))
    assert json.loads(written.read_text())["passed"] is True
    assert find_verification(bundle, "onnxruntime", report.precisions).verdict_line == report.verdict_line
    with caplog.at_level(logging.INFO, logger="robustwrap.export.bundle"):
        load_bundle(bundle)
    assert "onnxruntime at fp32 was verified: passed (3 checks)" in caplog.text


def test_a_damaged_classifier_fails_with_the_line_that_failed(exported, tmp_path):
    wrapper, bundle, images, labels = exported
    damaged = damage(bundle, tmp_path / "damaged", "classifier", -1.0)
    report = verify(wrapper, damaged, images, labels, num_classes=10, engine="onnxruntime", n_attack=0)
    assert not report.passed and report.verdict_line.startswith("failed: decisions agree on ")
    assert report.figures["decision_agreement"]["value"] < 0.995 and "robust" not in report.figures
    assert find_verification(damaged, "onnxruntime", report.precisions) is None  # bundle's own record: other graphs


def test_a_record_measured_on_other_graphs_does_not_count(exported, tmp_path):
    wrapper, bundle, images, labels = exported
    report = verify(wrapper, bundle, images[:4], labels[:4], num_classes=10, engine="onnxruntime", n_attack=0)
    copy = damage(bundle, tmp_path / "copy", "denoiser", 1.5)
    write_record(report, copy / "verified", record_name(report.engine, report.precisions))
    assert find_verification(copy, "onnxruntime", report.precisions) is None


def test_the_config_must_be_the_bundles(exported):
    wrapper, bundle, images, labels = exported
    with pytest.raises(ValueError, match="verify against the defense the bundle was exported from"):
        verify(tiny_wrapper(steps=20), bundle, images, labels, num_classes=10, engine="onnxruntime")


def test_thresholds_and_precisions_are_checked():
    with pytest.raises(ValueError, match=r"min_agreement must be a number in \[0, 1\]"):
        Thresholds(min_agreement=1.5)
    assert resolve_precision("openvino", None) == {"classifier": "fp32", "denoiser": "fp32"}
    assert resolve_precision("openvino", {"classifier": "fp32", "denoiser": "bf16"})["denoiser"] == "bf16"
    with pytest.raises(ValueError, match=r"onnxruntime runs at \['fp32'\], got precision"):
        resolve_precision("onnxruntime", "bf16")
    with pytest.raises(ValueError, match="the precision they were built with"):
        resolve_precision("tensorrt", "fp16")
    with pytest.raises(ValueError, match="names exactly"):
        resolve_precision("openvino", {"denoiser": "bf16"})
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_precision("tvm", None)
    assert set(ENGINE_SPECS) == {"onnxruntime", "tensorrt", "aoti", "openvino"}


def test_openvino_fp32_equals_eager_and_bf16_is_verified_per_network(exported, tmp_path):
    pytest.importorskip("openvino")
    wrapper, bundle, images, labels = exported
    seeds = torch.arange(4)
    deployed = load_bundle(bundle, "openvino", precision="fp32")
    with torch.no_grad():
        torch.testing.assert_close(deployed(images[:4], noise=Noise.seeded(seeds)), wrapper(images[:4], noise=Noise.seeded(seeds)),
                                   atol=1e-5, rtol=0)
    mixed = {"classifier": "fp32", "denoiser": "bf16"}
    with pytest.raises(ValueError, match=r"openvino runs at \['fp32', 'bf16', 'int8'\]"):
        load_bundle(bundle, "openvino", precision="int4")
    if native_bf16() is not True:  # OpenVINO would run f32 under the name bf16: refused, not verified as bf16
        with pytest.raises(ValueError, match="this CPU has no bf16 units"):
            load_bundle(bundle, "openvino", precision=mixed)
        pytest.skip("this CPU has no bf16 units (avx512_bf16 / amx_bf16): the bf16 verify runs where it has")
    report = verify(wrapper, bundle, images, labels, num_classes=10, engine="openvino", precision=mixed, n_attack=0)
    assert report.precisions == mixed and record_name("openvino", mixed) == "openvino-classifier-fp32-denoiser-bf16.json"
    assert 1e-5 < report.figures["purified_pixel_gap"]["mean"] < 0.05  # bf16 changes the function, a little


def test_the_command_certifies_writes_and_exits_1_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    save_file({"images": images, "labels": torch.arange(8) % 10}, "data.safetensors")
    export = ["export", *MODELS, "--image-size", "16", "--steps", "10", "--no-check", "--out", "b"]
    assert CliRunner().invoke(app, export).exit_code == 0
    common = ["--data", "tensors:data.safetensors", "--n", "8", "--n-attack", "2", "--iters", "1", "--eot", "1"]
    result = CliRunner().invoke(app, ["verify", "b", *common])
    assert result.exit_code == 0, result.output
    assert "pass decisions agree on 100.00%" in result.output and (tmp_path / "b/verified/onnxruntime-fp32.json").is_file()
    assert (tmp_path / "b/verified/onnxruntime-fp32.png").is_file()
    damage(tmp_path / "b", tmp_path / "d", "classifier", -1.0)
    result = CliRunner().invoke(app, ["verify", "d", *common, "--out", "report"])
    assert result.exit_code == 1 and "FAIL decisions agree on" in result.output, result.output
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["verify.json", "verify.png"]
    result = CliRunner().invoke(app, ["verify", "d", *common, "--out", "report"])
    assert result.exit_code == 2 and "exists" in result.output


def test_export_verify_certifies_what_it_exported(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import functools

    from robustwrap.export import verifier as verify_module

    monkeypatch.chdir(tmp_path)
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    save_file({"images": images, "labels": torch.arange(8) % 10}, "data.safetensors")
    small = functools.partial(verify_module.verify_bundle, data="tensors:data.safetensors", n=8, n_attack=2,
                              attack=ATTACK)  # the command's defaults take minutes; the same call, fewer images
    monkeypatch.setattr(verify_module, "verify_bundle", small)
    export = ["export", *MODELS, "--image-size", "16", "--steps", "10", "--no-check", "--out", "b"]
    result = CliRunner().invoke(app, [*export, "--engine", "openvino", "--precision", "bf16", "--verify"])
    if native_bf16() is not True:
        assert result.exit_code == 2 and "this CPU has no bf16 units" in result.output, result.output
        pytest.skip("this CPU has no bf16 units: the export was written, its bf16 verify refused (tested above)")
    assert result.exit_code in (0, 1), result.output
    record = json.loads((tmp_path / "b/verified/openvino-bf16.json").read_text())
    assert record["precisions"] == {"classifier": "bf16", "denoiser": "bf16"} and record["settings"]["n_images"] == 8
    assert ("verified:" if record["passed"] else "not verified:") in result.output


def test_int8_models_are_calibrated_recorded_owned_and_verified(exported, tmp_path, caplog):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from robustwrap.export import BundleInfo, quantize_bundle
    from robustwrap.export.format import BUNDLE_LAYOUT

    wrapper, bundle, images, labels = exported
    copy = tmp_path / "int8"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("verified"))
    with pytest.raises(ValueError, match="has no int8 model of the classifier: quantise it"):
        load_bundle(copy, "openvino", precision="int8")
    calibration = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    save_file({"images": calibration, "labels": torch.arange(8) % 10}, str(tmp_path / "calibration.safetensors"))
    package = quantize_bundle(copy, wrapper, data=f"tensors:{tmp_path / 'calibration.safetensors'}", n=8)
    recorded = BundleInfo.read(copy).packages["openvino-int8"]
    assert recorded == package and recorded.files["denoiser"] == "denoiser.int8.xml"
    assert recorded.calibration["subset"]["size"] == 8 and len(recorded.calibration["fingerprint"]["images"]) == 64
    assert recorded.calibration["samples"] == {"classifier": 2, "denoiser": 2}  # one batch: its 2 reverse steps
    assert BUNDLE_LAYOUT.holds(copy)  # the int8 files are the bundle's own: --overwrite may replace it
    mixed = {"classifier": "fp32", "denoiser": "int8"}
    report = verify(wrapper, copy, images, labels, num_classes=10, engine="openvino", precision=mixed, n_attack=0)
    assert report.figures["purified_pixel_gap"]["mean"] > 0 and report.figures["mask_pixel_agreement"]["flipped"] == 0
    assert report.versions["cpu"] == cpu_features()  # the record says which CPU's kernels it judged
    elsewhere = dataclasses.replace(report, versions={**report.versions, "cpu": "avx512f, amx_bf16"})
    write_record(elsewhere, copy / "verified", record_name("openvino", mixed))
    with caplog.at_level(logging.WARNING, logger="robustwrap.export.bundle"):
        load_bundle(copy, "openvino", precision=mixed)
    assert "was verified on a CPU with avx512f, amx_bf16; this one has" in caplog.text


def test_a_triton_repository_says_whether_what_it_serves_was_verified(exported, tmp_path):
    from robustwrap.export import write_triton_bundle
    from robustwrap.export.triton.repository import served_by

    wrapper, bundle, images, labels = exported
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("verified"))
    report = verify(wrapper, copy, images[:4], labels[:4], num_classes=10, engine="onnxruntime", n_attack=0)
    write_record(report, copy / "verified", record_name(report.engine, report.precisions))
    write_triton_bundle(tmp_path / "repo", copy, component_backend="python", name="checked")
    assert served_by(tmp_path / "repo" / "checked") == "onnxruntime fp32: verified, passed (2 checks)"
    assert served_by(tmp_path / "repo" / "checked-denoiser") is None  # a component, not a pipeline
    if importlib.util.find_spec("openvino") is not None:
        write_triton_bundle(tmp_path / "repo", copy, component_backend="python", name="fast", engine="openvino",
                            precision="bf16")
        assert served_by(tmp_path / "repo" / "fast").startswith("openvino bf16: NOT verified (a reduced precision!)")
    with pytest.raises(ValueError, match="runs inside the python or inline component backends only"):
        write_triton_bundle(tmp_path / "repo", copy, name="wrong", engine="openvino")


def test_examples_crafted_once_judge_like_those_verify_crafts(exported):
    from robustwrap.export.verifier import craft_adversarial

    wrapper, bundle, images, labels = exported
    crafted = verify(wrapper, bundle, images, labels, num_classes=10, engine="onnxruntime", n_attack=4, attack=ATTACK)
    adversarial = craft_adversarial(wrapper, images[:4], labels[:4], ATTACK)
    given = verify(wrapper, bundle, images, labels, num_classes=10, engine="onnxruntime", n_attack=4, attack=ATTACK,
                   adversarial=adversarial)
    assert given.figures["robust"] == crafted.figures["robust"]
    assert given.settings["adversarial_examples"].startswith("given")
    with pytest.raises(ValueError, match="adversarial must hold the first n_attack images' examples"):
        verify(wrapper, bundle, images, labels, num_classes=10, engine="onnxruntime", n_attack=3,
               adversarial=adversarial)
