"""robustwrap.export: the defended model outside eager Python (installed from ``export/``).

Deployment (the default): export each network once, run the library's loop over engines.

- :func:`export_bundle` — ``denoiser.onnx`` + ``classifier.onnx`` + ``config.json``: size and
  export time independent of the number of denoiser calls.
- :func:`load_bundle` — a :class:`~robustwrap.RobustWrapper` over ONNX Runtime sessions or
  TensorRT engines; steps, votes and the rest of the configuration change at load time.
- :func:`build_bundle_engines` — TensorRT engines for a bundle (CUDA only).
- :func:`write_triton_bundle` — Triton models for the two networks plus a Python-backend model (BLS).
- :func:`compile_networks` — ``torch.compile`` the two networks, not the loop.

The single unrolled graph, for small budgets and runtimes without Python:

- :func:`compile_wrapper` — ``torch.compile`` (fullgraph) with eager input checks.
- :func:`export_onnx` — one ONNX graph (dynamo exporter), dynamic batch, in-graph or explicit noise.
- :class:`OnnxRunner` — ONNX Runtime with the wrapper's call shape.
- :func:`build_engine` / :class:`TrtRunner` — TensorRT engines (CUDA only).
- :func:`write_triton_repository` — a Triton Inference Server model folder.

Heavy dependencies (onnx, onnxruntime, tensorrt) are imported only when used.
"""

from .bundle import BundleExport, export_bundle, load_bundle, read_bundle
from .compile import CompiledWrapper, compile_networks, compile_wrapper, graph_breaks
from .graph import ExportGraph
from .onnx import OnnxExport, export_onnx, read_metadata
from .runtime import OnnxRunner, default_providers, onnx_parity
from .tensorrt import EngineBuild, EngineRunner, TrtRunner, build_bundle_engines, build_engine
from .triton import triton_config, write_triton_bundle, write_triton_repository

__all__ = [
    "BundleExport",
    "export_bundle",
    "load_bundle",
    "read_bundle",
    "build_bundle_engines",
    "EngineRunner",
    "write_triton_bundle",
    "compile_networks",
    "CompiledWrapper",
    "compile_wrapper",
    "graph_breaks",
    "ExportGraph",
    "OnnxExport",
    "export_onnx",
    "read_metadata",
    "OnnxRunner",
    "default_providers",
    "onnx_parity",
    "EngineBuild",
    "TrtRunner",
    "build_engine",
    "triton_config",
    "write_triton_repository",
]
