"""robustwrap.export: taking a defended model out of Python (torch.compile, ONNX, TensorRT).

Installed from the top-level ``export/`` folder. The exporters are tracked in the project's
export issue; until they land this package holds nothing but this docstring.
"""
