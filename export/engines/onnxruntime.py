"""ONNX Runtime: one session per graph, torch tensors in and out."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..format import TORCH_DTYPES, ComponentSpec
from ..optional import require
from .runner import like_caller


class OrtRunner:
    """One ONNX Runtime session behind the :class:`~robustwrap.export.engines.Runner` protocol.

    On the CPU the tensors go through numpy (no copy for contiguous CPU tensors). On CUDA they
    are bound by data pointer (I/O binding): no host round trip. Float outputs come back on the
    first input's device and in its float dtype; integer outputs keep their dtype.

    Args:
        path: the ONNX file.
        spec: the graph's recorded contract (names, shapes, dtypes).
        device: "cpu" or "cuda[:i]".
        providers: ONNX Runtime providers; default CPU, or CUDA on a CUDA device
            (``["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` for TensorRT's EP).
        threads: intra-op threads (CPU); None for ONNX Runtime's default.

    Raises:
        RuntimeError: CUDA asked for without a GPU, or a provider this build lacks.
        ValueError: a bad device, or a graph whose tensors differ from the recorded contract.
    """

    def __init__(self, path: str | os.PathLike, spec: ComponentSpec, device: str | torch.device = "cpu",
                 providers: Sequence[Any] | None = None, threads: int | None = None) -> None:
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
            raise RuntimeError(f"this onnxruntime build lacks {missing} (it has {ort.get_available_providers()}); "
                               "on a GPU install 'robustwrap[gpu]' (onnxruntime-gpu) instead of the CPU wheel")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(f"ONNX Runtime cannot load {path}: {str(error).splitlines()[0][:300]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.input_names != spec.input_names or self.output_names != spec.output_names:
            raise ValueError(f"{path} has inputs {self.input_names} and outputs {self.output_names}, but the bundle "
                             f"records {spec.input_names} and {spec.output_names}: a file was replaced; export again")
        self.spec = spec

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        first = next(iter(feeds.values()))
        if self.device.type == "cpu":
            arrays = {t.name: feeds[t.name].detach().to("cpu", TORCH_DTYPES[t.dtype]).contiguous().numpy()
                      for t in self.spec.inputs}
            outputs = [torch.from_numpy(o) for o in self.session.run(self.output_names, arrays)]
        else:
            outputs = self._run_bound(feeds, first.shape[0])
        return like_caller(outputs, first)

    def _run_bound(self, feeds: Mapping[str, Tensor], batch: int) -> list[Tensor]:
        import numpy as np

        numpy_types = {"float32": np.float32, "int64": np.int64}
        index = self.device.index
        binding = self.session.io_binding()
        kept = []
        for tensor in self.spec.inputs:
            value = feeds[tensor.name].detach().to(self.device, TORCH_DTYPES[tensor.dtype]).contiguous()
            kept.append(value)
            binding.bind_input(tensor.name, "cuda", index, numpy_types[tensor.dtype], tuple(value.shape),
                               value.data_ptr())
        outputs = [torch.empty((batch, *t.item_shape), device=self.device, dtype=TORCH_DTYPES[t.dtype])
                   for t in self.spec.outputs]
        for tensor, out in zip(self.spec.outputs, outputs):
            binding.bind_output(tensor.name, "cuda", index, numpy_types[tensor.dtype], tuple(out.shape),
                                out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the inputs are written before ORT reads them
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs
