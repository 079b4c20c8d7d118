"""Run an exported defense with ONNX Runtime, with the wrapper's call shape."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ._optional import require
from .onnx import read_metadata

ArrayLike = np.ndarray | torch.Tensor


def default_providers() -> list[str]:
    """TensorRT and CUDA providers when this onnxruntime build has them, then the CPU."""
    ort = require("onnxruntime", "export")
    available = ort.get_available_providers()
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


class OnnxRunner:
    """An exported defense behind ``runner(images) -> (scores, labels[, purified])``.

    Args:
        path: an ONNX file written by :func:`robustwrap.export.export_onnx`.
        providers: ONNX Runtime execution providers; default :func:`default_providers`.
        seed: seed ONNX Runtime's random ops (in-graph noise) for reproducible runs.
        threads: intra-op threads (CPU); None for ONNX Runtime's default.

    Inputs may be numpy arrays or torch tensors; outputs come back as the same kind.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, seed: int | None = None,
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "export")
        self.metadata = read_metadata(path)
        if seed is not None:
            ort.set_seed(seed)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers or default_providers()))
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def explicit_noise(self) -> bool:
        return "noise" in self.input_shapes

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        """(B, K, S, C, Hd, Wd) of the ``noise`` input of an explicit-noise graph."""
        return (batch, *self.input_shapes["noise"][1:])

    def _check(self, name: str, array: np.ndarray, batch: int) -> None:
        expected = [batch, *self.input_shapes[name][1:]]
        if list(array.shape) != expected:
            raise ValueError(f"{name} must have shape {tuple(expected)} for this graph, got {tuple(array.shape)}")
        if array.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {array.dtype}")

    def __call__(self, images: ArrayLike, noise: ArrayLike | None = None) -> tuple[ArrayLike, ...]:
        """Scores (B, K), labels (B,) [and purified (B, S, C, H, W)] for images (B, C, H, W) in [0, 1]."""
        as_torch = isinstance(images, torch.Tensor)
        feeds = {"images": _to_numpy(images)}
        batch = feeds["images"].shape[0] if feeds["images"].ndim else 0
        if batch == 0:
            raise ValueError(f"expected a non-empty batch (B, C, H, W), got shape {feeds['images'].shape}")
        self._check("images", feeds["images"], batch)
        if self.explicit_noise != (noise is not None):
            raise ValueError(
                "this graph takes explicit noise: pass noise of shape " f"{self.noise_shape(batch)}"
                if self.explicit_noise
                else "this graph draws its noise in-graph: do not pass noise"
            )
        if noise is not None:
            feeds["noise"] = _to_numpy(noise)
            self._check("noise", feeds["noise"], batch)
        if not np.isfinite(feeds["images"]).all() or feeds["images"].min() < 0 or feeds["images"].max() > 1:
            raise ValueError("images must be finite and in [0, 1]")
        outputs = self.session.run(self.output_names, feeds)
        return tuple(torch.from_numpy(o) for o in outputs) if as_torch else tuple(outputs)

    def predict(self, images: ArrayLike, noise: ArrayLike | None = None) -> ArrayLike:
        """(B,) labels by the vote rule the graph was exported with."""
        return self(images, noise)[1]


def _to_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(array).__name__}")
    return array


def onnx_parity(wrapper, runner: OnnxRunner, batch: int = 3, seed: int = 0) -> float:
    """Max |scores_onnx - scores_eager| on a random batch with shared explicit noise.

    Only for explicit-noise graphs (in-graph noise cannot be shared between engines).
    """
    if not runner.explicit_noise:
        raise ValueError("parity needs an explicit-noise graph: export with noise='explicit'")
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, wrapper.channels, *wrapper.image_size, generator=generator)
    noise = torch.randn(runner.noise_shape(batch), generator=generator)
    device = next(wrapper.parameters()).device
    with torch.no_grad():
        eager = wrapper(images.to(device), noise=noise.permute(1, 2, 0, 3, 4, 5).to(device)).cpu()
    scores = runner(images, noise)[0]
    return float((scores - eager).abs().max())
