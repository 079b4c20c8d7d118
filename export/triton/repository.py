"""A Triton model repository serving a bundle: two component models and the pipeline model.

Layout written (Triton's convention), for a defense named NAME::

    REPO/NAME-classifier/config.pbtxt, 1/model.onnx        (onnxruntime backend)
                                       1/model.plan        (tensorrt_plan)
                                       1/model.onnx + 1/model.py   (python backend + ONNX Runtime or OpenVINO)
                                       1/model.onnx        (openvino backend, bf16: NVIDIA's CPU containers)
    REPO/NAME-denoiser/...             the same for the denoiser
    REPO/NAME/config.pbtxt, 1/model.py, 1/bundle.json, 1/serving.json    the pipeline (Python, BLS)
    REPO/NAME/... + 1/bundle/           inline components: the pipeline runs the bundle itself (no
                                        component models, no BLS round trips; CPU hosts)

Every model folder also holds ``robustwrap.json`` (what wrote it, and every file it wrote): a
folder without it, or with any file it does not list (the Python backend's ``__pycache__``
aside), is never replaced, so a repository can hold several defenses and the user's own models.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

import robustwrap
from robustwrap.outputs import (Layout, check_output, dumps_strict, loads_strict, only_files, remove_ours,
                                replace_folder, temporary_beside, tidy_leftovers)

from ..engines import PrecisionArg, describe_precision, is_reduced, resolve_precision
from ..engines.adapters import resolve_config
from ..engines.openvino import HINTS as OPENVINO_HINTS
from ..engines.tensorrt import engine_path
from ..format import BUNDLE_LAYOUT, CLASSIFIER, DENOISER, BundleInfo, TensorSpec, package_key
from ..onnx_export import graph_files
from ..verification import find_verification
from .environment import NUMPY_REQUIREMENT

ComponentBackend = Literal["onnxruntime", "tensorrt", "python", "openvino", "inline"]
COMPONENT_BACKENDS = ("onnxruntime", "tensorrt", "python", "openvino", "inline")
BACKEND_HELP = ("how Triton runs the two networks: onnxruntime (NVIDIA's containers), tensorrt (the engines; the default "
                "with TensorRT engines), openvino (Triton's openvino backend, OpenVINO bf16 only), python (ONNX Runtime, "
                "or OpenVINO, in the Python backend: PyTriton's server, `robustwrap serve`) or inline (no component "
                "models: the pipeline runs the bundle itself on ONNX Runtime, OpenVINO or AOTInductor; no BLS round "
                "trip per network call)")
INLINE_ENGINES = ("onnxruntime", "openvino", "aoti")  # what an inline pipeline runs (CPU hosts)
# Triton's openvino backend takes the precision hint only as HINT_BF16 = YES: it cannot pin fp32 (on AMX CPUs
# OpenVINO's default is bf16), so it serves bf16 only; the python backend pins any precision.
OPENVINO_BACKEND_PARAMETERS = {"HINT_BF16": "YES", "PERFORMANCE_HINT": "LATENCY"}
MARKER = "robustwrap.json"
MARKER_FORMAT = "robustwrap-triton-model"
_TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


@dataclass(frozen=True)
class ServingOptions:
    """How the repository serves (every field has a default a CPU host can start with).

    Attributes:
        max_batch_size: images the pipeline runs at once (Triton's dynamic batcher prefers executions of
            this size; an execution or a request with more images runs in chunks of it).
        max_request_batch: the most images one request (or one execution) may hold; larger ones get 400.
        max_queue_size: requests waiting in the pipeline's queue beyond which new ones are refused at
            once (UNAVAILABLE, HTTP 503) instead of waiting without bound.
        queue_timeout_ms: how long a request may wait in the queue before it is refused (UNAVAILABLE);
            a client may ask for less (Triton's per-request timeout).
        component_max_batch: rows per component call (the denoiser sees images x votes rows;
            larger calls are split); TensorRT engine profiles must cover it.
        instances: pipeline model instances (each a stub process running the torch loop).
        component_instances: instances of each component model.
        max_queue_delay_us: how long the dynamic batchers wait to fill a batch.
        instance_kind: "KIND_CPU" or "KIND_GPU" (component models; the pipeline runs on the CPU).
        torch_threads: torch intra-op threads in each pipeline stub (None: torch's default; 1 with inline
            components, where the engines do the heavy work).
        ort_threads: ONNX Runtime intra-op threads in each python-backend component, or the engine's
            threads in each inline pipeline (None: ONNX Runtime's default; inline: the CPUs the server
            may use, :func:`robustwrap.cpus.available_cpus`, divided by ``instances``).
    """

    max_batch_size: int = 8
    max_request_batch: int = 256
    max_queue_size: int = 64
    queue_timeout_ms: int = 30_000
    component_max_batch: int = 64
    instances: int = 1
    component_instances: int = 1
    max_queue_delay_us: int = 500
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    torch_threads: int | None = None
    ort_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_request_batch", "max_queue_size", "queue_timeout_ms",
                     "component_max_batch", "instances", "component_instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.max_queue_delay_us, bool) or not isinstance(self.max_queue_delay_us, int) \
                or self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be an integer >= 0, got {self.max_queue_delay_us!r}")
        for name in ("torch_threads", "ort_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if self.max_request_batch < self.max_batch_size:
            raise ValueError(f"max_request_batch ({self.max_request_batch}) must be at least max_batch_size "
                             f"({self.max_batch_size})")
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(f"instance_kind must be 'KIND_CPU' or 'KIND_GPU', got {self.instance_kind!r}")


def default_name(specs: Mapping[str, Any]) -> str:
    """The defense's model name from a bundle's specs ('mnist-mnist'), else 'robustwrap'."""
    parts = [str(specs[key]) for key in ("classifier", "diffusion") if specs.get(key)]
    return check_name("-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p).strip("_") for p in parts) or "robustwrap")


def check_name(name: str) -> str:
    """A Triton model name: letters, digits, '_' and '-' (not starting with '-' or '.')."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}", name):
        raise ValueError(f"model name must be 1-100 letters, digits, '_' or '-' (not starting with '-'), got {name!r}")
    return name


