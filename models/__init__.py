"""The model store's shipped weights, installed as ``robustwrap.models`` (read with importlib.resources)."""
