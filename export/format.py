"""The bundle folder: what ``config.json`` holds, read and validated into one typed object.

A bundle is a folder::

    DIR/config.json        this file's format (below)
    DIR/README.md          a short card
    DIR/denoiser.onnx      eps(x_t (N, C, Hd, Wd) float32, t (N,) float32 timesteps in [0, 999]) -> eps
    DIR/classifier.onnx    images (N, C, H, W) float32 in [0, 1] -> logits (N, K), stage_0 .. stage_{M-1}
    DIR/unrolled.onnx      optional: the whole loop unrolled, images [, noise] -> probabilities, labels
    DIR/<file>.onnx.data   only for graphs whose weights exceed the external-data threshold
    DIR/<component>.plan   optional TensorRT engines (CUDA), built from the .onnx files
    DIR/<component>.<device>.pt2   optional AOTInductor packages (``engine="aoti"``), compiled from
                           the networks themselves for one device type and one torch version
    DIR/<component>.<device>.bf16.pt2   the same at bf16 (``engine="aoti", precision="bf16"``)
    DIR/<component>.int8.xml, .bin   optional OpenVINO int8 models (``engine="openvino", precision="int8"``),
                           quantised by NNCF post-training on recorded calibration images
    DIR/timing.cache       optional: TensorRT's timing cache (faster rebuilds of the engines)
    DIR/verified/          optional: verification records of the engines run from this bundle

A folder is a bundle robustwrap may replace (``--overwrite``) only when it holds nothing else
(:data:`BUNDLE_LAYOUT`): a file the user added beside these makes it theirs.

``config.json`` records, per component, its I/O contract (each tensor's name, shape with the
batch axis named ``"N"``, dtype) next to the saved :class:`~robustwrap.PurifyConfig`, the sizes,
the specs and the versions. :meth:`BundleInfo.read` is the one place a bundle is read: every
field is checked and every problem is a ``ValueError`` naming the bundle and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from robustwrap.config import PurifyConfig
from robustwrap.outputs import Layout, dumps_strict, is_atomic_temporary, loads_strict
from robustwrap.schema import value_problem

FORMAT = "robustwrap-bundle"
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
DENOISER = "denoiser"
CLASSIFIER = "classifier"
UNROLLED = "unrolled"
COMPONENTS = (CLASSIFIER, DENOISER, UNROLLED)
BATCH = "N"  # the name of the dynamic batch axis in every recorded shape
TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64}  # the dtypes a bundle's tensors may have
DTYPES = tuple(TORCH_DTYPES)
TIMING_CACHE = "timing.cache"  # TensorRT's timing cache, kept beside the engines
VERIFIED = "verified"  # the folder of verification records


def _raw_config(folder: Path) -> dict | None:
    """``folder/config.json`` parsed, when it is a JSON object carrying the bundle format tag; else None."""
    try:
        raw = loads_strict((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == FORMAT else None


def bundle_files(folder: Path) -> set[str]:
    """The names of the files an export (and the engine builds) may write into the bundle ``folder``.

    The fixed files, each recorded component's graph, its external data file and its TensorRT
    engine (and the temporary file a killed engine build leaves), and each package's files.
    """
    raw = _raw_config(folder) or {}
    names = {CONFIG_FILE, CARD_FILE, TIMING_CACHE}
    components = raw.get("components") if isinstance(raw.get("components"), dict) else {}
    for component, entry in components.items():
        file = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(file, str):
            names |= {file, f"{file}.data"}
        names |= {f"{component}.plan", f"{component}.int8.xml", f"{component}.int8.bin"}  # engines, int8 models
    packages = raw.get("packages") if isinstance(raw.get("packages"), dict) else {}
    for package in packages.values():
        files = package.get("files") if isinstance(package, dict) else None
        for name in (files.values() if isinstance(files, dict) else ()):
            names |= {str(name), str(name).removesuffix(".xml") + ".bin"}  # an OpenVINO model's weights beside it
    return names


def _verification_file(entry: Path) -> bool:
    """A record robustwrap verify writes into verified/ (or the temporary file of one cut short)."""
    record = re.compile(r"[a-z0-9]+-[a-z0-9-]+\.(json|png)")
    if entry.is_symlink() or not entry.is_file():
        return False
    inner = entry.name[1:].rsplit(".", 2)[0] if entry.name.startswith(".") else ""
    return bool(record.fullmatch(entry.name)) or bool(record.fullmatch(inner)) and is_atomic_temporary(entry, {inner})


def _bundle_owns(folder: Path, entry: Path) -> bool:
    if entry.is_dir():  # verified/: the verification records (<engine>-<precision>.json and .png) and nothing else
        return entry.name == VERIFIED and all(_verification_file(e) for e in entry.iterdir())
    partial_engine = entry.name.startswith(".") and entry.name.endswith(".partial") and any(
        entry.name.startswith(f".{component}.plan.") for component in COMPONENTS)
    return entry.is_file() and (entry.name in bundle_files(folder) or partial_engine
                                or is_atomic_temporary(entry, {CONFIG_FILE}))


# What export_bundle writes: a folder is a bundle when its config.json carries the format tag, and
# robustwrap may replace it only when everything in it is a file listed above.
BUNDLE_LAYOUT = Layout("bundle", marker=lambda folder: _raw_config(folder) is not None, owns=_bundle_owns,
                       record=CONFIG_FILE)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a component graph.

    Attributes:
        name: the graph's tensor name.
        shape: the batch axis ``"N"`` first, then fixed sizes.
        dtype: "float32" or "int64".
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape without the batch axis."""
        return tuple(int(d) for d in self.shape[1:])

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph of a bundle and its I/O contract.

    Attributes:
        file: the graph's file name inside the bundle (no folders).
        inputs, outputs: the contract, in the graph's order.
        nodes, bytes: facts about the written file (graph + external data).
        noise: for the unrolled graph only: "in_graph" or "explicit".
    """

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    nodes: int = 0
    bytes: int = 0
    noise: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        entry = {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                 "outputs": [t.to_dict() for t in self.outputs], "nodes": self.nodes, "bytes": self.bytes}
        if self.noise is not None:
            entry["noise"] = self.noise
        return entry


@dataclass(frozen=True)
class PackageSet:
    """Networks built from the bundle for one engine: AOTInductor ``.pt2`` packages ("aoti", "aoti-bf16"), or
    OpenVINO models quantised to int8 by NNCF ("openvino-int8": ``<component>.int8.xml`` + ``.bin``).

    Attributes:
        device: the device type they were built for ("cpu" or "cuda"); they run only there.
        torch: the torch version that built them (AOT packages load only with the same version) or
            that computed the calibration inputs (int8).
        files: component name -> file name inside the bundle.
        calibration: for int8, what the quantisation was calibrated on (data spec, subset, seed,
            fingerprints, samples per network, versions); None otherwise.
    """

    device: str
    torch: str
    files: Mapping[str, str]
    calibration: Mapping[str, Any] | None = None

    def to_dict(self) -> dict:
        entry = {"device": self.device, "torch": self.torch, "files": dict(self.files)}
        if self.calibration is not None:
            entry["calibration"] = dict(self.calibration)
        return entry


@dataclass(frozen=True)
class BundleInfo:
    """A bundle's ``config.json``, validated.

    Attributes:
        config: the saved defense configuration (the default at load time).
        channels: C; image_size: (H, W) of the classifier graph; diffusion_size: (Hd, Wd).
        num_classes: K; num_stages: M (the classifier graph's stage outputs).
        components: the graphs present, by name (classifier, denoiser, optionally unrolled).
        specs: how the networks were made (recorded, e.g. ``{"classifier": "mnist"}``).
        extra: the remaining recorded facts (stages, normalisation, versions, opset, ...).
        packages: compiled packages by engine (``{"aoti": PackageSet}``), if any were built.
    """

    config: PurifyConfig
    channels: int
    image_size: tuple[int, int]
    diffusion_size: tuple[int, int]
    resize_mode: str
    num_classes: int
    num_stages: int
    max_batch: int
    components: Mapping[str, ComponentSpec]
    specs: Mapping[str, Any]
    extra: Mapping[str, Any]
    packages: Mapping[str, PackageSet] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON content of ``config.json`` (strict JSON: no NaN)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "diffusion_size": list(self.diffusion_size),
            "resize_mode": self.resize_mode,
            "num_classes": self.num_classes,
            "num_stages": self.num_stages,
            "max_batch": self.max_batch,
            "components": {name: spec.to_dict() for name, spec in self.components.items()},
            "specs": dict(self.specs),
            "packages": {engine: package.to_dict() for engine, package in self.packages.items()},
            **dict(self.extra),
        }

    def write(self, folder: Path) -> None:
        """Write ``config.json`` into ``folder``."""
        (folder / CONFIG_FILE).write_text(dumps_strict(self.to_dict(), indent=2) + "\n")

    def file(self, folder: str | os.PathLike, component: str) -> Path:
        """The path of a component's graph inside ``folder``; ValueError if the bundle lacks it."""
        if component not in self.components:
            raise ValueError(f"{folder} has no {component} graph (it has {sorted(self.components)})"
                             + (": export it with unrolled=True (CLI: --unrolled)" if component == UNROLLED else ""))
        return Path(folder) / self.components[component].file

    @classmethod
    def read(cls, path: str | os.PathLike) -> "BundleInfo":
        """Read and validate ``path/config.json``.

        Raises:
            ValueError: not a bundle folder, another format version, or any malformed field,
                naming the bundle and the field; a component file outside the folder or missing.
        """
        folder = Path(path)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise ValueError(f"{folder} is not a robustwrap bundle (no {CONFIG_FILE}): write one with export_bundle")
        try:
            raw = loads_strict(config_path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise ValueError(f"{config_path} is not valid JSON: {str(error)[:200]}") from None
        return cls.from_dict(raw, folder)

    @classmethod
    def from_dict(cls, raw: Any, folder: str | os.PathLike, check_files: bool = True) -> "BundleInfo":
        """Validate the parsed ``config.json`` of the bundle in ``folder``.

        Args:
            check_files: also require each component's file in ``folder`` (False for a copy of
                the config without the graphs, as the Triton pipeline model holds).
        """
        folder = Path(folder)
        where = folder / CONFIG_FILE
        check = _Checker(where)
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must hold a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise ValueError(f"{where} is not a robustwrap bundle config (format {raw.get('format')!r})")
        version = raw.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(f"{folder} has bundle format version {version!r} ({type(version).__name__}); this "
                             f"robustwrap reads version {FORMAT_VERSION} (an integer): export it again")
        config = PurifyConfig.from_dict(check.field(raw, "config", dict), source=str(where))
        channels = check.count(raw, "channels")
        image_size = check.size(raw, "image_size")
        diffusion_size = check.size(raw, "diffusion_size")
        num_classes = check.count(raw, "num_classes")
        num_stages = check.count(raw, "num_stages")
        components_raw = check.field(raw, "components", dict)
        unknown = sorted(set(components_raw) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"{where}: unknown components {unknown}; known: {list(COMPONENTS)}")
        components = {name: _component(check, name, entry, folder if check_files else None)
                      for name, entry in components_raw.items()}
        for needed in (CLASSIFIER, DENOISER):
            if needed not in components:
                raise ValueError(f"{where}: the {needed} component is missing")
        info = cls(
            config=config, channels=channels, image_size=image_size, diffusion_size=diffusion_size,
            resize_mode=check.field(raw, "resize_mode", str), num_classes=num_classes, num_stages=num_stages,
            max_batch=check.count(raw, "max_batch"), components=components,
            specs=check.field(raw, "specs", dict),
            extra={k: v for k, v in raw.items() if k not in _KNOWN},
            packages={engine: _package(check, engine, entry, folder if check_files else None)
                      for engine, entry in check.field(raw, "packages", dict).items()},
        )
        info.check_contracts(where)
        return info

    def check_contracts(self, where: Path) -> None:
        """The recorded contracts agree with the sizes, channels, classes and stages."""
        classifier = self.components[CLASSIFIER]
        expected = {
            (CLASSIFIER, "inputs"): [("images", (self.channels, *self.image_size))],
            (DENOISER, "inputs"): [("x_t", (self.channels, *self.diffusion_size)), ("t", ())],
            (DENOISER, "outputs"): [("eps", (self.channels, *self.diffusion_size))],
        }
        for (name, side), tensors in expected.items():
            got = [(t.name, t.item_shape) for t in getattr(self.components[name], side)]
            if got != tensors:
                raise ValueError(f"{where}: {name} {side} are {got}, expected {tensors} for channels {self.channels}, "
                                 f"image size {self.image_size}, diffusion size {self.diffusion_size}")
        outputs = classifier.outputs
        if len(outputs) != 1 + self.num_stages or outputs[0].name != "logits":
            raise ValueError(f"{where}: the classifier must output logits and {self.num_stages} stage maps, "
                             f"got {[t.name for t in outputs]}")
        if outputs[0].item_shape != (self.num_classes,):
            raise ValueError(f"{where}: logits have shape {outputs[0].item_shape}, expected ({self.num_classes},) "
                             "(num_classes)")
        if any(len(t.item_shape) != 3 for t in outputs[1:]):
            raise ValueError(f"{where}: every stage map must be (N, C_m, H_m, W_m), got "
                             f"{[t.shape for t in outputs[1:]]}")


_KNOWN = {"format", "format_version", "config", "channels", "image_size", "diffusion_size", "resize_mode", "packages",
          "num_classes", "num_stages", "max_batch", "components", "specs"}


class _Checker:
    """Field checks with messages naming the file and the field."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def field(self, raw: Mapping, name: str, kind: type, context: str = "") -> Any:
        if name not in raw:
            raise ValueError(f"{self.where}: {context}{name!r} is missing")
        value = raw[name]
        problem = value_problem(f"{context}{name!r}", value, kind)  # robustwrap.schema's one type check
        if problem:
            raise ValueError(f"{self.where}: {problem}")
        return value

    def count(self, raw: Mapping, name: str, context: str = "") -> int:
        value = self.field(raw, name, int, context)
        if value < 1:
            raise ValueError(f"{self.where}: {context}{name!r} must be >= 1, got {value}")
        return value

    def size(self, raw: Mapping, name: str) -> tuple[int, int]:
        value = self.field(raw, name, list)
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise ValueError(f"{self.where}: {name!r} must be [H, W] positive integers, got {value!r}")
        return int(value[0]), int(value[1])


def _tensor(check: _Checker, raw: Any, context: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{check.where}: {context} must be an object, got {raw!r}")
    name = check.field(raw, "name", str, context)
    shape = check.field(raw, "shape", list, context)
    if not shape or shape[0] != BATCH or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                                 for d in shape[1:]):
        raise ValueError(f"{check.where}: {context}shape must be [\"N\", positive sizes...], got {shape!r}")
    dtype = check.field(raw, "dtype", str, context)
    if dtype not in DTYPES:
        raise ValueError(f"{check.where}: {context}dtype must be one of {DTYPES}, got {dtype!r}")
    return TensorSpec(name, tuple(shape), dtype)


def _component(check: _Checker, name: str, raw: Any, folder: Path | None) -> ComponentSpec:
    context = f"components.{name}."
    if not isinstance(raw, dict):
        raise ValueError(f"{check.where}: components.{name} must be an object, got {raw!r}")
    file = check.field(raw, "file", str, context)
    if Path(file).name != file or file in ("", ".", ".."):
        raise ValueError(f"{check.where}: {context}file must be a file name inside the bundle, got {file!r}")
    if folder is not None and not (folder / file).is_file():
        raise ValueError(f"{folder}: the {name} graph {file} is missing: export the bundle again")
    inputs = tuple(_tensor(check, t, f"{context}inputs[{i}].") for i, t in enumerate(check.field(raw, "inputs", list, context)))
    outputs = tuple(_tensor(check, t, f"{context}outputs[{i}].") for i, t in enumerate(check.field(raw, "outputs", list, context)))
    if not inputs or not outputs:
        raise ValueError(f"{check.where}: {context} needs at least one input and one output")
    noise = raw.get("noise")
    if name == UNROLLED and noise not in ("in_graph", "explicit"):
        raise ValueError(f"{check.where}: {context}noise must be 'in_graph' or 'explicit', got {noise!r}")
    nodes, size = raw.get("nodes", 0), raw.get("bytes", 0)
    for label, value in (("nodes", nodes), ("bytes", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{check.where}: {context}{label} must be a non-negative integer, got {value!r}")
    return ComponentSpec(file, inputs, outputs, nodes, size, noise if name == UNROLLED else None)


PACKAGE_ENGINES = ("aoti", "aoti-bf16", "openvino-int8")


def package_key(engine: str, precision: str) -> str:
    """Where config.json records an engine's packages at a precision: "aoti", "aoti-bf16", "openvino-int8"."""
    return engine if precision == "fp32" else f"{engine}-{precision}"


def split_package_key(key: str) -> tuple[str, str]:
    """The inverse of :func:`package_key`: "aoti-bf16" -> ("aoti", "bf16"), "aoti" -> ("aoti", "fp32")."""
    engine, _, precision = key.partition("-")
    return engine, precision or "fp32"


def _package(check: _Checker, engine: str, raw: Any, folder: Path | None) -> PackageSet:
    context = f"packages.{engine}."
    if engine not in PACKAGE_ENGINES:
        raise ValueError(f"{check.where}: unknown package engine {engine!r}; known: {list(PACKAGE_ENGINES)}")
    if not isinstance(raw, dict):
        raise ValueError(f"{check.where}: packages.{engine} must be an object, got {raw!r}")
    device = check.field(raw, "device", str, context)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{check.where}: {context}device must be 'cpu' or 'cuda', got {device!r}")
    files = check.field(raw, "files", dict, context)
    if sorted(files) != sorted((CLASSIFIER, DENOISER)):
        raise ValueError(f"{check.where}: {context}files must name the classifier and the denoiser, got {sorted(files)}")
    for component, file in files.items():
        if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
            raise ValueError(f"{check.where}: {context}files.{component} must be a file name inside the bundle, "
                             f"got {file!r}")
        if folder is not None and not (folder / file).is_file():
            raise ValueError(f"{folder}: the {engine} package {file} is missing: export the bundle again")
    calibration = raw.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise ValueError(f"{check.where}: {context}calibration must be an object, got {calibration!r}")
    return PackageSet(device, check.field(raw, "torch", str, context), dict(files), calibration)