def _listed_files(folder: Path) -> set[str] | None:
    """The files (relative paths) a model folder's marker lists, or None when it has no readable marker."""
    try:
        marker = loads_strict((folder / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    files = marker.get("files", _EARLIER_FILES)  # markers written before the list named no files
    return {str(name) for name in files} | {MARKER} if isinstance(files, list) else None


def _model_owns(folder: Path, entry: Path) -> bool:
    """A file the marker lists; in a folder, only such files and the Python backend's compiled ``__pycache__``."""
    listed = _listed_files(folder) or set()
    if entry.is_file():
        return entry.name in listed
    return only_files(entry, lambda file: file.relative_to(folder).as_posix() in listed
                      or file.parent.name == "__pycache__" and file.suffix == ".pyc")


# A Triton model folder this module wrote: its marker reads, and it holds only the files the marker lists.
MODEL_LAYOUT = Layout("Triton model", marker=lambda folder: _listed_files(folder) is not None, owns=_model_owns,
                      record=MARKER)
REPOSITORY_LAYOUT = Layout("Triton model repository", marker=lambda _: False, owns=lambda _, __: False)
_EARLIER_FILES = ["config.pbtxt", *(f"1/{name}" for name in ("model.onnx", "model.plan", "model.py", "bundle.json",
                                                             "serving.json", "classifier.onnx.data",
                                                             "denoiser.onnx.data"))]


def is_triton_model(path: Path) -> bool:
    """True when ``path`` is a model folder this module wrote and nothing was added to it."""
    return MODEL_LAYOUT.holds(path)


def check_servable(repository: str | os.PathLike) -> list[str]:
    """The models robustwrap wrote in a repository (its own models beside them are fine).

    Raises:
        ValueError: not a folder, or a folder with no model robustwrap wrote, saying what it looks like
            (a bundle: the likely ``--out`` / ``--triton-repo`` mix-up).
    """
    root = Path(repository)
    if not root.is_dir():
        raise ValueError(f"{repository} is not a folder: pass a Triton model repository "
                         "(robustwrap export --triton-repo DIR writes one)")
    ours = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and MODEL_LAYOUT.holds(entry))
    if ours:
        return ours
    if BUNDLE_LAYOUT.holds(root):
        raise ValueError(f"{repository} is a bundle, not a Triton model repository: write one from it with "
                         f"robustwrap export --out {repository} --triton-repo DIR --triton-backend python "
                         "--overwrite, then serve DIR")
    what = "is empty" if not any(root.iterdir()) else "holds no model robustwrap wrote"
    raise ValueError(f"{repository} {what}: write a defense into it with robustwrap export --triton-repo "
                     f"{repository} --triton-backend python")


def model_names(name: str) -> dict[str, str]:
    """The three model names of a defense: its classifier, its denoiser and the pipeline."""
    check_name(name)
    return {CLASSIFIER: f"{name}-{CLASSIFIER}", DENOISER: f"{name}-{DENOISER}", "pipeline": name}


def check_repository(repository: str | os.PathLike, name: str, overwrite: bool) -> dict[str, bool]:
    """Refuse, before any work, a repository this defense's models may not be written into.

    Returns:
        Per model folder name, whether an earlier one of ours will be replaced (none for a new repository).

    Raises:
        ValueError: the repository is a file or cannot be created; a model folder exists
            (without ``overwrite``) or was not written by robustwrap (robustwrap.outputs' rule).
    """
    root = Path(repository)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a Triton model repository folder")
    if not root.exists():
        check_output(root, overwrite=False, layout=REPOSITORY_LAYOUT)
        return {folder_name: False for folder_name in model_names(name).values()}
    tidy_leftovers(root)  # a killed write's copies beside the repository
    return {folder_name: check_output(root / folder_name, overwrite=overwrite, layout=MODEL_LAYOUT)
            for folder_name in model_names(name).values()}


def _block(tensor: TensorSpec, reshape_scalar: bool) -> str:
    dims = list(tensor.item_shape)
    text = f'  {{\n    name: "{tensor.name}"\n    data_type: {_TRITON_TYPES[tensor.dtype]}\n'
    if dims:
        return text + f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}"
    # A per-row scalar (the denoiser's t: (N,)) travels as (N, 1); reshaped to (N,) for graph backends.
    return text + "    dims: [ 1 ]\n" + ("    reshape: { shape: [ ] }\n" if reshape_scalar else "") + "  }"


