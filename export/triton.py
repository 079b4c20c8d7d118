"""A Triton Inference Server model repository for an exported defense.

Layout written (Triton's convention)::

    DIR/<model_name>/config.pbtxt
    DIR/<model_name>/1/model.onnx        (onnxruntime backend)   or   1/model.plan (tensorrt_plan)

Every input and output of the exported graph is batch-first, so Triton's dynamic batcher can
stack requests along axis 0.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Sequence

from ._optional import require

Backend = Literal["onnxruntime", "tensorrt"]
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64"}  # onnx.TensorProto element types

Tensor = tuple[str, str, Sequence[int]]  # (name, Triton data type, dims without the batch axis)


def _tensor_block(name: str, data_type: str, dims: Sequence[int]) -> str:
    # A per-item scalar (labels: (B,)) is declared as [1] and reshaped to [] for the model.
    dims_text = f"[ {', '.join(str(d) for d in dims)} ]" if dims else "[ 1 ]\n    reshape: { shape: [ ] }"
    return f"  {{\n    name: \"{name}\"\n    data_type: {data_type}\n    dims: {dims_text}\n  }}"


def triton_config(
    model_name: str,
    backend: Backend,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    max_batch_size: int,
    max_queue_delay_us: int = 100,
) -> str:
    """Text of ``config.pbtxt`` for tensors given as (name, Triton data type, dims without the batch)."""
    platform = 'backend: "onnxruntime"' if backend == "onnxruntime" else 'platform: "tensorrt_plan"'

    def blocks(tensors: Sequence[Tensor]) -> str:
        return ",\n".join(_tensor_block(*tensor) for tensor in tensors)

    return (
        f'name: "{model_name}"\n{platform}\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{blocks(inputs)}\n]\n"
        f"output [\n{blocks(outputs)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
    )


def write_triton_repository(
    repository: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    model_name: str = "robustwrap",
    backend: Backend = "onnxruntime",
    engine_path: str | os.PathLike | None = None,
    max_batch_size: int = 32,
    version: int = 1,
) -> Path:
    """Write (or update) a model folder for Triton and return its path.

    Args:
        repository: the model repository root (created if missing).
        onnx_path: the exported graph; its inputs and outputs define the config.
        backend: ``"onnxruntime"`` serves the ONNX file; ``"tensorrt"`` serves ``engine_path``.
    """
    onnx = require("onnx", "export")

    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
    if backend == "tensorrt" and engine_path is None:
        raise ValueError("the tensorrt backend needs engine_path (build it with robustwrap.export.build_engine)")
    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values) -> list[Tensor]:
        return [
            (v.name, _ONNX_TO_TRITON[v.type.tensor_type.elem_type], [d.dim_value for d in v.type.tensor_type.shape.dim][1:])
            for v in values
        ]

    folder = Path(repository) / model_name
    version_folder = folder / str(version)
    version_folder.mkdir(parents=True, exist_ok=True)
    if backend == "onnxruntime":
        from .bundle import bundle_files

        graph, *data = bundle_files(onnx_path)
        shutil.copyfile(graph, version_folder / "model.onnx")
        for data_file in data:  # the graph names its data file: the same name beside model.onnx
            shutil.copyfile(data_file, version_folder / data_file.name)
    else:
        shutil.copyfile(Path(engine_path), version_folder / "model.plan")
    config = triton_config(model_name, backend, describe(model.graph.input), describe(model.graph.output), max_batch_size)
    (folder / "config.pbtxt").write_text(config)
    return folder


# --- component bundles: two engine models and a Python-backend model over BLS ---------------

PYTHON_MODEL = '''"""robustwrap's defended classifier as a Triton Python-backend model (written by robustwrap).

The purification loop, the noise and the mask run here, in robustwrap's own torch code; the
two networks are the "{classifier}" and "{denoiser}" models of this repository, called through
BLS. The Python backend's environment needs robustwrap and torch installed.

