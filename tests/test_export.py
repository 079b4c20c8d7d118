"""`robustwrap export`: the bundle of the shipped MNIST models, the unrolled loop, the write rule."""

import json

import pytest
import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.export import graph_breaks

from .tiny import tiny_classifier, tiny_unet

pytest.importorskip("onnxruntime")


def test_pipeline_is_one_dynamo_graph():
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(steps=10, votes=2), image_size=16)
    x = torch.rand(2, 3, 16, 16)
    assert graph_breaks(wrapper, x) == []
    assert graph_breaks(wrapper, x, Noise.given(torch.randn(wrapper.noise_shape(x)))) == []


def _invoke(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _row_value(output: str, label: str) -> float:
    return float(output.split(label)[1].split("│")[1].strip())


@pytest.mark.slow
def test_cli_exports_a_bundle_of_the_shipped_mnist_models(tmp_path):
    out = tmp_path / "bundle"
    code, output = _invoke("export", "--out", str(out), "--steps", "10", "--triton-repo", str(tmp_path / "triton"))
    assert code == 0, output
    info = json.loads((out / "config.json").read_text())
    assert info["specs"]["classifier"] == "mnist" and info["specs"]["diffusion"] == "mnist"
    assert info["channels"] == 1 and info["image_size"] == [28, 28] and info["config"]["steps"] == 10
    assert _row_value(output, "ONNX Runtime vs eager: max |d prob|") < 1e-4
    assert {p.name for p in (tmp_path / "triton").iterdir()} == {"mnist-mnist", "mnist-mnist-classifier",
                                                                "mnist-mnist-denoiser"}
    code, output = _invoke("export", "--out", str(out), "--steps", "10")
    assert code == 2 and "exists" in output  # never over an existing bundle without --overwrite


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cli_trt_without_a_gpu_writes_the_bundle_and_skips_the_engines(tmp_path):
    out = tmp_path / "bundle"
    code, output = _invoke("export", "--engine", "trt", "--out", str(out), "--steps", "10", "--no-check")
    assert code == 0, output
    assert "skipped: no CUDA GPU" in output and (out / "denoiser.onnx").is_file() and not list(out.glob("*.plan"))


@pytest.mark.slow
def test_cli_unrolled_graph_of_the_shipped_models_matches_eager(tmp_path):
    out = tmp_path / "bundle"
    code, output = _invoke("export", "--unrolled", "--out", str(out), "--steps", "10", "--noise", "explicit")
    assert code == 0, output
    assert (out / "unrolled.onnx").is_file() and _row_value(output, "unrolled graph vs eager: max |d prob|") < 1e-4
    assert json.loads((out / "config.json").read_text())["components"]["unrolled"]["noise"] == "explicit"


def test_cli_overwrite_never_replaces_what_export_did_not_write(tmp_path, monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("x")
    notes = tmp_path / "notes.txt"
    notes.write_text("y")
    for target in (precious, notes):
        code, output = _invoke("export", "--out", str(target), "--overwrite", "--steps", "10")
        assert code == 2 and "refusing to replace" in output, output
    monkeypatch.chdir(precious)
    code, output = _invoke("export", "--out", str(precious), "--overwrite", "--steps", "10")
    assert code == 2 and "working directory" in output, output
    assert (precious / "thesis.txt").read_text() == "x" and notes.read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "precious"]


def test_serve_without_the_serve_extra_names_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pytriton", None)  # as if nvidia-pytriton were not installed
    code, output = _invoke("serve", str(tmp_path))
    assert code == 2 and "pip install 'robustwrap[serve]'" in output, output
    assert list(tmp_path.iterdir()) == []
