"""AOTInductor: each network compiled ahead of time into a ``.pt2`` package, loaded without compiling.

``torch.export`` captures the network with a dynamic batch axis and
``torch._inductor.aoti_compile_and_package`` compiles it (C++ / CUDA kernels) into one file per
network. Loading (:func:`load_package`) compiles nothing: a server that restarts answers its first
batch in seconds. A package runs only on the device type it was
compiled for and with the torch version that compiled it; both are recorded in the bundle and
checked before loading.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from robustwrap.cpus import cpu_flags

from ..format import TORCH_DTYPES, ComponentSpec, PackageSet
from .runner import like_caller


def package_file(component: str, device: str, precision: str = "fp32") -> str:
    """The file name of a component's package for a device type: ``denoiser.cpu.pt2``, ``denoiser.cpu.bf16.pt2``."""
    return f"{component}.{device}.pt2" if precision == "fp32" else f"{component}.{device}.{precision}.pt2"


def compile_package(module: nn.Module, args: tuple[Tensor, ...], path: Path, *, max_batch: int) -> None:
    """Export ``module(*args)`` with axis 0 of every input as one dynamic batch and compile it to ``path``.

    Args:
        module: the network (hooks it needs registered before the call, outside the trace).
        args: example inputs, batch-first, batch >= 2, on the device the package is for.
        path: the ``.pt2`` file to write.
        max_batch: the largest batch the package takes.

    Raises:
        RuntimeError: the module does not export or compile (the first line of the message).
    """
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    shapes: tuple = tuple({0: batch} for _ in args)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        shapes = (shapes,)  # forward(*inputs) (AtPrecision): the inputs are one argument to torch.export
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=shapes)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as error:  # torch.export / inductor: many error types, one meaning
        text = str(error).strip()
        raise RuntimeError(f"AOTInductor could not compile {path.name} ({type(error).__name__}: "
                           f"{text.splitlines()[0][:300] if text else ''})") from error


_ISA_FLAGS = {"AVX512": "avx512f", "AVX512_VNNI": "avx512_vnni", "AVX2": "avx2"}  # package ISA -> /proc/cpuinfo flag


def load_package(path: Path, device_index: int):
    """The compiled model in a ``.pt2`` package, loaded without compiling anything.

    ``torch._inductor.aoti_load_package`` compares the package's CPU vector ISA with this CPU's by
    compiling inductor's ISA probe programs: about 30 s on a machine with an empty inductor cache,
    at every server's first start. This loads the package with the same C++ loader and checks the
    ISA against the CPU's flags instead.

    Raises:
        ValueError: the package needs CPU instructions this CPU lacks, or is not a package.
        RuntimeError: this torch lacks the AOTInductor package loader.
    """
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader is None:
        raise RuntimeError(f"torch {torch.__version__} has no AOTInductor package loader (torch._C._aoti)")
    from torch.export.pt2_archive._package import AOTICompiledModel

    try:
        metadata = loader.load_metadata_from_package(str(path), "model")
    except Exception as error:  # the C++ loader's own exception types
        raise ValueError(f"{path} is not an AOTInductor package: {str(error).splitlines()[0][:200]}") from None
    if metadata.get("AOTI_DEVICE_KEY") == "cpu":
        flags = cpu_flags()
        needed = [_ISA_FLAGS[isa] for isa in metadata.get("AOTI_CPU_ISA", "").split() if isa in _ISA_FLAGS]
        missing = [flag for flag in needed if flags is not None and flag not in flags]
        if missing:
            raise ValueError(f"{path} was compiled for a CPU with {metadata['AOTI_CPU_ISA']}; this CPU lacks {missing}: "
                             "export the bundle with --engine aoti on this machine")
    return AOTICompiledModel(loader(str(path), "model", False, 1, device_index))


class AotiRunner:
    """One AOTInductor package behind the :class:`~robustwrap.export.engines.Runner` protocol.

    Args:
        path: the ``.pt2`` file.
        spec: the graph's recorded contract (input order, dtypes).
        package: what the bundle records of its packages (device type, torch version).
        device: where to run: "cpu" or "cuda[:i]"; must be the package's device type.

    Raises:
        ValueError: a device other than the one the package was compiled for, or another torch
            version than the one that compiled it (both name what to do).
    """

    def __init__(self, path: str | os.PathLike, spec: ComponentSpec, package: PackageSet,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type != package.device:
            raise ValueError(f"{path} was compiled for {package.device}, not {self.device.type}: export the bundle "
                             f"with --engine aoti on a {self.device.type} machine, or load it with device="
                             f"{package.device!r}")
        if package.torch != torch.__version__:
            raise ValueError(f"{path} was compiled by torch {package.torch}; this is torch {torch.__version__}: "
                             "AOTInductor packages load only with the torch that built them; export the bundle again")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU on this machine")
        index = self.device.index if self.device.index is not None else (
            torch.cuda.current_device() if self.device.type == "cuda" else -1)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", index)
        self.model = load_package(Path(path), index)
        self.spec = spec
        self.input_names = spec.input_names
        self.output_names = spec.output_names

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        inputs = [feeds[t.name].detach().to(self.device, TORCH_DTYPES[t.dtype]).contiguous() for t in self.spec.inputs]
        with torch.no_grad():
            outputs = self.model(*inputs)
        outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        return like_caller(outputs, first)
