"""Read checkpoint files without running code from them, with errors that say what went wrong.

Every load in the library goes through :func:`read_checkpoint`: safetensors, or a torch file
read with ``torch.load(weights_only=True)``. Files that would need code execution (pickled
classes, e.g. EDM's ``.pkl`` or an ``argparse.Namespace`` saved beside the weights) are refused
with the one-time conversion that makes them safe. Common failures are recognised before torch
sees them: a missing file, an empty or truncated download, an HTML page saved as ``.pt`` and a
Git LFS pointer.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

CONVERT_HINT = (
    "If you trust the file, convert it once in an environment that has the code it needs:\n"
    "    import torch; from safetensors.torch import save_file\n"
    "    obj = torch.load(PATH, weights_only=False)   # runs code from the file\n"
    "    save_file({k: v.contiguous() for k, v in STATE_DICT_OF(obj).items()}, 'model.safetensors')\n"
    "then pass the .safetensors file."
)


# Entries a checkpoint may lack; the model keeps its own value. BatchNorm's step counter (older
# files lack it; it does not affect eval) and the DM WideResNet's input mean/std (DeepMind's own
# files keep them outside the state dict; RobustBench's store them as buffers).
OPTIONAL_SUFFIX = "num_batches_tracked"
OPTIONAL_KEYS = ("mean", "std")
# Entries of a training checkpoint that hold the network's state dict, tried in this order.
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model", "last", "best")


def is_optional(key: str) -> bool:
    """Whether a checkpoint may leave out ``key`` (see OPTIONAL_SUFFIX and OPTIONAL_KEYS)."""
    return key.endswith(OPTIONAL_SUFFIX) or key in OPTIONAL_KEYS


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is; the message names the file and the fix."""


def _sniff(path: Path) -> None:
    """Refuse files whose first bytes show they are not checkpoints at all."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy failed; fetch the file again")
    with path.open("rb") as file:
        head = file.read(1024)
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in lowered[:256]:
        raise CheckpointError(
            f"{path} is an HTML page ({size} bytes), not a checkpoint: a failed download (a login, quota or "
            "redirect page) was saved under the checkpoint's name. Download it again with a direct link "
            "(e.g. `wget -O` on the file URL, or the hub's CLI) and check its size"
        )
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in its repository")
    if path.suffix.lower() != ".safetensors" and not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is not a torch checkpoint (it starts with {head[:16]!r}, neither a zip archive nor a pickle): "
            "a failed download or another file saved under this name; fetch it again and check its size"
        )


def _truncated_name(name: str) -> bool:
    """Whether a pickled global is not a real name of an already imported module ("collections.Ordered", a
    file cut inside a class name). Nothing is imported to decide: a module not loaded yet counts as real."""
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    return module is not None and not hasattr(module, attribute)


def _not_installed(name: str) -> bool:
    """Whether the top-level package of a pickled global is absent here (looked up, never imported)."""
    top = name.split(".")[0]
    try:
        return bool(top.isidentifier()) and "." in name and importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return False


def _load_error(path: Path, error: Exception) -> CheckpointError:
    """The user-facing reason ``torch.load(weights_only=True)`` failed on ``path``."""
    message = str(error)
    # torch names a refused global as "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x
    # is blocked" (os.system, builtins.eval, ...): either way, loading would call it. Nothing named is imported here.
    unsupported = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", message, re.IGNORECASE)
    if unsupported and _not_installed(unsupported.group(1)):
        name = unsupported.group(1)
        return CheckpointError(f"{path} was refused: loading it would execute code ({name}, from a package that is "
                               f"not installed here; the file pickles objects, not only weights).\n{CONVERT_HINT}")
    if unsupported and not _truncated_name(unsupported.group(1)) or "Can only build Tensor" in message:
        what = f"it pickles {unsupported.group(1)}" if unsupported else "it pickles a class"
        return CheckpointError(f"{path} was refused: loading it would execute code ({what}).\n{CONVERT_HINT}")
    if "legacy .tar format" in message or "TorchScript" in message:
        kind = "a pre-1.0 torch .tar file" if "legacy .tar" in message else "a TorchScript archive"
        return CheckpointError(f"{path} is {kind}, which cannot be read without executing code.\n{CONVERT_HINT}")
    first_line = next((line for line in message.splitlines() if line.strip()), "unexpected end of file")
    return CheckpointError(
        f"{path} is truncated or corrupted ({type(error).__name__}: {first_line[:120]}): its "
        f"{path.stat().st_size:,} bytes do not form a torch checkpoint. Download it again and compare its "
        "size or checksum with the source's"
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The top-level object of a checkpoint file (a dict), loaded without executing code.

    Args:
        path: a ``.safetensors`` file, or a torch file (``.pt``, ``.pth``, ``.ckpt``, ``.bin``).

    Returns:
        For safetensors, the tensors by name; for torch files, whatever dict was saved (a state
        dict, or a training checkpoint holding one, e.g. ``{"model": ..., "ema": ...}``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: empty, truncated or corrupted file, HTML page, LFS pointer, a file that
            needs code execution to load, or one that does not hold a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file in it (a diffusers folder is given as diffusers:{path})")
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: check the path, or put the file there (the model store layout is "
            "<model_dir>/<dataset>/<threat_model>/<name>.pt; `robustwrap models list` shows what it holds)"
        )
    _sniff(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals(path)):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ... here
        raise _load_error(path, error) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors; save `model.state_dict()` instead")
    return state


# numpy values that training scripts save beside the weights (``best_prec1``, ``epoch``): data only.
_NUMPY_DATA_GLOBALS = ("multiarray.scalar", "multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "numpy.dtypes.")


def _numpy_globals(path: Path) -> list:
    """(object, name) pairs for the numpy scalar/array/dtype globals a torch file references.

    They rebuild plain numeric data, so the weights-only unpickler may accept them; every other
    global stays refused. Names are resolved as written in the file (``numpy.core`` from numpy 1
    or ``numpy._core`` from numpy 2), whichever the installed numpy provides.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip file (legacy format) or unreadable: let torch.load report it
        return []
    allowed = []
    for name in names:
        if not (name.startswith("numpy.") and any(part in name for part in _NUMPY_DATA_GLOBALS)):
            continue
        module_name, _, attribute = name.rpartition(".")
        for candidate in (module_name, module_name.replace("numpy.core", "numpy._core"), module_name.replace("numpy._core", "numpy.core")):
            try:
                allowed.append((getattr(importlib.import_module(candidate), attribute), name))
                break
            except (ImportError, AttributeError):
                continue
    if "numpy.dtype" in names:  # unpickling a dtype builds its concrete class (e.g. Float64DType)
        import numpy  # noqa: PLC0415

        allowed += [cls for cls in vars(numpy.dtypes).values() if isinstance(cls, type) and issubclass(cls, numpy.dtype)]
    return allowed


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({error}); download it again and compare its size or checksum"
        ) from error