Inputs: images (B, C, H, W) float32 in [0, 1]; optional seed (B, 1) int64: the first row's
seed draws the request's noise (reproducible), else fresh noise.
Outputs: probabilities (B, K) mean over the votes; labels (B,) by the configured vote rule.
"""

import json
import os

import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

from robustwrap.export.bundle import wrapper_from_engines
from robustwrap.vote import vote_labels


class _Bls:
    """A component model called through BLS: ``runner({{name: tensor}}) -> [outputs]``."""

    def __init__(self, model_name, output_names, max_batch):
        self.model_name = model_name
        self.output_names = list(output_names)
        self.max_batch = max_batch

    def __call__(self, feeds):
        rows = next(iter(feeds.values())).shape[0]
        if rows <= self.max_batch:
            return self._call(feeds)
        parts = [self._call({{name: value[i:i + self.max_batch] for name, value in feeds.items()}})
                 for i in range(0, rows, self.max_batch)]  # the component model takes max_batch rows per request
        return [torch.cat(chunks) for chunks in zip(*parts)]

    def _call(self, feeds):
        device = next(iter(feeds.values())).device
        inputs = []
        for name, value in feeds.items():
            value = value.detach().float().contiguous()
            if value.dim() == 1:  # per-row scalars (t) are declared dims [1], reshaped to [] for the network
                value = value.reshape(-1, 1)
            inputs.append(pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value)))
        request = pb_utils.InferenceRequest(model_name=self.model_name, inputs=inputs,
                                            requested_output_names=self.output_names)
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{{self.model_name}}: {{response.error().message()}}")
        outputs = []
        for name in self.output_names:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            outputs.append(dlpack.from_dlpack(tensor.to_dlpack()).to(device))
        return outputs


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "bundle.json")) as file:
            info = json.load(file)
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0))) if gpu else torch.device("cpu")
        stage_names = [f"stage_{{i}}" for i in range(info["num_stages"])]
        self.wrapper = wrapper_from_engines(
            info, _Bls("{classifier}", ["logits", *stage_names], {max_batch}), _Bls("{denoiser}", ["eps"], {max_batch}),
            {overrides},
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "images").as_numpy().copy())
                images = images.to(self.device)
                seed = pb_utils.get_input_tensor_by_name(request, "seed")
                generator = None
                if seed is not None:
                    generator = torch.Generator(self.device).manual_seed(int(seed.as_numpy().reshape(-1)[0]))
                with torch.no_grad():
                    probs = self.wrapper.vote_probabilities(images, generator=generator)
                labels = vote_labels(probs, self.wrapper.config.vote)
                outputs = [pb_utils.Tensor("probabilities", probs.mean(0).float().cpu().numpy()),
                           pb_utils.Tensor("labels", labels.cpu().numpy())]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except (ValueError, TypeError, pb_utils.TritonModelException) as error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error))))
        return responses
'''


def write_triton_bundle(
    repository: str | os.PathLike,
    bundle: str | os.PathLike,
    *,
    backend: Backend = "onnxruntime",
    model_name: str = "robustwrap",
    component_prefix: str = "",
    max_batch_size: int = 64,
    config_overrides: dict | None = None,
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU",
    version: int = 1,
) -> dict[str, Path]:
    """Write a Triton repository serving a component bundle; return each model's folder.

    Three models: ``<prefix>classifier`` and ``<prefix>denoiser`` (the bundle's graphs on the
    onnxruntime backend, or its TensorRT engines on ``tensorrt_plan``; dynamic batching) and
    ``model_name``, a Python-backend model whose ``model.py`` builds robustwrap's wrapper over
    BLS calls to the two. External data files travel with their graph under the name the graph
    records.

    Args:
        repository: the model repository root (created if missing).
        bundle: a folder written by :func:`robustwrap.export.export_bundle` (with ``*.plan``
            files for ``backend="tensorrt"``).
        max_batch_size: rows per component request (the denoiser sees B * S rows; larger
            calls are split); the TensorRT engines' profiles must cover it.
        config_overrides: PurifyConfig fields the served model uses instead of the saved ones.
        instance_kind: where the Python model runs its torch loop.

    Raises:
        ValueError: bad backend, not a bundle, missing engines, bad overrides.
    """
    from .bundle import CLASSIFIER, DENOISER, bundle_files, read_bundle, resolve_config

    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    source = Path(bundle)
    info = read_bundle(source)
    resolve_config(info, config_overrides)  # bad overrides fail here, not in the server
    names = {CLASSIFIER: component_prefix + CLASSIFIER, DENOISER: component_prefix + DENOISER}
    channels, size, dsize = info["channels"], info["image_size"], info["diffusion_size"]
    tensors = {
        DENOISER: ([("x_t", "TYPE_FP32", [channels, *dsize]), ("t", "TYPE_FP32", [])],
                   [("eps", "TYPE_FP32", info["files"][DENOISER]["output_shapes"]["eps"])]),
        CLASSIFIER: ([("images", "TYPE_FP32", [channels, *size])],
                     [(name, "TYPE_FP32", shape) for name, shape in info["files"][CLASSIFIER]["output_shapes"].items()]),
    }
    if backend == "tensorrt":
        missing = [str(source / f"{c}.plan") for c in names if not (source / f"{c}.plan").is_file()]
        if missing:
            raise ValueError(f"missing TensorRT engines {missing}: build them with build_bundle_engines")
    root = Path(repository)
    folders = {}
    for component, name in names.items():
        folder = root / name
        version_folder = folder / str(version)
        version_folder.mkdir(parents=True, exist_ok=True)
        if backend == "onnxruntime":
            graph, *data = bundle_files(source / info["files"][component]["file"])
            shutil.copyfile(graph, version_folder / "model.onnx")
            for path in data:  # the graph names its data file: same name beside model.onnx
                shutil.copyfile(path, version_folder / path.name)
        else:
            shutil.copyfile(source / f"{component}.plan", version_folder / "model.plan")
        inputs, outputs = tensors[component]
        (folder / "config.pbtxt").write_text(triton_config(name, backend, inputs, outputs, max_batch_size))
        folders[component] = folder

    folder = root / model_name
    version_folder = folder / str(version)
    version_folder.mkdir(parents=True, exist_ok=True)
    (version_folder / "bundle.json").write_text((source / "config.json").read_text())
    (version_folder / "model.py").write_text(PYTHON_MODEL.format(
        classifier=names[CLASSIFIER], denoiser=names[DENOISER], overrides=repr(config_overrides or None), max_batch=max_batch_size))
    config = (
        f'name: "{model_name}"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n{_tensor_block('images', 'TYPE_FP32', [-1, channels, *size])},\n"
        f"  {{\n    name: \"seed\"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    optional: true\n  }}\n]\n"
        f"output [\n{_tensor_block('probabilities', 'TYPE_FP32', [-1, info['num_classes']])},\n"
        f"{_tensor_block('labels', 'TYPE_INT64', [-1])}\n]\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]\n"
    )
    (folder / "config.pbtxt").write_text(config)
    folders[model_name] = folder
    return folders
