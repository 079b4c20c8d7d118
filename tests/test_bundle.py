"""Component bundles: two exported networks + the library's loop equal eager; Triton configs parse."""

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.export import export_bundle, load_bundle, read_bundle, write_triton_bundle

from .tiny import tiny_classifier, tiny_unet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _wrapper(**config) -> RobustWrapper:
    settings = {"steps": 10, "votes": 2, **config}
    return RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(**settings), image_size=16)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    wrapper = _wrapper()
    result = export_bundle(wrapper, tmp_path_factory.mktemp("bundles") / "tiny", specs={"classifier": "tiny"})
    return wrapper, result


def _noise(wrapper, x, seed=0, votes=None):
    return torch.randn(wrapper.noise_shape(x, votes), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
def test_bundle_matches_eager_with_explicit_noise(bundle, batch):
    wrapper, result = bundle
    loaded = load_bundle(result.path)
    assert loaded.stages.describe() == ["classifier.stage_maps(x)"]  # the engine computes the maps
    x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
    noise = _noise(wrapper, x)
    with torch.no_grad():
        eager_purified, eager_probs = wrapper.purify_and_classify(x, noise=noise)
        purified, probs = loaded.purify_and_classify(x, noise=noise)
    torch.testing.assert_close(probs, eager_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(purified, eager_purified, rtol=0, atol=1e-4)
    torch.testing.assert_close(loaded.mask(x), wrapper.mask(x), rtol=0, atol=0)
    assert torch.equal(loaded.predict(x, noise=noise), wrapper.predict(x, noise=noise))


def test_generator_noise_is_reproducible_from_the_seed(bundle):
    _, result = bundle
    loaded = load_bundle(result.path)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        first = loaded.purify(x, generator=torch.Generator().manual_seed(7))
        again = loaded.purify(x, generator=torch.Generator().manual_seed(7))
        other = loaded.purify(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_configuration_changes_at_load_time(bundle):
    wrapper, result = bundle
    overrides = {"steps": 20, "votes": 3, "resample_steps": 1, "vote": "soft"}
    loaded = load_bundle(result.path, config=overrides)
    assert loaded.config == dataclasses.replace(wrapper.config, **overrides)
    assert loaded.plan.denoiser_calls == 4 and wrapper.plan.denoiser_calls == 2
    reference = wrapper.with_config(loaded.config)
    x = torch.rand(2, 3, 16, 16)
    noise = _noise(reference, x, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, noise=noise), reference(x, noise=noise), rtol=0, atol=1e-4)
    full = load_bundle(result.path, config=PurifyConfig(steps=50, votes=1))
    assert full.config.steps == 50 and full.plan.denoiser_calls == 10


def test_config_json_and_card(bundle):
    wrapper, result = bundle
    info = read_bundle(result.path)
    assert info == result.config
    assert info["config"] == dataclasses.asdict(wrapper.config)
    assert info["image_size"] == [16, 16] and info["diffusion_size"] == [16, 16] and info["channels"] == 3
    assert info["num_classes"] == 10 and info["num_stages"] == 3 and info["specs"] == {"classifier": "tiny"}
    assert info["opset"] == 20 and "torch" in info["versions"] and "onnx" in info["versions"]
    assert info["files"]["denoiser"]["inputs"] == ["x_t", "t"]
    assert sorted(p.name for p in result.path.iterdir()) == ["README.md", "classifier.onnx", "config.json", "denoiser.onnx"]
    assert "load_bundle" in (result.path / "README.md").read_text()


def test_graphs_have_dynamic_batch_float_t_and_no_exporter_metadata(bundle):
    _, result = bundle
    for name in ("denoiser.onnx", "classifier.onnx"):
        path = result.path / name
        model = onnx.load(str(path))
        assert [p.key for p in model.metadata_props] == ["robustwrap"]
        assert not model.doc_string and not model.graph.doc_string
        for node in model.graph.node:
            assert not node.doc_string and not node.metadata_props, node.name
        raw = path.read_bytes()
        assert b".py" not in raw and b"/work/" not in raw and b"stack_trace" not in raw
        for value in model.graph.input:
            assert value.type.tensor_type.shape.dim[0].dim_param  # a named dynamic batch axis
    denoiser = onnx.load(str(result.path / "denoiser.onnx"))
    t = next(v for v in denoiser.graph.input if v.name == "t")
    assert t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(t.type.tensor_type.shape.dim) == 1


@pytest.mark.slow
def test_export_does_not_depend_on_the_number_of_steps(bundle, tmp_path):
    _, result = bundle  # steps=10: 2 denoiser calls
    paper = export_bundle(_wrapper(steps=500), tmp_path / "paper")  # 100 denoiser calls
    for name in ("denoiser.onnx", "classifier.onnx"):
        assert (paper.path / name).read_bytes() == (result.path / name).read_bytes(), name
    assert paper.config["denoiser_calls"] == 100 and result.config["denoiser_calls"] == 2


def test_bad_requests_fail_before_any_export(bundle, tmp_path):
    wrapper, result = bundle
    with pytest.raises(ValueError, match="exists"):
        export_bundle(wrapper, result.path)
    with pytest.raises(ValueError, match="does not exist"):
        export_bundle(wrapper, tmp_path / "missing" / "bundle")
    anysize = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig(steps=10))
    with pytest.raises(ValueError, match="image size"):
        export_bundle(anysize, tmp_path / "b")
    with pytest.raises(ValueError, match="opset"):
        export_bundle(wrapper, tmp_path / "b", opset=17)
    with pytest.raises(ValueError, match="unknown PurifyConfig fields"):
        load_bundle(result.path, config={"stepz": 3})
    with pytest.raises(TypeError, match="config must be"):
        load_bundle(result.path, config=3)
    with pytest.raises(ValueError, match="engine must be"):
        load_bundle(result.path, engine="tvm")
    with pytest.raises(ValueError, match="not a robustwrap bundle"):
        load_bundle(tmp_path)
    with pytest.raises(ValueError, match="images must|channels|expected"):
        load_bundle(result.path)(torch.rand(2, 1, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_other_format_versions_are_refused(bundle, tmp_path):
    _, result = bundle
    copy = tmp_path / "copy"
    shutil.copytree(result.path, copy)
    info = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        load_bundle(copy)


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def check_then_fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the classifier graph: the denoiser is already written
            raise onnx.checker.ValidationError("injected failure")

    monkeypatch.setattr(onnx.checker, "check_model", check_then_fail)
    with pytest.raises(onnx.checker.ValidationError, match="injected"):
        export_bundle(_wrapper(votes=1), tmp_path / "bundle")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    """Weights in external data files (the threshold lowered from ~1.8 GB to 0 bytes)."""
    wrapper = _wrapper()
    return wrapper, export_bundle(wrapper, tmp_path_factory.mktemp("external") / "bundle", external_data_threshold=0)


def test_external_data_is_named_after_the_final_file_and_loads(external_bundle, tmp_path):
    wrapper, result = external_bundle
    names = sorted(p.name for p in result.path.iterdir())
    assert "denoiser.onnx.data" in names and "classifier.onnx.data" in names
    assert not any(".partial" in n or n.startswith(".") for n in names)
    model = onnx.load(str(result.path / "denoiser.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"denoiser.onnx.data"}  # relative, the final name
    assert result.config["files"]["denoiser"]["external_data"] == "denoiser.onnx.data"
    moved = tmp_path / "moved"
    shutil.move(str(result.path), moved)  # a folder move keeps the graphs loadable
    x = torch.rand(2, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(moved)(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-4)
    shutil.move(str(moved), result.path)


# --- Triton ---------------------------------------------------------------------------------


def _parse_pbtxt(path: Path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed (the test extra has it)"
    )
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repository_configs_parse_and_carry_the_data_files(external_bundle, tmp_path):
    _, result = external_bundle
    folders = write_triton_bundle(tmp_path, result.path, max_batch_size=16, config_overrides={"votes": 4})
    assert set(folders) == {"classifier", "denoiser", "robustwrap"}
    denoiser = _parse_pbtxt(folders["denoiser"] / "config.pbtxt")
    assert denoiser.backend == "onnxruntime" and denoiser.max_batch_size == 16
    assert denoiser.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in denoiser.input] == [("x_t", [3, 16, 16]), ("t", [1])]
    assert list(denoiser.input[1].reshape.shape) == []
    classifier = _parse_pbtxt(folders["classifier"] / "config.pbtxt")
    assert [o.name for o in classifier.output] == ["logits", "stage_0", "stage_1", "stage_2"]
    python = _parse_pbtxt(folders["robustwrap"] / "config.pbtxt")
    assert python.backend == "python" and python.input[1].optional
    assert list(python.output[0].dims) == [-1, 10]
    for component in ("denoiser", "classifier"):
        version = folders[component] / "1"
        assert sorted(p.name for p in version.iterdir()) == sorted(["model.onnx", f"{component}.onnx.data"])
        ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])  # finds its data
    compile((folders["robustwrap"] / "1" / "model.py").read_text(), "model.py", "exec")
    with pytest.raises(ValueError, match="missing TensorRT engines"):
        write_triton_bundle(tmp_path / "trt", result.path, backend="tensorrt")
    with pytest.raises(ValueError, match="unknown PurifyConfig"):
        write_triton_bundle(tmp_path / "bad", result.path, config_overrides={"nope": 1})


class _FakeTensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    @classmethod
    def from_dlpack(cls, name, capsule):
        return cls(name, torch.utils.dlpack.from_dlpack(capsule).numpy())

    def as_numpy(self):
        return self._array

    def to_dlpack(self):
        return torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(self._array)))

    def name(self):
        return self._name


def _fake_triton(repository: Path, max_batch: int):
    """A stand-in for triton_python_backend_utils that serves BLS requests with ONNX Runtime,
    checking each request against the component's parsed config (shapes, batch limit)."""
    sessions = {name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
                for name in ("classifier", "denoiser")}
    configs = {name: _parse_pbtxt(repository / name / "config.pbtxt") for name in sessions}
    module = types.ModuleType("triton_python_backend_utils")
    module.seen_rows = []

    class TritonModelException(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, inputs, requested_output_names):
            self.model_name, self.inputs, self.outputs = model_name, inputs, requested_output_names

        def exec(self):
            config = configs[self.model_name]
            feeds = {}
            for tensor, declared in zip(self.inputs, config.input):
                array = tensor.as_numpy()
                assert tensor.name() == declared.name and list(array.shape[1:]) == list(declared.dims)
                assert array.shape[0] <= config.max_batch_size
                feeds[tensor.name()] = array.reshape(array.shape[0], *declared.reshape.shape) if declared.HasField("reshape") else array
            module.seen_rows.append(next(iter(feeds.values())).shape[0])
            outputs = sessions[self.model_name].run(self.outputs, feeds)
            return InferenceResponse([_FakeTensor(n, o) for n, o in zip(self.outputs, outputs)])

    module.Tensor = _FakeTensor
    module.InferenceRequest, module.InferenceResponse = InferenceRequest, InferenceResponse
    module.TritonModelException, module.TritonError = TritonModelException, str
    module.get_output_tensor_by_name = lambda r, n: next(t for t in r.output_tensors if t.name() == n)
    module.get_input_tensor_by_name = lambda r, n: r.get(n)
    return module


def test_triton_python_model_runs_the_library_wrapper_over_bls(bundle, tmp_path, monkeypatch):
    wrapper, result = bundle
    folders = write_triton_bundle(tmp_path, result.path, max_batch_size=4)
    fake = _fake_triton(tmp_path, max_batch=4)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    namespace: dict = {}
    exec(compile((folders["robustwrap"] / "1" / "model.py").read_text(), "model.py", "exec"), namespace)
    model = namespace["TritonPythonModel"]()
    model.initialize({"model_repository": str(folders["robustwrap"]), "model_version": "1", "model_instance_kind": "CPU"})
    images = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    request = {"images": _FakeTensor("images", images), "seed": _FakeTensor("seed", [[5]])}
    first, again = model.execute([request, request])
    assert not first.has_error()
    probs = first.output_tensors[0].as_numpy()
    np.testing.assert_array_equal(probs, again.output_tensors[0].as_numpy())  # the seed fixes the noise
    # the same seed through the library's wrapper on the original networks
    expected = wrapper(torch.from_numpy(images), generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(probs, expected.detach().numpy(), rtol=0, atol=1e-4)
    assert max(fake.seen_rows) == 4 and 2 in fake.seen_rows  # 6 rows (3 images x 2 votes) split as 4 + 2
    bad = model.execute([{"images": _FakeTensor("images", images[:, :1]), "seed": None}])[0]
    assert bad.has_error() and "channels" in str(bad.error())


# --- TensorRT -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_tensorrt_engines_without_a_gpu_are_a_clear_error(bundle):
    from robustwrap.export import build_bundle_engines

    _, result = bundle
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        build_bundle_engines(result.path)
    with pytest.raises(RuntimeError, match="build_bundle_engines|CUDA"):
        load_bundle(result.path, engine="tensorrt", device="cuda")
    assert not list(result.path.glob("*.plan"))


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_tensorrt_bundle_matches_eager(tmp_path, precision, atol):
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU; none on this machine")
    pytest.importorskip("tensorrt", reason="tensorrt not installed (pip install 'robustwrap[gpu]')")
    from robustwrap.export import build_bundle_engines

    wrapper = _wrapper()
    result = export_bundle(wrapper, tmp_path / "bundle")
    build_bundle_engines(result.path, precision=precision, max_batch=16)
    loaded = load_bundle(result.path, engine="tensorrt", device="cuda")
    x = torch.rand(3, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        got = loaded(x.cuda(), noise=noise.cuda()).cpu()
        want = wrapper(x, noise=noise)
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_matches_eager(bundle):
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a CUDA GPU and onnxruntime-gpu")
    wrapper, result = bundle
    loaded = load_bundle(result.path, device="cuda")
    x = torch.rand(3, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.cuda(), noise=noise.cuda()).cpu(), wrapper(x, noise=noise), rtol=0, atol=1e-4)


# --- torch.compile of the networks, not the loop ---------------------------------------------


@pytest.mark.slow
def test_compiled_networks_match_eager_and_compile_once_for_any_number_of_calls():
    from robustwrap.export import compile_networks

    torch._dynamo.reset()
    wrapper = _wrapper(steps=20)  # 4 denoiser calls
    compiled = compile_networks(wrapper)
    x = torch.rand(2, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-5)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 2  # the classifier (with its maps) and the epsilon model
    longer = compile_networks(wrapper.with_config(PurifyConfig(steps=50, votes=2)))  # 10 calls, same shapes
    with torch.no_grad():
        longer(x, noise=_noise(longer, x))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing new to compile
    with pytest.raises(ValueError, match="CUDA"):
        compile_networks(wrapper, mode="reduce-overhead")


@pytest.mark.slow
def test_timm_classifier_bundle_carries_its_normalisation_and_intermediates(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    classifier = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=10, votes=2), image_size=16)
    assert wrapper.stages.describe()[0].startswith("forward_intermediates")  # two passes inside the graph
    result = export_bundle(wrapper, tmp_path / "bundle")
    assert result.config["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert result.config["num_stages"] == 4
    loaded = load_bundle(result.path)
    x = torch.rand(3, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-4)
        assert torch.equal(loaded.mask(x), wrapper.mask(x))


def test_an_exported_timm_classifier_runs_once_per_call_for_its_logits_and_maps():
    import timm

    from robustwrap.export.bundle import ClassifierWithStages

    classifier = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    wrapper = RobustWrapper(classifier, tiny_unet(size=32), PurifyConfig(steps=10), image_size=32)
    calls = {"forward": 0, "forward_intermediates": 0}
    for name in calls:
        original = getattr(classifier, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(classifier, name, counted)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, *maps = ClassifierWithStages(wrapper)(x)
    assert calls == {"forward": 0, "forward_intermediates": 1}  # was one of each: the network ran twice
    with torch.no_grad():
        torch.testing.assert_close(logits, classifier(wrapper.normalize(x)))
        for got, want in zip(maps, wrapper.stage_maps(x), strict=True):
            torch.testing.assert_close(got, want)
