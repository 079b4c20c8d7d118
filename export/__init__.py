"""robustwrap.export: the defended model outside eager Python (installed from ``export/``).

- :func:`compile_wrapper` — ``torch.compile`` (fullgraph) with eager input checks.
- :func:`export_onnx` — one ONNX graph (dynamo exporter), dynamic batch, in-graph or explicit noise.
- :class:`OnnxRunner` — ONNX Runtime with the wrapper's call shape.
- :func:`build_engine` / :class:`TrtRunner` — TensorRT engines (CUDA only).
- :func:`write_triton_repository` — a Triton Inference Server model folder.

Heavy dependencies (onnx, onnxruntime, tensorrt) are imported only when used.
"""

from .compile import CompiledWrapper, compile_wrapper, graph_breaks
from .graph import ExportGraph
from .onnx import OnnxExport, export_onnx, read_metadata
from .runtime import OnnxRunner, default_providers, onnx_parity
from .tensorrt import EngineBuild, TrtRunner, build_engine
from .triton import triton_config, write_triton_repository

__all__ = [
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
