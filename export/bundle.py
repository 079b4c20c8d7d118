"""Component bundles: export each network once, run the library's own loop over engines.

A bundle is a folder::

    DIR/denoiser.onnx      eps(x_t, t): x_t (N, C, Hd, Wd) float32, t (N,) float32 timesteps in [0, 999]
                           -> eps (N, C, Hd, Wd); N dynamic (N = B * S in the wrapper)
    DIR/classifier.onnx    images (N, C, H, W) float32 in [0, 1], **not** normalised: the
                           classifier's normalisation is inside the graph
                           -> logits (N, K), stage_0 ... stage_{M-1} (N, C_m, H_m, W_m)
    DIR/config.json        PurifyConfig, sizes, channels, normalisation, specs, versions, opset
    DIR/README.md          a short card
    DIR/<file>.onnx.data   only for graphs whose weights exceed the external-data threshold

The DDIM loop, the noise and the mask arithmetic are not in any graph: :func:`load_bundle`
builds a :class:`~robustwrap.RobustWrapper` over thin engine adapters (ONNX Runtime sessions
or TensorRT engines), so the number of denoiser calls, ``t_l``, ``U`` and the votes change at
load time without exporting again, and export time and size do not depend on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

import robustwrap
from robustwrap.config import PurifyConfig
from robustwrap.stages import HookedStages, TimmIntermediates
from robustwrap.wrapper import RobustWrapper

from ._optional import require

logger = logging.getLogger(__name__)

FORMAT = "robustwrap-bundle"
FORMAT_VERSION = 1
DENOISER = "denoiser"
CLASSIFIER = "classifier"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METADATA_KEY = "robustwrap"
# A protobuf message cannot exceed 2 GiB: weights above this many bytes go to <file>.onnx.data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
Engine = Literal["onnxruntime", "tensorrt"]


# --- the modules that are exported ---------------------------------------------------------


class ClassifierWithStages(nn.Module):
    """``images in [0, 1] -> (logits, *stage maps)``: the wrapper's normalisation, then the classifier.

    The logits and the maps come from one forward pass where the source allows it: timm models
    through ``forward_intermediates`` + ``forward_head``; hooked sources (torchvision /
    RobustBench layouts, named modules) with a forward hook on the classifier itself that
    records its output. Other sources run the classifier twice. Enter :meth:`attached` around
    tracing so that every hook is registered outside the graph.

    Args:
        wrapper: the eager defense whose ``classifier``, ``normalize`` and ``stages`` are used (shared).
    """

    def __init__(self, wrapper: RobustWrapper) -> None:
        super().__init__()
        self.classifier = wrapper.classifier
        self.normalize = wrapper.normalize
        self.stages = wrapper.stages
        self._logits: list[Tensor] = []

    def _record(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self._logits.append(output)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Context: the stage source's hooks and the logits recorder on the classifier."""
        with self.stages.attached(self.classifier):
            if not isinstance(self.stages, HookedStages):
                yield
                return
            handle = self.classifier.register_forward_hook(self._record)
            try:
                yield
            finally:
                handle.remove()
                self._logits.clear()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = self.normalize(images)
        if isinstance(self.stages, HookedStages):
            self._logits.clear()
            maps = self.stages.capture(self.classifier, x)
            if len(self._logits) != 1:  # not inside attached(): run it again
                self._logits[:] = [self.classifier(x)]
            logits = self._logits.pop()
        elif isinstance(self.stages, TimmIntermediates):
            logits, maps = self.stages.logits_and_maps(self.classifier, x)
        else:
            logits = self.classifier(x)
            maps = self.stages.capture(self.classifier, x)
        return (logits, *maps)


# --- engine adapters -----------------------------------------------------------------------

Runner = Callable[[Mapping[str, Tensor]], Sequence[Tensor]]


