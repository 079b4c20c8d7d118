"""What the interpreter that runs Triton's Python backend stub needs (stated once).

The stub runs the first ``python`` on ``PATH``: it must have torch, robustwrap, onnxruntime (for
``python`` components) and numpy < 2 (with numpy 2, Triton 2.51's stub returned every output
with zero bytes). ``component_model.py`` repeats the numpy check inline: it runs without
robustwrap installed.
"""

from __future__ import annotations

NUMPY_REQUIREMENT = "<2"


def numpy_problem() -> str | None:
    """Why this interpreter's numpy cannot serve through the stub, or None."""
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return None
    return (f"this environment has numpy {numpy.__version__}: Triton 2.51's Python backend stub returns empty "
            "(zero-byte) outputs with numpy 2; pip install 'numpy<2' (pip install 'robustwrap[serve]' does)")
