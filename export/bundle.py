"""Component bundles: export each network once, run the library's own loop over engines.

:func:`export_bundle` writes the folder described in :mod:`robustwrap.export.format` (the
denoiser and the classifier graphs, optionally the whole loop unrolled); :func:`load_bundle`
builds a :class:`~robustwrap.RobustWrapper` over engine runners for the two networks, so the
number of denoiser calls, ``t_l``, ``U`` and the votes change at load time without exporting
again; :func:`load_unrolled` runs the unrolled graph.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch

import robustwrap
from robustwrap.config import PurifyConfig
from robustwrap.cpus import cpu_features
from robustwrap.outputs import check_output, replace_folder, temporary_beside
from robustwrap.wrapper import RobustWrapper

from .engines import (ENGINE_SPECS, Engine, PrecisionArg, describe_precision, is_reduced, open_runner,
                      resolve_precision)
from .engines.adapters import UnrolledModel, wrapper_over_runners
from .format import (BUNDLE_LAYOUT, CARD_FILE, CLASSIFIER, DENOISER, UNROLLED, BundleInfo, ComponentSpec,
                     PackageSet, package_key, split_package_key)
from .modules import AtPrecision, ClassifierWithStages, UnrolledDefense
from .onnx_export import EXTERNAL_DATA_THRESHOLD, GraphFile, export_graph
from .verification import find_verification
from .optional import require

logger = logging.getLogger(__name__)

NoiseMode = Literal["in_graph", "explicit"]


@dataclass(frozen=True)
class BundleExport:
    """What :func:`export_bundle` wrote: the folder, its validated config.json, time and size."""

    path: Path
    info: BundleInfo
    seconds: float
    bytes: int


def export_bundle(
    wrapper: RobustWrapper,
    out_dir: str | os.PathLike,
    *,
    image_size: int | Sequence[int] | None = None,
    specs: Mapping[str, Any] | None = None,
    opset: int = 20,
    max_batch: int = 4096,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    overwrite: bool = False,
    unrolled: bool = False,
    unrolled_noise: NoiseMode = "in_graph",
    aoti: bool | Sequence[str] = False,
) -> BundleExport:
    """Export the wrapper's networks and its configuration as a bundle folder.

    Args:
        wrapper: the eager defense. Its configuration is saved as the default for loading;
            it does not change the two network graphs (the loop is not in them).
        out_dir: the bundle folder to create. It is written into a temporary folder beside it
            and renamed at the end: a failure leaves nothing behind.
        image_size: (H, W) the classifier graph is exported for; default ``wrapper.image_size``
            (one of the two is needed). The diffusion size is the wrapper's, else this size.
        specs: how the networks were made (e.g. the CLI's ``{"classifier": "mnist", ...}``), recorded.
        opset: ONNX opset (the dynamo exporter writes 18 to 23; TensorRT 10 reads up to 20).
        max_batch: the largest N the graphs declare.
        external_data_threshold: graphs whose weights exceed this many bytes keep them in
            ``<file>.onnx.data`` (relative location) beside the graph.
        overwrite: replace an existing bundle folder (only one: see :mod:`robustwrap.outputs`),
            swapped in only after success.
        unrolled: also write ``unrolled.onnx``: the whole loop with the saved configuration
            unrolled into one graph (no Python at serving time; its size and export time grow
            with the denoiser calls: a few calls only). Run it with :func:`load_unrolled`.
        unrolled_noise: "in_graph" (fresh ``RandomNormalLike`` noise per run) or "explicit"
            (a ``noise`` input (B, D, S, C, Hd, Wd): deterministic, comparable with eager).
        aoti: also compile both networks ahead of time with AOTInductor into
            ``<component>.<device>.pt2`` packages for the wrapper's device type (minutes of
            compiling here, none at load time): ``load_bundle(..., engine="aoti")``. True compiles
            them at fp32; a sequence names the precisions to compile (``("fp32", "bf16")``: the
            bf16 packages run the networks under bf16 autocast, ``load_bundle(..., engine="aoti",
            precision="bf16")``; verify them with :func:`robustwrap.export.verify_bundle`).

    Returns:
        :class:`BundleExport`.

    Raises:
        ValueError: no image size, bad opset or noise mode, a target that may not be replaced.
        RuntimeError: a network that does not trace.
        ImportError: the ``export`` extra is missing.
    """
    require("onnx", "export")
    require("onnxscript", "export")
    if not 18 <= opset <= 23:
        raise ValueError(f"the dynamo exporter writes opsets 18 to 23, got {opset}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
        raise ValueError(f"max_batch must be an integer >= 2, got {max_batch!r}")
    aoti_precisions = _aoti_precisions(aoti)
    if unrolled_noise not in ("in_graph", "explicit"):
        raise ValueError(f"unrolled_noise must be 'in_graph' or 'explicit', got {unrolled_noise!r}")
    size = _image_size(wrapper, image_size)
    if wrapper.channels is None:
        raise ValueError("the wrapper does not know its channels: the classifier or diffusion model must declare them")
    target = Path(out_dir)
    replacing = check_output(target, overwrite=overwrite, layout=BUNDLE_LAYOUT)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, wrapper.channels, *size, generator=generator)  # batch 2: export specialises size-1 axes
    diffusion_size = tuple(wrapper.diffusion_size or size)
    x_t = torch.randn(2, wrapper.channels, *diffusion_size, generator=generator)
    t = torch.tensor([200.0, 103.0])
    device = next(wrapper.eps_model.parameters(), images).device
    images, x_t, t = images.to(device), x_t.to(device), t.to(device)
    options = {"opset": opset, "max_batch": max_batch, "external_data_threshold": external_data_threshold}

    temporary = temporary_beside(target)
    try:
        graphs: dict[str, GraphFile] = {
            DENOISER: export_graph(wrapper.eps_model, (x_t, t), temporary / f"{DENOISER}.onnx", ["x_t", "t"], ["eps"],
                                   component=DENOISER, **options)}
        classifier = ClassifierWithStages(wrapper).eval()
        with torch.no_grad(), wrapper.stages.attached(wrapper.classifier):  # hooks outside the traced region
            stage_count = len(classifier(images)) - 1
            graphs[CLASSIFIER] = export_graph(classifier, (images,), temporary / f"{CLASSIFIER}.onnx", ["images"],
                                              ["logits", *[f"stage_{i}" for i in range(stage_count)]],
                                              component=CLASSIFIER, **options)
            if unrolled:
                graphs[UNROLLED] = _export_unrolled(wrapper, images, unrolled_noise, temporary, options)
            packages = _compile_packages(wrapper, classifier, images, x_t, t, temporary, max_batch, aoti_precisions)
        components = {name: ComponentSpec(g.path.name, g.inputs, g.outputs, g.nodes, g.bytes,
                                          unrolled_noise if name == UNROLLED else None) for name, g in graphs.items()}
        info = BundleInfo(
            config=wrapper.config, channels=wrapper.channels, image_size=size, diffusion_size=diffusion_size,
            resize_mode=getattr(wrapper, "resize_mode", "bilinear"),
            num_classes=int(graphs[CLASSIFIER].outputs[0].item_shape[0]), num_stages=stage_count,
            max_batch=max_batch, components=components, specs=dict(specs or {}),
            extra={"denoiser_calls": wrapper.plan.denoiser_calls, "stages": wrapper.stages.describe(),
                   "normalization": _normalization(wrapper), "opset": opset, "versions": _versions()},
            packages=packages,
        )
        info.write(temporary)
        (temporary / CARD_FILE).write_text(_card(info))
        BundleInfo.read(temporary)  # what is written reads back
        os.chmod(temporary, 0o755)
        replace_folder(temporary, target, replacing=replacing, layout=BUNDLE_LAYOUT)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    total = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    logger.info("exported bundle %s in %.1f s: %.1f MB; %s", target, seconds, total / 1e6,
                ", ".join(f"{name} {spec.nodes} nodes" for name, spec in components.items()))
    return BundleExport(target, info, seconds, total)


def _image_size(wrapper: RobustWrapper, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    elif wrapper.image_size is not None:
        size = tuple(wrapper.image_size)
    else:
        raise ValueError("the bundle needs an image size: pass image_size=(H, W) or build the wrapper with image_size=")
    if wrapper.image_size is not None and tuple(wrapper.image_size) != size:
        raise ValueError(f"image_size={size} but the wrapper only takes {tuple(wrapper.image_size)}")
    return size  # type: ignore[return-value]


def _export_unrolled(wrapper: RobustWrapper, images: torch.Tensor, noise: NoiseMode, folder: Path,
                     options: Mapping[str, Any]) -> GraphFile:
    module = UnrolledDefense(wrapper, explicit_noise=noise == "explicit").eval()
    args: tuple[torch.Tensor, ...] = (images,)
    if noise == "explicit":
        args = (images, torch.randn(wrapper.noise_shape(images), generator=torch.Generator().manual_seed(1)).to(images))
    return export_graph(module, args, folder / f"{UNROLLED}.onnx", module.input_names, module.output_names,
                        component=UNROLLED, **options)


def _aoti_precisions(aoti: bool | Sequence[str]) -> tuple[str, ...]:
    """The precisions ``export_bundle(aoti=)`` compiles packages at (none for False)."""
    if isinstance(aoti, bool):
        return ("fp32",) if aoti else ()
    chosen = (aoti,) if isinstance(aoti, str) else tuple(aoti)
    allowed = ENGINE_SPECS["aoti"].precisions
    if not chosen or any(p not in allowed for p in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"aoti must be a bool or distinct precisions of {list(allowed)}, got {aoti!r}")
    return chosen


def _compile_packages(wrapper: RobustWrapper, classifier: ClassifierWithStages, images: torch.Tensor,
                      x_t: torch.Tensor, t: torch.Tensor, folder: Path, max_batch: int,
                      precisions: Sequence[str]) -> dict[str, PackageSet]:
    """AOTInductor packages of both networks, one set per precision, for the device the example inputs are on."""
    from .engines.aoti import compile_package, package_file

    device = images.device.type
    packages = {}
    for precision in precisions:
        networks = {DENOISER: wrapper.eps_model, CLASSIFIER: classifier}
        if precision != "fp32":
            networks = {name: AtPrecision(network, precision) for name, network in networks.items()}
        files = {name: package_file(name, device, precision) for name in (CLASSIFIER, DENOISER)}
        compile_package(networks[DENOISER], (x_t, t), folder / files[DENOISER], max_batch=max_batch)
        compile_package(networks[CLASSIFIER], (images,), folder / files[CLASSIFIER], max_batch=max_batch)
        packages[package_key("aoti", precision)] = PackageSet(device, torch.__version__, files)
    return packages


def _normalization(wrapper: RobustWrapper) -> dict | None:
    mean, std = getattr(wrapper.normalize, "mean", None), getattr(wrapper.normalize, "std", None)
    if mean is None or std is None:
        return None
    return {"mean": [float(f"{v:.7g}") for v in mean.flatten().tolist()],
            "std": [float(f"{v:.7g}") for v in std.flatten().tolist()],
            "applied": "inside classifier.onnx"}


def _versions() -> dict:
    import importlib.metadata as metadata

    found = {"python": platform.python_version(), "robustwrap": robustwrap.__version__, "torch": torch.__version__}
    for name in ("onnx", "onnxscript", "onnx_ir", "onnxruntime"):
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return found


def _card(info: BundleInfo) -> str:
    cfg, parts = info.config, info.components
    size = "x".join(str(s) for s in info.image_size)
    dsize = "x".join(str(s) for s in info.diffusion_size)
    lines = [
        "# robustwrap component bundle",
        "",
        "A classifier defended by heterogeneous-noise diffusion purification (arXiv 2503.01407),",
        "exported as two networks; the purification loop runs in robustwrap's own torch code.",
        "",
        f"- images: {info.channels} x {size}, float32 in [0, 1] (the classifier's normalisation is inside "
        "classifier.onnx)",
        f"- denoiser.onnx: eps(x_t (N, {info.channels}, {dsize}), t (N,) float timesteps) -> eps; "
        f"{parts[DENOISER].nodes} nodes",
        f"- classifier.onnx: images -> logits ({info.num_classes} classes) and {info.num_stages} stage maps; "
        f"{parts[CLASSIFIER].nodes} nodes",
    ]
    for engine, package in info.packages.items():
        lines.append(f"- {engine} packages for {package.device} (torch {package.torch}): "
                     f"{', '.join(package.files.values())}; load with engine=\"{engine}\"")
    if UNROLLED in parts:
        lines.append(f"- unrolled.onnx: the whole loop at the saved configuration, {parts[UNROLLED].noise} noise; "
                     f"{parts[UNROLLED].nodes} nodes")
    lines += [
        f"- saved configuration: steps {cfg.steps}, t_l {cfg.t_l}, t_s {cfg.t_s}, U {cfg.resample_steps}, "
        f"votes {cfg.votes}, mode {cfg.mode} ({info.extra.get('denoiser_calls')} denoiser calls); any of it can "
        "change at load time",
        f"- specs: {json.dumps(dict(info.specs))}",
        "",
        "```python",
        "from robustwrap import Noise",
        "from robustwrap.export import load_bundle",
        "wrapper = load_bundle(\"<this folder>\", engine=\"onnxruntime\", device=\"cpu\", config={\"votes\": 4})",
        "labels = wrapper.predict(images, noise=Noise.seeded(seeds))   # seeds: (B,) int64, one per image",
        "```",
        "",
    ]
    return "\n".join(lines)


def read_bundle(path: str | os.PathLike) -> BundleInfo:
    """The bundle's validated ``config.json`` (see :class:`~robustwrap.export.format.BundleInfo`)."""
    return BundleInfo.read(path)


