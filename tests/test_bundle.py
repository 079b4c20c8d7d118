"""Bundles: the exported networks + the library's loop equal eager; malformed bundles are refused; Triton configs parse."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.cpus import native_bf16
from robustwrap.export import BundleInfo, export_bundle, load_bundle, load_unrolled, read_bundle, write_triton_bundle

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
    return Noise.given(torch.randn(wrapper.noise_shape(x, votes), generator=torch.Generator().manual_seed(seed)))


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
        first = loaded.purify(x, noise=Noise.stream(torch.Generator().manual_seed(7)))
        again = loaded.purify(x, noise=Noise.stream(torch.Generator().manual_seed(7)))
        other = loaded.purify(x, noise=Noise.stream(torch.Generator().manual_seed(8)))
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


def test_same_seeds_same_answer_in_the_bundle_and_the_eager_wrapper(bundle):
    wrapper, result = bundle
    loaded = load_bundle(result.path)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    seeds = torch.tensor([11, 12, 13])
    with torch.no_grad():
        served = loaded(x, noise=Noise.seeded(seeds))
        torch.testing.assert_close(served, wrapper(x, noise=Noise.seeded(seeds)), rtol=0, atol=1e-4)
        torch.testing.assert_close(loaded(x[1:2], noise=Noise.seeded(seeds[1:2])), served[1:2], rtol=0, atol=1e-6)  # per image


def test_config_json_holds_each_components_contract(bundle):
    wrapper, result = bundle
    info = read_bundle(result.path)
    assert info == result.info and isinstance(info, BundleInfo)
    assert info.config == wrapper.config
    assert info.image_size == (16, 16) and info.diffusion_size == (16, 16) and info.channels == 3
    assert info.num_classes == 10 and info.num_stages == 3 and info.specs == {"classifier": "tiny"}
    assert info.extra["opset"] == 20 and "torch" in info.extra["versions"] and "onnx" in info.extra["versions"]
    denoiser = info.components["denoiser"]
    assert [(t.name, t.shape, t.dtype) for t in denoiser.inputs] == [("x_t", ("N", 3, 16, 16), "float32"),
                                                                     ("t", ("N",), "float32")]
    assert denoiser.outputs[0].shape == ("N", 3, 16, 16)
    assert info.components["classifier"].output_names == ["logits", "stage_0", "stage_1", "stage_2"]
    assert sorted(p.name for p in result.path.iterdir()) == ["README.md", "classifier.onnx", "config.json", "denoiser.onnx"]
    assert "load_bundle" in (result.path / "README.md").read_text()
    json.loads((result.path / "config.json").read_text(), parse_constant=lambda name: pytest.fail(name))  # strict


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
    assert paper.info.extra["denoiser_calls"] == 100 and result.info.extra["denoiser_calls"] == 2


def test_bad_requests_fail_before_any_export(bundle, tmp_path):
    wrapper, result = bundle
    with pytest.raises(ValueError, match="exists"):
        export_bundle(wrapper, result.path)
    with pytest.raises(ValueError, match="no unrolled graph"):
        load_unrolled(result.path)
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


def _edited_copy(result, tmp_path, edit) -> Path:
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(result.path, copy)
    info = json.loads((copy / "config.json").read_text())
    edited = edit(info, copy)
    (copy / "config.json").write_text(json.dumps(info if edited is None else edited))
    return copy


def _set(path: str, value):
    def edit(info, folder):
        *parents, last = path.split(".")
        node = info
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _delete(path: str):
    def edit(info, folder):
        *parents, last = path.split(".")
        node = info
        for key in parents:
            node = node[key]
        del node[last]
    return edit


def _swap_graphs(info, folder):
    (folder / "denoiser.onnx").rename(folder / "tmp.onnx")
    (folder / "classifier.onnx").rename(folder / "denoiser.onnx")
    (folder / "tmp.onnx").rename(folder / "classifier.onnx")


def _truncate_denoiser(info, folder):
    data = (folder / "denoiser.onnx").read_bytes()
    (folder / "denoiser.onnx").write_bytes(data[: len(data) // 3])


MALFORMED = [
    ("a list", lambda info, folder: [info], "must hold a JSON object"),
    ("version 99", _set("format_version", 99), "format version 99"),
    ("version as a string", _set("format_version", "2"), "version '2' \\(str\\)"),
    ("no components", _delete("components"), "'components' is missing"),
    ("no channels", _delete("channels"), "'channels' is missing"),
    ("no config", _delete("config"), "'config' is missing"),
    ("channels as text", _set("channels", "three"), "'channels' must be an int"),
    ("a NaN in the config", _set("config.eta", float("nan")), "not a number JSON allows|finite"),
    ("a file outside the bundle", _set("components.denoiser.file", "../../x.onnx"), "file name inside the bundle"),
    ("a deleted graph", lambda info, folder: (folder / "classifier.onnx").unlink(), "classifier graph .* is missing"),
    ("wrong num_classes", _set("num_classes", 7), "logits have shape"),
    ("wrong output shape", _set("components.classifier.outputs.1.shape", ["N", 5, 2, 2]), "records"),
    ("swapped graphs", _swap_graphs, "a file was replaced"),
    ("a truncated graph", _truncate_denoiser, "cannot load"),
]


@pytest.mark.parametrize("case, edit, message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_bundles_are_refused_naming_the_bundle(bundle, tmp_path, case, edit, message):
    _, result = bundle
    if case == "wrong output shape":  # a list index inside the path
        def edit(info, folder):
            info["components"]["classifier"]["outputs"][1]["shape"] = ["N", 5, 2, 2]
    copy = _edited_copy(result, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as raised:
        load_bundle(copy)
    assert str(copy) in str(raised.value) or "config.json" in str(raised.value)


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
    moved = tmp_path / "moved"
    shutil.move(str(result.path), moved)  # a folder move keeps the graphs loadable
    x = torch.rand(2, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(moved)(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-4)
    shutil.move(str(moved), result.path)


# --- the rule every writer follows --------------------------------------------------------


def test_overwrite_replaces_only_a_bundle(bundle, tmp_path):
    wrapper, _ = bundle
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("a week of work")
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    for target in (precious, notes):
        with pytest.raises(ValueError, match="not a bundle written by robustwrap"):
            export_bundle(wrapper, target, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "a week of work" and notes.read_text() == "notes"
    first = export_bundle(wrapper, tmp_path / "b")
    again = export_bundle(wrapper, tmp_path / "b", overwrite=True)  # ours: replaced, after success
    assert again.info == first.info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes.txt", "precious"]


# --- the unrolled loop: one more graph in the bundle, same exporter, same runner -------------


@pytest.mark.slow
def test_unrolled_graph_matches_eager_with_explicit_noise(tmp_path):
    wrapper = _wrapper(votes=2)
    result = export_bundle(wrapper, tmp_path / "b", unrolled=True, unrolled_noise="explicit")
    spec = result.info.components["unrolled"]
    assert spec.noise == "explicit" and spec.output_names == ["probabilities", "labels"]
    assert [t.dtype for t in spec.outputs] == ["float32", "int64"]
    graph = load_unrolled(result.path)
    for batch in (1, 3):
        x = torch.rand(batch, 3, 16, 16)
        noise = _noise(wrapper, x)
        probabilities, labels = graph(x, noise.tensor)
        with torch.no_grad():
            torch.testing.assert_close(probabilities, wrapper(x, noise=noise), rtol=0, atol=1e-4)
            assert torch.equal(labels, wrapper.predict(x, noise=noise))
    with pytest.raises(ValueError, match="takes explicit noise"):
        graph(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        graph(torch.rand(1, 3, 16, 16) + 2, noise.tensor[:1])


@pytest.mark.slow
def test_unrolled_graph_with_in_graph_noise_draws_fresh_noise(tmp_path):
    result = export_bundle(_wrapper(votes=1), tmp_path / "b", unrolled=True)
    graph = load_unrolled(result.path)
    x = torch.rand(2, 3, 16, 16)
    first, second = graph(x)[0], graph(x)[0]
    torch.testing.assert_close(first.sum(1), torch.ones(2))
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="in-graph"):
        graph(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="no noise input"):
        graph.noise_shape(2)


# --- Triton repository (the real server runs it in test_triton_server.py) --------------------


def _parse_pbtxt(path: Path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed (the test extra has it)"
    )
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repository_configs_parse_and_carry_the_data_files(external_bundle, tmp_path):
    from robustwrap.export.triton import ServingOptions

    _, result = external_bundle
    options = ServingOptions(max_batch_size=4, component_max_batch=16, instances=2)
    folders = write_triton_bundle(tmp_path, result.path, name="tiny", options=options, config_overrides={"votes": 4})
    assert set(folders) == {"tiny", "tiny-classifier", "tiny-denoiser"}
    denoiser = _parse_pbtxt(folders["tiny-denoiser"] / "config.pbtxt")
    assert denoiser.backend == "onnxruntime" and denoiser.max_batch_size == 16
    assert denoiser.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in denoiser.input] == [("x_t", [3, 16, 16]), ("t", [1])]
    assert list(denoiser.input[1].reshape.shape) == []
    classifier = _parse_pbtxt(folders["tiny-classifier"] / "config.pbtxt")
    assert [o.name for o in classifier.output] == ["logits", "stage_0", "stage_1", "stage_2"]
    pipeline = _parse_pbtxt(folders["tiny"] / "config.pbtxt")
    assert pipeline.backend == "python" and pipeline.max_batch_size == 256 and pipeline.input[1].optional
    assert list(pipeline.dynamic_batching.preferred_batch_size) == [4]  # executions of 4, requests up to 256
    policy = pipeline.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds, policy.allow_timeout_override) == (
        64, 30_000_000, True)
    assert policy.timeout_action == policy.REJECT
    assert list(pipeline.input[1].dims) == [1] and list(pipeline.output[0].dims) == [10]
    assert pipeline.instance_group[0].count == 2 and pipeline.HasField("dynamic_batching")
    for component in ("denoiser", "classifier"):
        version = folders[f"tiny-{component}"] / "1"
        assert sorted(p.name for p in version.iterdir()) == sorted(["model.onnx", f"{component}.onnx.data"])
        ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])  # finds its data
    serving = json.loads((folders["tiny"] / "1" / "serving.json").read_text())
    assert serving["config_overrides"] == {"votes": 4} and serving["environment"]["numpy"] == "<2"
    with pytest.raises(ValueError, match="missing TensorRT engines"):
        write_triton_bundle(tmp_path / "trt", result.path, component_backend="tensorrt")
    with pytest.raises(ValueError, match="unknown PurifyConfig"):
        write_triton_bundle(tmp_path / "bad", result.path, config_overrides={"nope": 1})
    with pytest.raises(ValueError, match="model name"):
        write_triton_bundle(tmp_path / "bad", result.path, name="../x")


def test_triton_openvino_backend_configs_parse_and_pin_bf16(bundle, tmp_path):
    """NVIDIA's openvino backend is not in PyTriton's server: its configs are parsed, and its model compiled by
    OpenVINO with the properties the backend maps the parameters to (HINT_BF16 -> inference_precision bf16)."""
    ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from robustwrap.export.engines.openvino import OpenVinoRunner

    _, result = bundle
    with pytest.raises(ValueError, match="serves bf16 only"):
        write_triton_bundle(tmp_path / "fp32", result.path, component_backend="openvino")
    with pytest.raises(ValueError, match="serves bf16 only"):
        write_triton_bundle(tmp_path / "mixed", result.path, component_backend="openvino",
                            precision={"classifier": "fp32", "denoiser": "bf16"})
    folders = write_triton_bundle(tmp_path / "repo", result.path, component_backend="openvino", precision="bf16")
    denoiser = _parse_pbtxt(folders["tiny-denoiser"] / "config.pbtxt")
    assert denoiser.backend == "openvino" and denoiser.default_model_filename == "model.onnx"
    assert {key: value.string_value for key, value in denoiser.parameters.items()} == {
        "HINT_BF16": "YES", "PERFORMANCE_HINT": "LATENCY"}
    assert list(denoiser.input[1].reshape.shape) == []  # t travels as (N, 1), the graph takes (N,)
    serving = json.loads((folders["tiny"] / "1" / "serving.json").read_text())
    assert (serving["engine"], serving["precisions"], serving["verified"]) == (
        "openvino", {"classifier": "bf16", "denoiser": "bf16"}, None)
    model = folders["tiny-denoiser"] / "1" / "model.onnx"
    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                          "PERFORMANCE_HINT": "LATENCY"})
    file, spec = result.info.file(result.path, "denoiser"), result.info.components["denoiser"]
    if native_bf16() is not True:  # OpenVINO ignores the hint here and runs f32: ours refuses that
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        with pytest.raises(ValueError, match="this CPU has no bf16 units"):
            OpenVinoRunner(file, spec, "bf16")
        return
    x_t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 200.0, 500.0, 900.0])
    served = compiled({"x_t": x_t.numpy(), "t": t.numpy()})[compiled.outputs[0]]
    ours = OpenVinoRunner(file, spec, "bf16")
    torch.testing.assert_close(torch.from_numpy(served.copy()), ours({"x_t": x_t, "t": t})[0], rtol=0, atol=0)


def test_triton_python_models_ship_as_package_files(bundle, tmp_path):
    from importlib import resources

    _, result = bundle
    folders = write_triton_bundle(tmp_path, result.path, component_backend="python")
    name = "tiny"  # from the specs
    assert set(folders) == {name, f"{name}-classifier", f"{name}-denoiser"}
    package = resources.files("robustwrap.export.triton")
    assert (folders[name] / "1" / "model.py").read_text() == package.joinpath("pipeline_model.py").read_text()
    component = folders[f"{name}-denoiser"] / "1"
    assert (component / "model.py").read_text() == package.joinpath("component_model.py").read_text()
    assert _parse_pbtxt(folders[f"{name}-denoiser"] / "config.pbtxt").backend == "python"


def test_a_repository_keeps_other_models_and_refuses_to_replace_them(bundle, tmp_path):
    _, result = bundle
    write_triton_bundle(tmp_path, result.path, name="first")
    write_triton_bundle(tmp_path, result.path, name="second")
    user_model = tmp_path / "users-model"
    user_model.mkdir()
    (user_model / "config.pbtxt").write_text("name: 'mine'")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="exists"):
        write_triton_bundle(tmp_path, result.path, name="first")
    with pytest.raises(ValueError, match="not a Triton model written by robustwrap"):
        write_triton_bundle(tmp_path, result.path, name="users-model", overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    write_triton_bundle(tmp_path, result.path, name="first", overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == {"first", "first-classifier", "first-denoiser", "second",
                                                   "second-classifier", "second-denoiser", "users-model"}


# --- AOTInductor packages: compiled at export, nothing compiled at load --------------------


@pytest.fixture(scope="module")
def aoti_bundle(tmp_path_factory):
    wrapper = _wrapper()
    return wrapper, export_bundle(wrapper, tmp_path_factory.mktemp("aoti") / "bundle", aoti=("fp32", "bf16"))


@pytest.mark.slow
def test_aoti_packages_match_eager_and_load_without_compiling(aoti_bundle, monkeypatch):
    wrapper, result = aoti_bundle
    package = result.info.packages["aoti"]
    assert package.device == "cpu" and package.torch == torch.__version__
    assert sorted(package.files.values()) == ["classifier.cpu.pt2", "denoiser.cpu.pt2"]

    def no_compiling(*args, **kwargs):
        raise AssertionError("loading a bundle compiled something")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiling)
    monkeypatch.setattr(torch, "compile", no_compiling)
    loaded = load_bundle(result.path, engine="aoti")
    for batch in (1, 5):
        x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        noise = _noise(wrapper, x)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-5)
            torch.testing.assert_close(loaded(x, noise=Noise.seeded(torch.arange(batch))), wrapper(x, noise=Noise.seeded(torch.arange(batch))),
                                       rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bf16_packages_and_compiled_networks_run_one_bf16_function(aoti_bundle):
    from robustwrap.export import compile_networks

    wrapper, result = aoti_bundle
    assert result.info.packages["aoti-bf16"].files == {"classifier": "classifier.cpu.bf16.pt2",
                                                       "denoiser": "denoiser.cpu.bf16.pt2"}
    packaged = load_bundle(result.path, engine="aoti", precision="bf16")
    compiled = compile_networks(wrapper, precision="bf16")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    seeds = torch.arange(3)
    with torch.no_grad():
        eager = wrapper.purify(x, noise=Noise.seeded(seeds))
        from_package = packaged.purify(x, noise=Noise.seeded(seeds))
        torch.testing.assert_close(from_package, compiled.purify(x, noise=Noise.seeded(seeds)), rtol=0, atol=2e-3)
        assert float((from_package - eager).abs().max()) > 1e-3  # bf16 really ran: not fp32's function
        assert from_package.dtype == torch.float32
        mixed = load_bundle(result.path, engine="aoti", precision={"classifier": "fp32", "denoiser": "bf16"})
        torch.testing.assert_close(mixed.mask(x), wrapper.mask(x), rtol=0, atol=0)  # the fp32 classifier's mask
        assert float((mixed.purify(x, noise=Noise.seeded(seeds)) - eager).abs().max()) > 1e-3


@pytest.mark.slow
def test_aoti_packages_for_another_device_or_torch_are_refused(aoti_bundle, bundle, tmp_path):
    _, result = aoti_bundle
    with pytest.raises(ValueError, match="compiled for cpu, not cuda"):
        load_bundle(result.path, engine="aoti", device="cuda")
    copy = _edited_copy(result, tmp_path, _set("packages.aoti.torch", "1.0.0"))
    with pytest.raises(ValueError, match="compiled by torch 1.0.0"):
        load_bundle(copy, engine="aoti")
    with pytest.raises(ValueError, match="no AOTInductor package"):
        load_bundle(bundle[1].path, engine="aoti")


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
        got = loaded(x.cuda(), noise=Noise.given(noise.tensor.cuda())).cpu()
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
        torch.testing.assert_close(loaded(x.cuda(), noise=Noise.given(noise.tensor.cuda())).cpu(), wrapper(x, noise=noise), rtol=0, atol=1e-4)


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
    assert result.info.extra["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert result.info.num_stages == 4
    loaded = load_bundle(result.path)
    x = torch.rand(3, 3, 16, 16)
    noise = _noise(wrapper, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, noise=noise), wrapper(x, noise=noise), rtol=0, atol=1e-4)
        assert torch.equal(loaded.mask(x), wrapper.mask(x))


def test_an_exported_timm_classifier_runs_once_per_call_for_its_logits_and_maps():
    import timm

    from robustwrap.export.modules import ClassifierWithStages

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