def state_dict_of(checkpoint: dict, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a state dict inside a loaded checkpoint.

    Unwraps the first of ``state_dict`` (RobustBench, Lightning), ``model_state_dict``,
    ``model``, ``last`` or ``best`` that holds tensors, and strips DataParallel's ``module.``
    prefixes. (Other prefixes are tried by :func:`robustwrap.architectures.check_state`.) Non-tensor entries at the top (an ``epoch``,
    a ``step``) are dropped only when the unwrapped dict is all tensors.

    Raises:
        CheckpointError: no dict of tensors is found.
    """
    state = checkpoint
    for key in STATE_DICT_ENTRIES:
        inner = state.get(key) if isinstance(state, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(list(checkpoint)[:8])
        raise CheckpointError(f"{path} does not hold a state dict of tensors (top-level keys: {keys})")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """:func:`read_checkpoint` then :func:`state_dict_of`: the tensors of a checkpoint by name."""
    return state_dict_of(read_checkpoint(path), path)


def compare_keys(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *, may_lack: Collection[str] = ()
) -> tuple[list[str], list[str], list[str]]:
    """How a file's ``state`` differs from a model's ``expected`` state dict, by name and shape.

    This is the one strict comparison in the library: :func:`load_strict`, the checkpoint
    reports (:func:`robustwrap.architectures.check_state`) and the family loaders use it.

    Args:
        expected: the model's ``state_dict()`` (meta tensors will do: only shapes are read).
        state: the file's tensors by name.
        may_lack: keys the file may leave out (the model keeps its own value), besides those
            :func:`is_optional` allows.

    Returns:
        ``(missing, unexpected, mismatched)``: missing keys in ``expected``'s order, unexpected
        keys in ``state``'s order, and ``"key: file (shape), expected (shape)"`` for each key
        whose shapes differ.
    """
    missing = [k for k in expected if k not in state and not (is_optional(k) or k in may_lack)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, mismatched


def require_keys(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    where: str | os.PathLike,
    architecture: str,
    *,
    may_lack: Collection[str] = (),
) -> None:
    """Raise unless :func:`compare_keys` finds no difference.

    Raises:
        CheckpointError: ``"<where> does not fit <architecture>: N missing keys: ...; N
            unexpected keys: ...; N keys of another shape: ..."`` (five of each shown).
    """
    missing, unexpected, mismatched = compare_keys(expected, state, may_lack=may_lack)
    if not (missing or unexpected or mismatched):
        return

    def show(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")

    parts = [f"{len(missing)} missing keys: {show(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {show(unexpected)}" if unexpected else "",
             f"{len(mismatched)} keys of another shape: {show(mismatched)}" if mismatched else ""]
    raise CheckpointError(
        f"{where} does not fit {architecture}: " + "; ".join(p for p in parts if p) +
        ". It is another architecture or configuration: `robustwrap models check FILE` shows what it holds"
    )


def load_strict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    architecture: str,
    *,
    may_lack: Collection[str] = (),
) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming the file and what differs.

    Keys the file may lack (:func:`is_optional`, ``may_lack``) keep the model's own values.
    A model on the meta device is given the file's tensors (``assign=True``).

    Raises:
        CheckpointError: missing or unexpected keys, or shapes that differ (:func:`require_keys`).
    """
    expected = model.state_dict()
    require_keys(expected, state, path, architecture, may_lack=may_lack)
    kept = {k: v for k, v in expected.items() if k not in state and (is_optional(k) or k in may_lack)}
    model.load_state_dict({**kept, **state}, strict=True, assign=any(t.is_meta for t in expected.values()))


__all__ = ["CheckpointError", "read_checkpoint", "state_dict_of", "load_state_dict", "compare_keys", "require_keys", "load_strict",
           "is_optional", "CONVERT_HINT"]
