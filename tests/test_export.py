"""Export: ONNX graphs run by ONNX Runtime match eager; torch.compile captures one graph."""

import json
import os

import numpy as np
import pytest
import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.export import (
    OnnxRunner,
    build_engine,
    compile_wrapper,
    export_onnx,
    graph_breaks,
    onnx_parity,
    read_metadata,
    write_triton_repository,
)

from .tiny import tiny_classifier, tiny_unet

pytest.importorskip("onnxruntime")


def _wrapper(votes: int = 2) -> RobustWrapper:
    return RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(steps=10, votes=votes), image_size=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One explicit-noise graph with purified output, one in-graph-noise graph."""
    folder = tmp_path_factory.mktemp("onnx")
    wrapper = _wrapper()
    explicit = export_onnx(wrapper, folder / "explicit.onnx", noise="explicit", with_purified=True)
    in_graph = export_onnx(wrapper, folder / "in_graph.onnx", noise="in_graph", with_purified=True)
    return wrapper, explicit, in_graph


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_explicit_noise_graph_matches_eager(exported, batch):
    wrapper, explicit, _ = exported
    runner = OnnxRunner(explicit.path)
    images = torch.rand(batch, 3, 16, 16)
    noise = torch.randn(runner.noise_shape(batch))
    scores, labels, purified = runner(images, noise)
    with torch.no_grad():
        eager_purified, eager_probs = wrapper.purify_and_classify(images, noise=noise.permute(1, 2, 0, 3, 4, 5))
    torch.testing.assert_close(scores, eager_probs.mean(0), rtol=0, atol=1e-4)
    assert torch.equal(labels, wrapper.predict(images, noise=noise.permute(1, 2, 0, 3, 4, 5)))
    torch.testing.assert_close(purified, eager_purified.transpose(0, 1), rtol=0, atol=1e-4)
    assert onnx_parity(wrapper, runner, batch=batch) < 1e-4


def test_numpy_in_numpy_out(exported):
    _, explicit, _ = exported
    runner = OnnxRunner(explicit.path)
    outputs = runner(np.random.rand(2, 3, 16, 16).astype(np.float32), np.random.randn(*runner.noise_shape(2)).astype(np.float32))
    assert all(isinstance(o, np.ndarray) for o in outputs)


def test_in_graph_noise_differs_per_run_and_matches_eager_statistics(exported):
    wrapper, _, in_graph = exported
    runner = OnnxRunner(in_graph.path)
    images = torch.rand(8, 3, 16, 16)
    first, second = runner(images)[2], runner(images)[2]
    assert not torch.equal(first, second)
    with torch.no_grad():
        eager = torch.stack([wrapper.purify_and_classify(images)[0].transpose(0, 1) for _ in range(2)])
    onnx_runs = torch.stack([first, second])
    # Same distribution: the spread around the input and the per-pixel mean agree with eager's.
    deviation = lambda runs: (runs - images[None, :, None]).std()  # noqa: E731
    assert abs(deviation(onnx_runs) - deviation(eager)) < 0.1 * deviation(eager)
    assert (onnx_runs.mean() - eager.mean()).abs() < 0.02


def test_graph_is_valid_and_carries_its_configuration(exported):
    import onnx

    wrapper, explicit, in_graph = exported
    onnx.checker.check_model(str(explicit.path), full_check=True)
    assert "RandomNormalLike" in in_graph.op_types and "RandomNormalLike" not in explicit.op_types
    metadata = read_metadata(explicit.path)
    assert metadata["config"]["votes"] == 2 and metadata["noise_draws"] == wrapper.plan.noise_draws
    assert explicit.opset == 20


def test_runner_refuses_bad_calls(exported):
    _, explicit, in_graph = exported
    runner = OnnxRunner(explicit.path)
    with pytest.raises(ValueError, match="takes explicit noise"):
        runner(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="noise must have shape"):
        runner(torch.rand(2, 3, 16, 16), torch.randn(runner.noise_shape(3)))
    with pytest.raises(ValueError, match="images must have shape"):
        runner(torch.rand(2, 3, 32, 32), torch.randn(runner.noise_shape(2)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        runner(torch.rand(2, 3, 16, 16) + 1, torch.randn(runner.noise_shape(2)))
    with pytest.raises(ValueError, match="in-graph"):
        OnnxRunner(in_graph.path)(torch.rand(1, 3, 16, 16), torch.randn(runner.noise_shape(1)))


def test_unwritable_destination_and_failed_checks_leave_nothing(tmp_path, monkeypatch):
    wrapper = _wrapper(votes=1)
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx(wrapper, tmp_path / "missing" / "model.onnx")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="not writable"):
            export_onnx(wrapper, locked / "model.onnx")

    import onnx

    def failing_check(*args, **kwargs):
        raise onnx.checker.ValidationError("injected failure")

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(wrapper, tmp_path / "model.onnx")
    assert list(tmp_path.glob("*.onnx*")) == [] and not list(tmp_path.glob(".model.onnx*"))


def test_wrapper_without_a_fixed_size_cannot_be_exported(tmp_path):
    wrapper = RobustWrapper(tiny_classifier(), torch.nn.Identity(), PurifyConfig(steps=10))
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(wrapper, tmp_path / "model.onnx")


def test_triton_repository_layout(exported, tmp_path):
    _, explicit, _ = exported
    folder = write_triton_repository(tmp_path, explicit.path, model_name="defended", max_batch_size=16)
    assert (folder / "1" / "model.onnx").is_file()
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "max_batch_size: 16" in config and "dynamic_batching" in config
    assert 'name: "noise"' in config and "dims: [ 3, 16, 16 ]" in config
    assert "reshape: { shape: [ ] }" in config  # labels are one scalar per item
    with pytest.raises(ValueError, match="engine_path"):
        write_triton_repository(tmp_path, explicit.path, backend="tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_tensorrt_without_a_gpu_is_a_clear_error(exported, tmp_path):
    _, explicit, _ = exported
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        build_engine(explicit.path, tmp_path / "model.plan")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.trt
def test_tensorrt_engine_matches_eager(exported, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU; none on this machine")
    pytest.importorskip("tensorrt", reason="tensorrt not installed (pip install 'robustwrap[gpu]')")
    from robustwrap.export import TrtRunner

    wrapper, explicit, _ = exported
    build_engine(explicit.path, tmp_path / "model.plan", max_batch=8)
    runner = TrtRunner(tmp_path / "model.plan")
    images = torch.rand(3, 3, 16, 16)
    noise = torch.randn(3, *OnnxRunner(explicit.path).noise_shape(3)[1:])
    scores = runner(images, noise)[0].cpu()
    with torch.no_grad():
        eager = wrapper(images, noise=noise.permute(1, 2, 0, 3, 4, 5))
    torch.testing.assert_close(scores, eager, rtol=0, atol=1e-4)


def test_pipeline_is_one_dynamo_graph():
    wrapper = _wrapper()
    x = torch.rand(2, 3, 16, 16)
    assert graph_breaks(wrapper, x) == []
    assert graph_breaks(wrapper, x, torch.randn(wrapper.noise_shape(x))) == []


@pytest.mark.slow
def test_compiled_wrapper_matches_eager_and_checks_inputs():
    wrapper = _wrapper()
    compiled = compile_wrapper(wrapper)
    x = torch.rand(3, 3, 16, 16)
    noise = torch.randn(wrapper.noise_shape(x))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-5)
        in_graph = compiled(x)
    torch.testing.assert_close(in_graph.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        compiled(x + 2)


# --- the export command: the shipped MNIST models by default, component bundle by default ----


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
    assert {p.name for p in (tmp_path / "triton").iterdir()} == {"classifier", "denoiser", "robustwrap"}
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
def test_cli_single_graph_of_the_shipped_models_checks_with_their_channels(tmp_path):
    # The summary check used 3 channels for the 1-channel MNIST graph and ended in a traceback.
    out = tmp_path / "single.onnx"
    code, output = _invoke("export", "--graph", "single", "--out", str(out), "--steps", "10", "--noise", "explicit")
    assert code == 0, output
    assert out.is_file() and _row_value(output, "parity vs eager") < 1e-4
    assert read_metadata(out)["channels"] == 1


@pytest.mark.slow
def test_single_graph_is_stripped_and_keeps_external_data_named_after_the_final_file(tmp_path):
    import onnx

    wrapper = _wrapper(votes=1)
    result = export_onnx(wrapper, tmp_path / "model.onnx", noise="explicit", external_data_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    model = onnx.load(str(result.path), load_external_data=False)
    assert [p.key for p in model.metadata_props] == ["robustwrap"]
    assert not any(node.doc_string or node.metadata_props for node in model.graph.node)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    folder = write_triton_repository(tmp_path / "triton", result.path)
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    runner = OnnxRunner(folder / "1" / "model.onnx", providers=["CPUExecutionProvider"])
    assert onnx_parity(wrapper, runner, batch=2) < 1e-4
