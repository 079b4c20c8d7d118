"""The one rule every writer follows: a write never destroys what the command did not make.

Every command that writes (eval, tune, purify, export) calls :func:`check_output` on its
target before any work is done. The target may be:

- absent (it is created) or an empty folder (nothing in it can be lost): always fine;
- anything else only with ``overwrite=True``, and then only when it is recognisably ours
  (``ours(path)`` is true: a bundle's ``config.json`` with our format tag, a tune folder's
  ``tune.json``, an eval folder's results headers, a purify folder's ``purify.json``; a
  single-file writer may recognise its own file). A symlink is never replaced, and the working
  directory, its parents, the home folder and the filesystem root are never written as a target.

Everything else is refused with a :class:`ValueError` naming the path and the reason. A
replacement is written into a temporary folder beside the target (:func:`temporary_beside`)
and swapped in by :func:`replace_folder` only once the write succeeded, so a failure leaves
the old folder as it was. Resumable writers (eval, tune) instead remove the old folder with
:func:`remove_ours` once their inputs and settings are checked, create theirs with
:func:`make_folders`, and undo that with :func:`remove_empty_folders` when they fail before
recording anything (so a failed start does not block its rerun).

Files: :func:`write_text_atomic` (a temporary file and ``os.replace``: a reader never sees half
a file) and :func:`dumps_strict` (JSON without ``NaN``/``Infinity`` tokens, naming the field
that holds one).

Example:
    >>> check_output(out, overwrite=args.overwrite, ours=is_purify_folder, what="purify folder")
    >>> work = temporary_beside(out)
    >>> ...  # write everything into work
    >>> replace_folder(work, out)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

OVERWRITE_HINT = "choose another path or pass --overwrite"


def _a(what: str) -> str:
    """``what`` with its indefinite article: "a bundle", "an eval folder"."""
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def _protected(path: Path) -> str | None:
    """Why ``path`` (resolved) may never be replaced, or None."""
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor):
        return "it is the filesystem root"
    if path == Path.home().resolve():
        return "it is the home folder"
    if path == cwd:
        return "it is the working directory"
    if path in cwd.parents:
        return "it holds the working directory"
    return None


def is_empty_folder(path: Path) -> bool:
    """True when ``path`` is a real folder (not a symlink) with nothing in it."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_output(path: str | os.PathLike, *, overwrite: bool, ours: Callable[[Path], bool], what: str,
                 parents: bool = False) -> None:
    """Refuse, before any work, a target whose writing could destroy what this command did not make.

    Args:
        path: the file or folder the command will write.
        overwrite: the user asked to replace an earlier output (``--overwrite``).
        ours: recognises an output of this command (e.g. a folder with our marker file).
        what: the output's name in messages ("bundle", "tune folder", ...).
        parents: missing parent folders will be created (the nearest existing one must be a
            writable folder); by default the parent folder must exist.

    Raises:
        ValueError: naming the path and the reason: its parent folder is missing or not
            writable; it is a symlink, the working directory or one of its parents, the home
            folder or the root; it exists (and is not an empty folder) but is not recognisably
            ours; it is ours but ``overwrite`` is false.
    """
    path = Path(path)
    parent = path.absolute().parent
    while parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{path}: its folder {parent} {'is not a folder' if parent.exists() else 'does not exist'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: its folder {parent} is not writable")
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink, not {_a(what)} written by robustwrap: refusing to replace it")
    reason = _protected(path.resolve())
    if reason:
        raise ValueError(f"{path}: {reason}; refusing to write there (choose a new folder)")
    if is_empty_folder(path):
        return
    if not ours(path):
        kind = "a folder with other files" if path.is_dir() else "a file"
        raise ValueError(f"{path} is {kind}, not {_a(what)} written by robustwrap: refusing to replace it")
    if not overwrite:
        raise ValueError(f"{path} exists: {OVERWRITE_HINT}")


def check_resumable_output(path: str | os.PathLike, *, resume: bool, overwrite: bool, ours: Callable[[Path], bool],
                           what: str) -> None:
    """:func:`check_output` for a writer that can also continue its own earlier output (eval, tune).

    Missing parent folders are fine (they are created). An output of ours needs ``resume``
    (continue it) or ``overwrite`` (replace it).

    Raises:
        FileExistsError: ``path`` is ours and neither ``resume`` nor ``overwrite`` is set.
        ValueError: both are set, or :func:`check_output` refuses ``path``.
    """
    path = Path(path)
    if resume and overwrite:
        raise ValueError("--resume continues an earlier run and --overwrite replaces it: pass one of them")
    if path.exists() and not path.is_symlink() and not is_empty_folder(path) and ours(path):
        if not (resume or overwrite):
            raise FileExistsError(f"{path} is {_a(what)} from an earlier run: pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another folder")
        if resume:
            reason = _protected(path.resolve())
            if reason:
                raise ValueError(f"{path}: {reason}; refusing to write there (choose a new folder)")
            return
    check_output(path, overwrite=overwrite, ours=ours, what=what, parents=True)


def temporary_beside(target: str | os.PathLike) -> Path:
    """A new empty folder next to ``target`` (same filesystem, so :func:`replace_folder` is a rename).

    Its permissions follow the umask, as a folder made by ``mkdir`` would (not ``mkdtemp``'s 0700).
    """
    target = Path(target)
    while True:
        folder = target.absolute().parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def replace_folder(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap a fully written ``temporary`` folder in at ``target``, then delete the old ``target``.

    The old target is renamed aside first, so at every moment ``target`` is either the old
    folder or the new one; if the swap fails the old folder is put back. Call
    :func:`check_output` on ``target`` before writing ``temporary``.
    """
    temporary, target = Path(temporary), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.rename(temporary, target)
        return
    aside = target.absolute().parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(target, aside)
    try:
        os.rename(temporary, target)
    except OSError:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def remove_ours(path: str | os.PathLike, *, ours: Callable[[Path], bool], what: str) -> None:
    """Delete a folder an earlier run of this command wrote (``--overwrite`` of a resumable writer).

    Raises:
        ValueError: the folder is not recognisably ours, or is protected (see :func:`check_output`).
    """
    path = Path(path)
    if not path.exists():
        return
    check_output(path, overwrite=True, ours=ours, what=what)
    if is_empty_folder(path):
        return
    shutil.rmtree(path)


def make_folders(path: str | os.PathLike) -> list[Path]:
    """Create ``path`` and its missing parents; the folders this created, outermost first."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, as long as they are empty."""
    for folder in reversed(folders):
        if not is_empty_folder(folder):
            return
        folder.rmdir()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half a file).

    The file's permissions follow the umask, as ``open(path, "w")`` would give.
    """
    path = Path(path)
    temporary = path.absolute().parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "x") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _non_finite(value: object, where: str) -> str | None:
    """The path of the first NaN or infinite float inside ``value`` ("points[3].clean"), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{where}[{index}]")
            if found:
                return found
    return None


def dumps_strict(obj: object, **options: object) -> str:
    """``json.dumps`` that refuses NaN and infinities (which would not be valid JSON).

    Raises:
        ValueError: naming the field that holds the non-finite number.
    """
    try:
        return json.dumps(obj, allow_nan=False, **options)  # type: ignore[arg-type]
    except ValueError as error:
        where = _non_finite(obj, "")
        if where is None:
            raise
        raise ValueError(f"{where} is not a finite number; refusing to write it as JSON") from error
