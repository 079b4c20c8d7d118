"""Lazy imports of the heavy optional dependencies, with a message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying ``pip install 'robustwrap[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed here: pip install 'robustwrap[{extra}]'") from error