class EngineClassifier(nn.Module):
    """A classifier computed by an engine: ``forward(x) -> logits`` and ``stage_maps(x) -> maps``.

    Inference only (no gradient). The wrapper reads the maps through ``stage_maps``
    (:class:`robustwrap.stages.OwnStageMaps`).

    Args:
        runner: ``runner({"images": x}) -> [logits, stage_0, ...]`` for x (N, C, H, W) in [0, 1].
        channels: C, declared so that the wrapper checks its inputs.
    """

    def __init__(self, runner: Runner, channels: int) -> None:
        super().__init__()
        self.runner = runner
        self.in_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, K) logits for (N, C, H, W) images in [0, 1]."""
        return self.runner({"images": x})[0]

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """M stage maps (N, C_m, H_m, W_m) for (N, C, H, W) images in [0, 1]."""
        return list(self.runner({"images": x})[1:])


class EngineEps(nn.Module):
    """An epsilon model computed by an engine: ``forward(x_t, t) -> eps``.

    Args:
        runner: ``runner({"x_t": x_t, "t": t}) -> [eps]`` with x_t (N, C, Hd, Wd) and t (N,) float.
        channels, size: what the engine was exported for (the wrapper reads them).
    """

    size_multiple = 1

    def __init__(self, runner: Runner, channels: int, size: Sequence[int]) -> None:
        super().__init__()
        self.runner = runner
        self.in_channels = channels
        self.sample_size = tuple(size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """(N, C, Hd, Wd) predicted noise."""
        return self.runner({"x_t": x, "t": t.to(torch.float32)})[0]


class OrtRunner:
    """One ONNX Runtime session with torch tensors in and out.

    On CUDA the tensors are bound by data pointer (I/O binding): no host round trip. Outputs
    come back on the inputs' device, in the inputs' dtype.

    Args:
        path: the ONNX file.
        output_shapes: each output's shape without the batch axis (for I/O binding).
        device: "cpu" or "cuda[:i]".
        providers: ONNX Runtime providers; default CPU, or CUDA on a CUDA device
            (pass ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` for TensorRT's EP).
        threads: intra-op threads (CPU); None for ONNX Runtime's default.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        output_shapes: Mapping[str, Sequence[int]],
        device: str | torch.device = "cpu",
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", "export")
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device='cuda' but torch sees no CUDA GPU on this machine")
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            providers = providers or [("CUDAExecutionProvider", {"device_id": index})]
        elif self.device.type != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
        providers = list(providers or ["CPUExecutionProvider"])
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [p for p in names if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeError(
                f"this onnxruntime build lacks {missing} (it has {ort.get_available_providers()}); "
                "on a GPU install 'robustwrap[gpu]' (onnxruntime-gpu) instead of the CPU wheel"
            )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = {name: tuple(output_shapes[name]) for name in self.output_names}

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        if self.device.type == "cpu":
            arrays = {name: value.detach().to("cpu", torch.float32).contiguous().numpy() for name, value in feeds.items()}
            outputs = self.session.run(self.output_names, arrays)
            return [torch.from_numpy(o).to(first.device, first.dtype) for o in outputs]
        return self._run_bound(feeds, first)

    def _run_bound(self, feeds: Mapping[str, Tensor], first: Tensor) -> list[Tensor]:
        import numpy as np

        index = self.device.index
        binding = self.session.io_binding()
        kept = []
        for name, value in feeds.items():
            value = value.detach().to(self.device, torch.float32).contiguous()
            kept.append(value)
            binding.bind_input(name, "cuda", index, np.float32, tuple(value.shape), value.data_ptr())
        batch = first.shape[0]
        outputs = [torch.empty((batch, *self.output_shapes[n]), device=self.device, dtype=torch.float32)
                   for n in self.output_names]
        for name, out in zip(self.output_names, outputs):
            binding.bind_output(name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the inputs are written before ORT reads them
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return [o.to(first.device, first.dtype) for o in outputs]


# --- export --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleExport:
    """What :func:`export_bundle` wrote: the folder, its config.json content and timings."""

    path: Path
    config: dict
    seconds: float
    bytes: int


def _strip(model) -> None:
    """Exporter metadata (stack traces, source paths) and doc strings out; shared initializers once."""
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass, DeduplicateInitializersPass

    ClearMetadataAndDocStringPass()(model)
    DeduplicateInitializersPass()(model)
    model.metadata_props.clear()
    model.doc_string = None
    model.graph.doc_string = None


def _initializer_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _export_component(module: nn.Module, args: tuple, input_names, output_names, path: Path, opset: int,
                      max_batch: int, external_threshold: int, component: str) -> dict:
    """Export one network with a dynamic batch axis, stripped, saved under ``path``; its file facts."""
    onnx = require("onnx", "export")
    import onnx_ir

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = tuple({0: batch} for _ in args)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")  # inputs share it
            program = torch.onnx.export(module, args, dynamo=True, input_names=list(input_names),
                                        output_names=list(output_names), dynamic_shapes=dynamic,
                                        opset_version=opset, optimize=True, verbose=False)
    except Exception as error:  # torch.export / the ONNX translator: many error types, one meaning
        text = str(error).strip()
        raise RuntimeError(
            f"torch.onnx.export could not capture the {component} ({type(error).__name__}: "
            f"{text.splitlines()[0][:300] if text else ''}); it must trace without data-dependent control flow"
        ) from error
    model = program.model
    _strip(model)
    model.metadata_props[METADATA_KEY] = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                     "component": component})
    weights = _initializer_bytes(model)
    external = weights > external_threshold
    data_name = f"{path.name}.data"  # the final file's name: the folder is renamed, never the files
    onnx_ir.save(model, path, external_data=data_name if external else None)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    return {
        "file": path.name,
        "external_data": data_name if external else None,
        "bytes": path.stat().st_size + ((path.parent / data_name).stat().st_size if external else 0),
        "nodes": len(proto.graph.node),
        "inputs": list(input_names),
        "outputs": list(output_names),
    }


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


def _card(info: dict) -> str:
    cfg = info["config"]
    size = "x".join(str(s) for s in info["image_size"])
    dsize = "x".join(str(s) for s in info["diffusion_size"])
    lines = [
        "# robustwrap component bundle",
        "",
        "A classifier defended by heterogeneous-noise diffusion purification (arXiv 2503.01407),",
        "exported as two networks; the purification loop runs in robustwrap's own torch code.",
        "",
        f"- images: {info['channels']} x {size}, float32 in [0, 1] (the classifier's normalisation is inside "
        "classifier.onnx)",
        f"- denoiser.onnx: eps(x_t (N, {info['channels']}, {dsize}), t (N,) float timesteps) -> eps; "
        f"{info['files']['denoiser']['nodes']} nodes",
        f"- classifier.onnx: images -> logits ({info['num_classes']} classes) and {info['num_stages']} stage maps; "
        f"{info['files']['classifier']['nodes']} nodes",
        f"- saved configuration: steps {cfg['steps']}, t_l {cfg['t_l']}, t_s {cfg['t_s']}, U {cfg['resample_steps']}, "
        f"votes {cfg['votes']}, mode {cfg['mode']} ({info['denoiser_calls']} denoiser calls); any of it can change "
        "at load time",
        f"- specs: {json.dumps(info['specs'])}",
        "",
        "```python",
        "from robustwrap.export import load_bundle",
        "wrapper = load_bundle(\"<this folder>\", engine=\"onnxruntime\", device=\"cpu\", config={\"votes\": 4})",
        "labels = wrapper.predict(images)",
        "```",
        "",
    ]
    return "\n".join(lines)


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
) -> BundleExport:
    """Export the wrapper's two networks and its configuration as a bundle folder.

    Args:
        wrapper: the eager defense. Its configuration is saved as the default for loading;
            it does not change what is exported (the loop is not in the graphs).
        out_dir: the bundle folder to create. It is written into a temporary folder beside it
            and renamed at the end: a failure leaves nothing behind.
        image_size: (H, W) the classifier graph is exported for; default ``wrapper.image_size``
            (one of the two is needed). The diffusion size is the wrapper's, else this size.
        specs: how the networks were made (e.g. the CLI's ``{"classifier": "mnist", ...}``), recorded.
        opset: ONNX opset (the dynamo exporter writes 18 to 23; TensorRT 10 reads up to 20).
        max_batch: the largest N the graphs declare.
        external_data_threshold: graphs whose weights exceed this many bytes keep them in
            ``<file>.onnx.data`` (relative location) beside the graph.
        overwrite: replace an existing bundle folder (swapped in only after success).

    Returns:
        :class:`BundleExport` with the config.json content.

    Raises:
        ValueError: no image size, bad opset, an existing target, a missing parent folder.
        RuntimeError: a network that does not trace.
        ImportError: the ``export`` extra is missing.
    """
    require("onnx", "export")
    require("onnxscript", "export")
    if not 18 <= opset <= 23:
        raise ValueError(f"the dynamo exporter writes opsets 18 to 23, got {opset}")
    if max_batch < 2:
        raise ValueError(f"max_batch must be >= 2, got {max_batch}")
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    elif wrapper.image_size is not None:
        size = tuple(wrapper.image_size)
    else:
        raise ValueError("the bundle needs an image size: pass image_size=(H, W) or build the wrapper with image_size=")
    if wrapper.image_size is not None and tuple(wrapper.image_size) != size:
        raise ValueError(f"image_size={size} but the wrapper only takes {tuple(wrapper.image_size)}")
    if wrapper.channels is None:
        raise ValueError("the wrapper does not know its channels: the classifier or diffusion model must declare them")
    target = Path(out_dir)
    if not target.parent.resolve().is_dir():
        raise ValueError(f"cannot write {target}: folder {target.parent} does not exist")
    if target.exists() and not overwrite:
        raise ValueError(f"{target} exists: choose a new folder or pass overwrite=True")
    if not os.access(target.parent.resolve(), os.W_OK):
        raise ValueError(f"cannot write {target}: folder {target.parent} is not writable")

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, wrapper.channels, *size, generator=generator)  # batch 2: export specialises size-1 axes
    diffusion_size = tuple(wrapper.diffusion_size or size)
    x_t = torch.randn(2, wrapper.channels, *diffusion_size, generator=generator)
    t = torch.tensor([200.0, 103.0])
    device = next(wrapper.eps_model.parameters(), images).device
    images, x_t, t = images.to(device), x_t.to(device), t.to(device)

    classifier = ClassifierWithStages(wrapper).eval()
    with torch.no_grad(), classifier.attached():
        outputs = classifier(images)
    stage_names = [f"stage_{i}" for i in range(len(outputs) - 1)]
    output_shapes = {"logits": list(outputs[0].shape[1:]), **{n: list(o.shape[1:]) for n, o in zip(stage_names, outputs[1:])}}

    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        files = {
            DENOISER: _export_component(wrapper.eps_model, (x_t, t), ["x_t", "t"], ["eps"], temporary / f"{DENOISER}.onnx",
                                        opset, max_batch, external_data_threshold, DENOISER),
        }
        with classifier.attached():  # hooks registered outside the traced region
            files[CLASSIFIER] = _export_component(classifier, (images,), ["images"], ["logits", *stage_names],
                                                  temporary / f"{CLASSIFIER}.onnx", opset, max_batch,
                                                  external_data_threshold, CLASSIFIER)
        files[DENOISER]["output_shapes"] = {"eps": [wrapper.channels, *diffusion_size]}
        files[CLASSIFIER]["output_shapes"] = output_shapes
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": wrapper.config.to_dict(),
            "denoiser_calls": wrapper.plan.denoiser_calls,
            "channels": wrapper.channels,
            "image_size": list(size),
            "diffusion_size": list(diffusion_size),
            "resize_mode": getattr(wrapper, "resize_mode", "bilinear"),
            "num_classes": int(outputs[0].shape[1]),
            "num_stages": len(stage_names),
            "stages": wrapper.stages.describe(),
            "normalization": _normalization(wrapper),
            "specs": dict(specs or {}),
            "opset": opset,
            "max_batch": max_batch,
            "files": files,
            "versions": _versions(),
        }
        (temporary / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (temporary / CARD_FILE).write_text(_card(info))
        os.chmod(temporary, 0o755)
        if target.exists():  # overwrite: swap in only now
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    total = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    logger.info("exported bundle %s in %.1f s: %.1f MB; denoiser %d nodes, classifier %d nodes",
                target, seconds, total / 1e6, files[DENOISER]["nodes"], files[CLASSIFIER]["nodes"])
    return BundleExport(target, info, seconds, total)


# --- load ----------------------------------------------------------------------------------


def read_bundle(path: str | os.PathLike) -> dict:
    """The bundle's config.json, checked for its format and version.

    Raises:
        ValueError: not a bundle folder, or a format version this robustwrap cannot read.
    """
    folder = Path(path)
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ValueError(f"{folder} is not a robustwrap bundle (no {CONFIG_FILE}): write one with export_bundle")
    info = json.loads(config.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{config} is not a robustwrap bundle config (format {info.get('format')!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} has bundle format version {info.get('format_version')}; "
                         f"this robustwrap reads version {FORMAT_VERSION}: export it again")
    return info


def resolve_config(info: Mapping[str, Any], config: PurifyConfig | Mapping[str, Any] | None) -> PurifyConfig:
    """The configuration to run: the saved one, a replacement, or the saved one with overrides."""
    fields = {f.name for f in dataclasses.fields(PurifyConfig)}
    saved = PurifyConfig.from_dict(info["config"], source="the bundle's config.json")  # validated, as config files are
    if config is None:
        return saved
    if isinstance(config, PurifyConfig):
        return config
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"unknown PurifyConfig fields {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(saved, **config)
    raise TypeError(f"config must be a PurifyConfig, a mapping of overrides or None, got {type(config).__name__}")


def wrapper_from_engines(info: Mapping[str, Any], classifier_runner: Runner, denoiser_runner: Runner,
                         config: PurifyConfig | Mapping[str, Any] | None = None) -> RobustWrapper:
    """A :class:`RobustWrapper` over engine runners for a bundle described by ``info`` (config.json).

    The one place bundles become wrappers: :func:`load_bundle` and the Triton Python model use it.
    """
    classifier = EngineClassifier(classifier_runner, info["channels"])
    eps = EngineEps(denoiser_runner, info["channels"], info["diffusion_size"])
    return RobustWrapper(classifier, eps, resolve_config(info, config), normalization=None,
                         image_size=tuple(info["image_size"]), diffusion_size=tuple(info["diffusion_size"]),
                         resize_mode=info.get("resize_mode", "bilinear"))


def load_bundle(
    path: str | os.PathLike,
    engine: Engine = "onnxruntime",
    device: str | torch.device | None = None,
    config: PurifyConfig | Mapping[str, Any] | None = None,
    *,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
) -> RobustWrapper:
    """A defended model from a bundle: the library's wrapper over engine-backed networks.

    Args:
        path: a folder written by :func:`export_bundle`.
        engine: "onnxruntime" (the .onnx files) or "tensorrt" (the .plan files written by
            :func:`robustwrap.export.build_bundle_engines`; CUDA only).
        device: "cpu" or "cuda[:i]" (default: "cpu" for ONNX Runtime, "cuda" for TensorRT);
            the engines run there (images on another device are moved and come back).
        config: None (the saved configuration), a :class:`PurifyConfig`, or a mapping of
            overrides such as ``{"steps": 500, "votes": 4}``.
        providers: ONNX Runtime execution providers (e.g. ``["TensorrtExecutionProvider",
            "CUDAExecutionProvider"]``); default CPU, or CUDA on a CUDA device.
        threads: ONNX Runtime intra-op threads (CPU).

    Returns:
        A :class:`RobustWrapper` (inference only: the engines give no gradient) taking
        (B, C, H, W) images in [0, 1]; ``generator=`` and ``noise=`` work as in eager mode.

    Raises:
        ValueError: not a bundle, an unknown engine, bad config overrides.
        RuntimeError: TensorRT without a GPU or without built engines.
    """
    info = read_bundle(path)
    folder = Path(path)
    files = info["files"]
    device = device if device is not None else ("cuda" if engine == "tensorrt" else "cpu")
    if engine == "onnxruntime":
        def runner(component: str):
            return OrtRunner(folder / files[component]["file"], files[component]["output_shapes"], device, providers, threads)
    elif engine == "tensorrt":
        from .tensorrt import EngineRunner

        def runner(component: str):
            plan = folder / f"{component}.plan"
            if not plan.is_file():
                raise RuntimeError(f"{plan} does not exist: build the engines with "
                                   "robustwrap.export.build_bundle_engines(bundle) or `robustwrap export --engine trt`")
            return EngineRunner(plan, device)
    else:
        raise ValueError(f"engine must be 'onnxruntime' or 'tensorrt', got {engine!r}")
    return wrapper_from_engines(info, runner(CLASSIFIER), runner(DENOISER), config)


def bundle_files(path: str | os.PathLike) -> list[Path]:
    """The files one component needs: its graph and the external data files the graph names."""
    onnx = require("onnx", "export")
    graph = Path(path)
    model = onnx.load(str(graph), load_external_data=False)
    locations = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            if entry.get("location") and entry["location"] not in locations:
                locations.append(entry["location"])
    return [graph] + [graph.parent / location for location in locations]
