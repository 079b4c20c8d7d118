"""robustwrap.export: the defended model outside eager Python (installed from ``export/``).

The pipeline, one file per step:

- :mod:`.format` — the bundle folder and its ``config.json`` (:class:`BundleInfo`, each
  component's I/O contract), read and validated in one place.
- :mod:`.modules` — what is exported: the classifier with its stage maps, the unrolled loop.
- :mod:`.onnx_export` — the one ONNX exporter (stripped, checked, external data named after the file).
- :mod:`.bundle` — :func:`export_bundle`, :func:`load_bundle` (the library's wrapper over
  engines: steps, votes, any setting change at load time), :func:`load_unrolled`.
- :mod:`.engines` — one runner protocol and one registry (``ENGINE_SPECS``); ONNX Runtime,
  TensorRT (:func:`build_bundle_engines`), AOTInductor, OpenVINO, and the adapters that turn
  runners into the wrapper's networks.
- :mod:`.verifier` — :func:`verify`: does an engine at its precision still decide as the fp32
  eager defense does (the record: :mod:`.verification`, found again by :func:`find_verification`).
- :mod:`.triton` — :func:`write_triton_bundle` (a model repository that a real Triton server
  serves) and :class:`TritonServer` (``robustwrap serve``).
- :mod:`.compile` — :func:`compile_networks` (``torch.compile`` the networks, not the loop),
  :func:`graph_breaks`.

Heavy dependencies (onnx, onnxruntime, tensorrt, tritonclient) are imported only when used.
"""

from .bundle import BundleExport, export_bundle, load_bundle, load_unrolled, read_bundle
from .compile import compile_networks, graph_breaks
from .engines.openvino import quantize_bundle
from .engines.tensorrt import EngineBuild, build_bundle_engines
from .format import BundleInfo, ComponentSpec, TensorSpec
from .triton import TritonServer, write_triton_bundle
from .verification import Thresholds, VerifyReport, find_verification, write_record
from .verifier import verify, verify_bundle

__all__ = [
    "BundleExport",
    "Thresholds",
    "VerifyReport",
    "find_verification",
    "verify",
    "verify_bundle",
    "write_record",
    "BundleInfo",
    "ComponentSpec",
    "TensorSpec",
    "export_bundle",
    "load_bundle",
    "load_unrolled",
    "read_bundle",
    "build_bundle_engines",
    "quantize_bundle",
    "EngineBuild",
    "write_triton_bundle",
    "TritonServer",
    "compile_networks",
    "graph_breaks",
]