def _model_config(name: str, backend: str, inputs: str, outputs: str, max_batch: int, instances: int, kind: str,
                  delay_us: int, parameters: Mapping[str, Any] | None = None, batching: str = "") -> str:
    platform_line = {"onnxruntime": 'backend: "onnxruntime"', "tensorrt": 'platform: "tensorrt_plan"',
                     "python": 'backend: "python"',
                     "openvino": 'backend: "openvino"\ndefault_model_filename: "model.onnx"'}[backend]
    text = (f'name: "{name}"\n{platform_line}\nmax_batch_size: {max_batch}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n{batching}}}\n")
    for key, value in (parameters or {}).items():
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def write_triton_bundle(
    repository: str | os.PathLike,
    bundle: str | os.PathLike,
    *,
    component_backend: ComponentBackend = "onnxruntime",
    name: str | None = None,
    options: ServingOptions | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    engine: Literal["onnxruntime", "openvino"] = "onnxruntime",
    precision: PrecisionArg = None,
) -> dict[str, Path]:
    """Write the three Triton models serving a bundle; return each model's folder by name.

    Args:
        repository: the model repository root (created if missing; other models in it stay).
        bundle: a folder written by :func:`robustwrap.export.export_bundle` (with its
            TensorRT engines for ``component_backend="tensorrt"``).
        component_backend: how Triton runs the two networks: "onnxruntime" (Triton's onnxruntime
            backend), "tensorrt" (tensorrt_plan: the bundle's ``.plan`` engines) or "python"
            (ONNX Runtime or OpenVINO inside the Python backend: for Triton builds without the onnxruntime
            backend, such as PyTriton's server on a CPU host) or "openvino" (Triton's openvino
            backend, in NVIDIA's containers, at ``precision="bf16"`` only: its one precision
            parameter, ``HINT_BF16``, cannot pin fp32, which on AMX CPUs OpenVINO's default is not),
            or "inline": no component models; the pipeline stub runs the bundle itself
            (``load_bundle(engine=, precision=)``: ONNX Runtime, OpenVINO or AOT packages), with
            no BLS round trip per denoiser call (CPU hosts; its threads default to the CPUs the
            server may use divided by the pipeline instances).
        name: the defense's model name (components are NAME-classifier, NAME-denoiser); default
            from the bundle's specs (:func:`default_name`).
        options: batch sizes, instances, threads (:class:`ServingOptions`).
        config_overrides: PurifyConfig fields the served model uses instead of the saved ones.
        overwrite: replace this defense's model folders written earlier (never anything else).
        engine: with ``component_backend="python"`` or ``"inline"``, what runs each network
            (inline: also "aoti"): ONNX Runtime (fp32) or OpenVINO.
        precision: OpenVINO's ("fp32", "bf16", "int8" — the bundle's int8 models — for both networks
            or per network, as in ``load_bundle``). Verify a reduced precision first (``robustwrap verify``).

    Raises:
        ValueError: a bad backend or name, not a bundle, missing engines, bad overrides, a
            model folder that exists (without ``overwrite``) or that robustwrap did not write.
    """
    if component_backend not in COMPONENT_BACKENDS:
        raise ValueError(f"component_backend must be one of {COMPONENT_BACKENDS}, got {component_backend!r}")
    options = options or ServingOptions()
    source = Path(bundle)
    info = BundleInfo.read(source)
    resolve_config(info, config_overrides)  # bad overrides fail here, not in the server
    name = check_name(name) if name is not None else default_name(info.specs)
    names = model_names(name)
    if component_backend == "inline":
        if engine not in INLINE_ENGINES:
            raise ValueError(f"inline components run {list(INLINE_ENGINES)}, got engine {engine!r}")
    elif engine not in ("onnxruntime", "openvino") or (engine != "onnxruntime"
                                                       and component_backend not in ("python", "openvino")):
        raise ValueError(f"engine {engine!r} runs inside the python or inline component backends only")
    engine = "openvino" if component_backend == "openvino" else engine
    precisions = resolve_precision(engine, precision)
    if component_backend == "openvino" and set(precisions.values()) != {"bf16"}:
        raise ValueError(f"Triton's openvino backend serves bf16 only (its HINT_BF16 parameter; it cannot pin fp32), "
                         f"got precision {describe_precision(precisions)}: pass precision='bf16', or serve fp32 and "
                         "int8 with component_backend='python', engine='openvino'")
    if "int8" in precisions.values() and "openvino-int8" not in info.packages:
        raise ValueError(f"{source} has no int8 models: quantise them first (robustwrap.export.quantize_bundle or "
                         "`robustwrap export --engine openvino --precision int8`)")
    missing_packages = sorted({package_key("aoti", p) for p in precisions.values()} - set(info.packages))
    if engine == "aoti" and missing_packages:
        raise ValueError(f"{source} has no {missing_packages} AOTInductor packages: export them with --engine aoti "
                         "(--precision bf16 for bf16)")
    if engine == "aoti" and any(info.packages[package_key("aoti", p)].device != "cpu" for p in precisions.values()):
        raise ValueError(f"{source}'s AOTInductor packages were compiled for CUDA: inline components run on the CPU; "
                         "export the bundle with --engine aoti on a CPU machine")
    if component_backend == "tensorrt":
        missing = [str(engine_path(source, c)) for c in (CLASSIFIER, DENOISER) if not engine_path(source, c).is_file()]
        if missing:
            raise ValueError(f"missing TensorRT engines {missing}: build them with build_bundle_engines "
                             "(robustwrap export --engine trt)")
    replacing = check_repository(repository, name, overwrite)
    root = Path(repository)
    root.mkdir(exist_ok=True)

    work = temporary_beside(root)
    try:
        components = () if component_backend == "inline" else (CLASSIFIER, DENOISER)
        for component in components:
            _write_component(work / names[component], names[component], component, info, source, component_backend,
                             options, engine, precisions[component])
        backend_engine = engine if component_backend in ("python", "openvino", "inline") else component_backend
        served_by = {"engine": backend_engine, "precisions": resolve_precision(backend_engine, None)
                     if component_backend == "tensorrt" else precisions,  # TensorRT's: as its engines were built
                     "verified": _verification(source, engine, precisions, component_backend)}
        if component_backend == "inline":
            served_by["inline"] = {"engine": engine, "precisions": precisions, "threads": options.ort_threads}
            shutil.copytree(source, work / name / "1" / "bundle",  # with verified/: the stub logs its verdict
                            ignore=shutil.ignore_patterns("*.plan", "timing.cache"))  # GPU engines: not run inline
        _write_pipeline(work / name, names, info, options, config_overrides, served_by)
        written = [names["pipeline"], *(names[c] for c in components)]
        for model in written:
            replace_folder(work / model, root / model, replacing=replacing[model], layout=MODEL_LAYOUT)
        for model in set(names.values()) - set(written):  # an earlier export's component models of this defense
            if replacing[model]:
                remove_ours(root / model, layout=MODEL_LAYOUT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {model: root / model for model in written}


def _marker(folder: Path, role: str, info: BundleInfo, backend: str) -> None:
    """Write the marker last, listing every file written into ``folder`` (what a later --overwrite may replace)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / MARKER).write_text(dumps_strict({"format": MARKER_FORMAT, "role": role, "backend": backend,
                                               "specs": dict(info.specs), "files": files}, indent=2) + "\n")


def _write_component(folder: Path, model_name: str, component: str, info: BundleInfo, source: Path, backend: str,
                     options: ServingOptions, engine: str, precision: str) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    if backend == "tensorrt":
        shutil.copyfile(engine_path(source, component), version / "model.plan")
    elif precision == "int8":  # the OpenVINO int8 model and its weights
        model = source / info.packages["openvino-int8"].files[component]
        shutil.copyfile(model, version / "model.xml")
        shutil.copyfile(model.with_suffix(".bin"), version / "model.bin")
    else:
        graph, *data = graph_files(info.file(source, component))
        shutil.copyfile(graph, version / "model.onnx")
        for path in data:  # the graph names its data file: the same name beside model.onnx
            shutil.copyfile(path, version / path.name)
    if backend == "python":
        (version / "model.py").write_text(resources.files(__package__).joinpath("component_model.py").read_text())
    spec = info.components[component]
    reshape = backend != "python"
    parameters = {"intra_op_threads": options.ort_threads} if backend == "python" and options.ort_threads else {}
    if backend == "openvino":  # Triton's openvino backend: its documented parameters
        parameters = dict(OPENVINO_BACKEND_PARAMETERS)
    elif engine == "openvino":  # the component model compiles with exactly this hint (never OpenVINO's default)
        parameters.update({"engine": "openvino", "precision": precision, "openvino_hint": OPENVINO_HINTS[precision]})
    text = _model_config(model_name, backend, ",\n".join(_block(t, reshape) for t in spec.inputs),
                         ",\n".join(_block(t, reshape) for t in spec.outputs), options.component_max_batch,
                         options.component_instances, options.instance_kind, options.max_queue_delay_us, parameters)
    (folder / "config.pbtxt").write_text(text)
    _marker(folder, component, info, backend)


def _verification(bundle: Path, engine: str, precisions: Mapping[str, str], backend: str) -> str | None:
    """The verdict of the bundle's verification of what the components run (python backend), or None."""
    if backend not in ("python", "inline"):
        return None  # Triton's own onnxruntime / tensorrt / openvino backends: not what a record of ours measured
    record = find_verification(bundle, engine, precisions)
    return None if record is None else record.verdict_line


def served_by(model_folder: str | os.PathLike) -> str | None:
    """How a pipeline model's networks run and whether that was verified, in words ("openvino bf16: verified,
    passed (3 checks)"; "... NOT verified: run robustwrap verify"); None for a folder that is not a pipeline."""
    try:
        serving = loads_strict((Path(model_folder) / "1" / "serving.json").read_text())
        engine, precisions, verified = serving["engine"], serving["precisions"], serving["verified"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    words = f"{engine} {describe_precision(precisions)}"
    if verified is not None:
        return f"{words}: verified, {verified}"
    warning = " (a reduced precision!)" if is_reduced(precisions) else ""
    return f"{words}: NOT verified{warning}: robustwrap verify BUNDLE --engine {engine} checks it"


def _write_pipeline(folder: Path, names: Mapping[str, str], info: BundleInfo, options: ServingOptions,
                    config_overrides: Mapping[str, Any] | None, served: Mapping[str, Any]) -> None:
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)  # inline components: the bundle is already copied into it
    (version / "model.py").write_text(resources.files(__package__).joinpath("pipeline_model.py").read_text())
    (version / "bundle.json").write_text(dumps_strict(info.to_dict(), indent=2) + "\n")
    serving = {
        "classifier_model": names[CLASSIFIER],
        "denoiser_model": names[DENOISER],
        "component_max_batch": options.component_max_batch,
        "execution_batch": options.max_batch_size,
        "config_overrides": dict(config_overrides) if config_overrides else None,
        "torch_threads": options.torch_threads,
        "instances": options.instances,
        **served,  # engine, precisions, verified: the verdict of the bundle's record of them, or None
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "robustwrap": robustwrap.__version__, "numpy": NUMPY_REQUIREMENT},
    }
    (version / "serving.json").write_text(dumps_strict(serving, indent=2) + "\n")
    images = TensorSpec("images", ("N", info.channels, *info.image_size))
    seed = '  {\n    name: "seed"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    optional: true\n  }'
    outputs = [TensorSpec("probabilities", ("N", info.num_classes)), TensorSpec("labels", ("N", 1), "int64")]
    batching = (f"  preferred_batch_size: [ {options.max_batch_size} ]\n"
                "  default_queue_policy {\n    timeout_action: REJECT\n"
                f"    default_timeout_microseconds: {options.queue_timeout_ms * 1000}\n"
                f"    allow_timeout_override: true\n    max_queue_size: {options.max_queue_size}\n  }}\n")
    text = _model_config(names["pipeline"], "python", f"{_block(images, False)},\n{seed}",
                         ",\n".join(_block(t, False) for t in outputs), options.max_request_batch, options.instances,
                         "KIND_CPU", options.max_queue_delay_us, batching=batching)
    (folder / "config.pbtxt").write_text(text)
    _marker(folder, "pipeline", info, "python")
