"""OpenVINO: a bundle's ONNX graphs compiled for the CPU, at fp32 or bf16 (AMX / AVX-512 where the CPU has
them), or its int8 models (:func:`quantize_bundle`: NNCF post-training quantisation).

OpenVINO reads the bundle's ``.onnx`` files as they are (dynamic batch included): nothing is
exported again for fp32 and bf16. Compiled models are cached (OpenVINO's ``CACHE_DIR``), so a warm start skips
compilation. The precision is OpenVINO's ``INFERENCE_PRECISION_HINT``, always set explicitly:
on a CPU with bf16 units an unset hint means bf16, which would change the defense silently. On a
CPU without them OpenVINO ignores a bf16 hint and runs f32 (its compiled model then reports f32):
bf16 is refused there rather than run at another precision under its name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..format import TORCH_DTYPES, ComponentSpec
from ..optional import require
from .runner import like_caller

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # precision -> OpenVINO's hint (int8: the unquantised ops at f32)


def default_cache_dir() -> Path:
    """Where compiled models are cached: ``$ROBUSTWRAP_CACHE/openvino``, else ``~/.cache/robustwrap/openvino``."""
    root = os.environ.get("ROBUSTWRAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "robustwrap")
    return Path(root) / "openvino"


class OpenVinoRunner:
    """One OpenVINO compiled model behind the :class:`~robustwrap.export.engines.Runner` protocol.

    Tensors go through numpy; outputs are copied (OpenVINO reuses its output buffers between
    calls) and come back on the first input's device, floats in its dtype.

    Args:
        path: the ONNX file (fp32, bf16) or the int8 model's ``.xml``.
        spec: the graph's recorded contract (names, shapes, dtypes).
        precision: "fp32", "bf16" or "int8" (the kernels' precision; inputs and outputs stay float32).
        threads: inference threads; None for OpenVINO's default.
        cache_dir: the compiled-model cache; None for :func:`default_cache_dir`.

    Raises:
        ValueError: a precision OpenVINO does not run here, or a graph whose tensors differ from
            the recorded contract.
        ImportError: the ``openvino`` extra is missing.
    """

    def __init__(self, path: str | os.PathLike, spec: ComponentSpec, precision: str = "fp32",
                 threads: int | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        ov = require("openvino", "openvino")
        if precision not in HINTS:
            raise ValueError(f"OpenVINO runs the bundle's graphs at {sorted(HINTS)}, got precision={precision!r}")
        core = ov.Core()
        if precision == "bf16":
            check_bf16(core)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        properties = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(path), "CPU", properties)
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # an ov.Type: "f32", "bf16"
        if ran != HINTS[precision]:
            raise ValueError(f"OpenVINO compiled {Path(path).name} at {ran} when {HINTS[precision]} was asked for: "
                             "refused rather than run at another precision")
        self.precision = precision
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        if self.input_names != spec.input_names or self.output_names != spec.output_names:
            raise ValueError(f"{path} has inputs {self.input_names} and outputs {self.output_names}, but the bundle "
                             f"records {spec.input_names} and {spec.output_names}: a file was replaced; export again")
        self.spec = spec
        self.request = self.compiled.create_infer_request()

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        arrays = {t.name: feeds[t.name].detach().to("cpu", TORCH_DTYPES[t.dtype]).contiguous().numpy()
                  for t in self.spec.inputs}
        results = self.request.infer(arrays)
        outputs = [torch.from_numpy(results[port].copy()) for port in self.compiled.outputs]
        return like_caller(outputs, first)


def check_bf16(core) -> None:
    """ValueError unless OpenVINO's CPU plugin can run bf16 here (its ``OPTIMIZATION_CAPABILITIES`` name BF16)."""
    capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" not in capabilities:
        raise ValueError(f"this CPU has no bf16 units (OpenVINO's CPU capabilities: {', '.join(capabilities)}; "
                         "bf16 needs AVX-512 bf16 or AMX): OpenVINO would run f32 under the name bf16. "
                         "Load precision='fp32', or 'int8' after quantize_bundle")


def quantize_bundle(bundle: str | os.PathLike, eager, data: str = "mnist5k:train", n: int = 32, seed: int = 0,
                    batch_size: int = 8):
    """Quantise both networks of a bundle to int8 with NNCF, calibrated on what they see when defending ``data``.

    The calibration inputs are the networks' real inputs: the classifier's (the images, and the
    purified images it labels) and the denoiser's (every state and timestep of the reverse chain),
    recorded by running the fp32 eager defense on a seeded stratified subset of ``n`` images of
    ``data``. Keep them apart from the images a verification uses (the default is MNIST's train
    split; ``robustwrap verify`` uses the held-out one). Writes ``<component>.int8.xml`` / ``.bin``
    and records them, with the calibration set, as ``packages["openvino-int8"]`` in config.json.

    Args:
        bundle: the bundle folder (its ONNX graphs are read, nothing else changes).
        eager: the fp32 eager defense the bundle was exported from.
        data, n, seed: the calibration images (a data spec of :mod:`robustwrap.data`).
        batch_size: images per recorded purification.

    Returns:
        The :class:`~robustwrap.export.format.PackageSet` recorded.

    Raises:
        ImportError: the ``openvino`` extra (openvino, nncf) is missing.
        ValueError: the data does not fit the defense.
    """
    import dataclasses

    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    from robustwrap.data import draw_subset, load_dataset
    from robustwrap.evaluation import check_inputs, image_seeds
    from robustwrap.fingerprint import tensor_digest
    from robustwrap.noise import Noise
    from robustwrap.outputs import dumps_strict, write_text_atomic

    from ..format import CLASSIFIER, CONFIG_FILE, DENOISER, BundleInfo, PackageSet, package_key

    folder = Path(bundle)
    info = BundleInfo.read(folder)
    images, labels = load_dataset(data)
    indices, subset = draw_subset(labels, n, seed, spec=data)
    images, labels = images[indices], labels[indices]
    check_inputs(eager, images, labels, info.num_classes)
    samples: dict[str, list[dict]] = {CLASSIFIER: [], DENOISER: []}
    seeds = image_seeds(seed, indices.tolist())
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size]
            trace = eager.purify_trace(x, noise=Noise.seeded(seeds[start:start + batch_size]))
            for image_batch in (x, trace.purified.flatten(0, 1)):
                samples[CLASSIFIER].append({"images": image_batch.numpy()})
            for step, state in trace.states:
                timesteps = torch.full((state.shape[0],), float(step.t_model))
                samples[DENOISER].append({"x_t": state.contiguous().numpy(), "t": timesteps.numpy()})
    files = {component: f"{component}.int8.xml" for component in (CLASSIFIER, DENOISER)}
    for component, items in samples.items():
        model = ov.Core().read_model(str(info.file(folder, component)))
        quantised = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
        ov.save_model(quantised, str(folder / files[component]), compress_to_fp16=False)
    calibration = {"data": data, "subset": {k: v for k, v in subset.items() if k != "indices"}, "seed": seed,
                   "fingerprint": {"images": tensor_digest(images), "labels": tensor_digest(labels)},
                   "samples": {component: len(items) for component, items in samples.items()},
                   "openvino": ov.__version__, "nncf": nncf.__version__}
    package = PackageSet("cpu", torch.__version__, files, calibration)
    updated = dataclasses.replace(info, packages={**info.packages, package_key("openvino", "int8"): package})
    write_text_atomic(folder / CONFIG_FILE, dumps_strict(updated.to_dict(), indent=2) + "\n")
    return package
