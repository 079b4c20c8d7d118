"""Serving a bundle with Triton Inference Server.

- :func:`write_triton_bundle` (:mod:`.repository`) — the model repository: the two networks
  (onnxruntime, tensorrt_plan, openvino, or Python + ONNX Runtime / OpenVINO) and the pipeline model (Python, BLS),
  whose ``model.py`` is :mod:`.pipeline_model`, shipped as a file of this package.
- :class:`TritonServer` (:mod:`.server`) — PyPI's real ``tritonserver`` (``nvidia-pytriton``)
  started on a repository, bound to 127.0.0.1, stopped with all its stubs; :meth:`TritonServer.heal` reloads a
  model whose stub died.
"""

from .repository import (COMPONENT_BACKENDS, ServingOptions, check_repository, check_servable, default_name,
                         is_triton_model, write_triton_bundle)
from .server import TritonServer

__all__ = ["COMPONENT_BACKENDS", "ServingOptions", "check_repository", "check_servable", "default_name",
           "is_triton_model",
           "write_triton_bundle",
           "TritonServer"]