def load_bundle(
    path: str | os.PathLike,
    engine: Engine = "onnxruntime",
    device: str | torch.device | None = None,
    config: PurifyConfig | Mapping[str, Any] | None = None,
    *,
    precision: PrecisionArg = None,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> RobustWrapper:
    """A defended model from a bundle: the library's wrapper over engine-backed networks.

    Args:
        path: a folder written by :func:`export_bundle`.
        engine: "onnxruntime" (the .onnx files), "tensorrt" (the .plan files written by
            :func:`robustwrap.export.build_bundle_engines`; CUDA only), "aoti" (the
            AOTInductor packages of ``export_bundle(..., aoti=True)``; nothing is compiled) or
            "openvino" (the .onnx files compiled by OpenVINO for the CPU, cached): the names of
            :data:`robustwrap.export.engines.ENGINE_SPECS`.
        device: "cpu" or "cuda[:i]" (default: "cpu" for ONNX Runtime, "cuda" for TensorRT, the
            packages' device for AOTInductor);
            the engines run there (images on another device are moved and come back).
        config: None (the saved configuration), a :class:`PurifyConfig`, or a mapping of
            overrides such as ``{"steps": 500, "votes": 4}`` (validated like config files).
        precision: None (the engine's default: fp32; TensorRT: as built), one of the engine's
            precisions for both networks (OpenVINO: "fp32" or "bf16"), or one per network
            (``{"classifier": "fp32", "denoiser": "bf16"}``). A reduced precision changes the
            defense's function: :func:`robustwrap.export.verify` says whether it still decides as
            the fp32 eager defense does; loading logs whether this engine and precision were verified.
        providers: ONNX Runtime execution providers (e.g. ``["TensorrtExecutionProvider",
            "CUDAExecutionProvider"]``); default CPU, or CUDA on a CUDA device.
        threads: ONNX Runtime intra-op threads (CPU).

    Returns:
        A :class:`RobustWrapper` (inference only: the engines give no gradient) taking
        (B, C, H, W) images in [0, 1]; ``noise=`` (:class:`robustwrap.Noise`) works as in
        eager mode, and the same seeds give the same answer as the eager wrapper.

    Raises:
        ValueError: not a bundle or a malformed one (naming the problem), an unknown engine,
            bad config overrides, a graph that does not match its recorded contract.
        RuntimeError: TensorRT without a GPU or without built engines.
    """
    info = BundleInfo.read(path)
    precisions = resolve_precision(engine, precision)
    device = device if device is not None else _default_device(info, engine)
    runners = [open_runner(info, path, component, engine, device, precision=precisions[component]
                           if ENGINE_SPECS[engine].precisions else None, providers=providers, threads=threads)
               for component in (CLASSIFIER, DENOISER)]
    wrapper = wrapper_over_runners(info, *runners, config)
    _check_outputs(info, path, wrapper)
    _log_verification(Path(path), engine, precisions, torch.device(device).type)
    return wrapper


def _log_verification(bundle: Path, engine: str, precisions: Mapping[str, str], device_type: str) -> None:
    """Log whether this engine at these precisions was verified against the eager defense (a warning when a
    reduced precision was not, or was verified on a CPU with other features than this one when it runs on the CPU)."""
    record = find_verification(bundle, engine, precisions)
    if record is not None:
        logger.info("%s: %s at %s was verified: %s", bundle, engine, describe_precision(precisions), record.verdict_line)
        verified_on, here = record.versions.get("cpu"), cpu_features()
        if is_reduced(precisions) and device_type == "cpu" and verified_on not in (None, here):
            logger.warning("%s: %s at %s was verified on a CPU with %s; this one has %s, and reduced-precision kernels "
                           "differ between CPUs: verify it on this machine", bundle, engine,
                           describe_precision(precisions), verified_on, here)
    elif is_reduced(precisions):
        logger.warning("%s: %s at %s was not verified against the fp32 eager defense: run `robustwrap verify %s "
                       "--engine %s --precision ...` before deploying it", bundle, engine,
                       describe_precision(precisions), bundle, engine)


def _default_device(info: BundleInfo, engine: str) -> str:
    """CUDA for TensorRT, the packages' device for AOTInductor, else the CPU."""
    aoti = [package for key, package in info.packages.items() if split_package_key(key)[0] == "aoti"]
    if engine == "aoti" and aoti:
        return aoti[0].device
    return "cuda" if engine == "tensorrt" else "cpu"


def _check_outputs(info: BundleInfo, path: str | os.PathLike, wrapper: RobustWrapper) -> None:
    """One tiny run: the graphs' outputs have the shapes config.json records (swapped files fail here)."""
    classifier = info.components[CLASSIFIER]
    images = torch.full((1, info.channels, *info.image_size), 0.5)
    with torch.no_grad():
        outputs = wrapper.classifier.runner({"images": images})
        eps = wrapper.eps_model(torch.zeros(1, info.channels, *info.diffusion_size), torch.tensor([1.0]))
    got = [tuple(o.shape[1:]) for o in outputs] + [tuple(eps.shape[1:])]
    want = [t.item_shape for t in classifier.outputs] + [info.components[DENOISER].outputs[0].item_shape]
    if got != want:
        raise ValueError(f"{path}: the graphs give outputs of shapes {got}, but config.json records {want}: "
                         "a file was replaced or the config edited; export the bundle again")


def load_unrolled(
    path: str | os.PathLike,
    engine: Engine = "onnxruntime",
    device: str | torch.device | None = None,
    *,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> UnrolledModel:
    """The bundle's unrolled graph (``export_bundle(..., unrolled=True)``) behind a small model.

    Returns:
        :class:`~robustwrap.export.engines.adapters.UnrolledModel`: ``model(images[, noise])
        -> (probabilities (B, K), labels (B,))``, the configuration fixed at export.

    Raises:
        ValueError: not a bundle, or a bundle without an unrolled graph.
    """
    info = BundleInfo.read(path)
    device = device if device is not None else _default_device(info, engine)
    runner = open_runner(info, path, UNROLLED, engine, device, providers=providers, threads=threads)
    return UnrolledModel(runner, info.components[UNROLLED], info.channels, info.image_size)
