"""The one rule every writer follows: a write never destroys what the command did not make.

Every command that writes (eval, tune, purify, export, the Triton repository) describes its
output folder once as a :class:`Layout` and calls :func:`check_output` on its target before
any work is done. The target may be:

- absent (it is created) or an empty folder (nothing in it can be lost): always fine;
- a folder of ours only with ``overwrite=True``. *Ours* is decided by content, not by a marker
  alone: the folder carries the writer's record (a bundle's ``config.json`` with our format tag,
  a tune folder's ``tune.json``, ...) **and every entry in it is one the writer would write**
  (:meth:`Layout.foreign`). A folder holding anything else is refused, naming the first foreign
  entry, even with ``overwrite``. A symlink is never replaced, and the working directory, its
  parents, the home folder and the filesystem root are never written as a target.

Everything else is refused with a :class:`ValueError` naming the path and the reason. A
replacement is written into a temporary folder beside the target (:func:`temporary_beside`)
and swapped in by :func:`replace_folder` only once the write succeeded, so a failure leaves
the old folder as it was; the swap refuses a target that appeared (or changed) while the
command ran. A temporary or set-aside folder left by a run that was killed is tidied by the
next run on the same target (:func:`tidy_leftovers`): a killed swap's old folder is put back,
a killed write's partial folder removed. Resumable writers (eval, tune) instead remove the old
folder with :func:`remove_ours` once their inputs and settings are checked, create theirs with
:func:`make_folders`, and undo that with :func:`remove_empty_folders` when they fail before
recording anything (so a failed start does not block its rerun).

Files: :func:`write_text_atomic` (a temporary file and ``os.replace``: a reader never sees half
a file) and :func:`dumps_strict` (JSON without ``NaN``/``Infinity`` tokens, naming the field
that holds one).

Example:
    >>> replacing = check_output(out, overwrite=args.overwrite, layout=PURIFY_LAYOUT)
    >>> work = temporary_beside(out)
    >>> ...  # write everything into work
    >>> replace_folder(work, out, replacing=replacing, layout=PURIFY_LAYOUT)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

OVERWRITE_HINT = "choose another path or pass --overwrite"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """What one writer writes into its output folder: the one test of whether a folder is its own.

    Attributes:
        what: the output's name in messages ("bundle", "tune folder", "Triton model").
        record: the file holding the writer's record ("config.json", "tune.json"); None when the
            writer has no single record file.
        marker: ``marker(folder)`` is true when ``folder`` carries the writer's (readable) record.
        owns: ``owns(folder, entry)`` is true when ``entry``, a top-level entry of a marked
            ``folder``, is one the writer writes (a folder entry is judged with all it holds).
    """

    what: str
    marker: Callable[[Path], bool]
    owns: Callable[[Path, Path], bool]
    record: str | None = None

    def foreign(self, folder: Path) -> Path | None:
        """The first entry of ``folder`` (by name) this writer would not write, or None. Symlinks, and entries
        that cannot be read, are foreign."""
        for entry in sorted(folder.iterdir()):
            try:
                if entry.is_symlink() or not self.owns(folder, entry):
                    return entry
            except OSError:
                return entry
        return None

    def torn(self, folder: Path) -> bool:
        """Whether ``folder`` holds the record file cut short: it is not valid JSON (a readable JSON file that
        is not the writer's record is some other program's file, not a torn one)."""
        if self.record is None or not (folder / self.record).is_file() or self.marker(folder):
            return False
        try:
            json.loads((folder / self.record).read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return True
        return False

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is a real folder with the writer's record and nothing the writer would not write."""
        return (folder.is_dir() and not folder.is_symlink() and self.marker(folder)
                and self.foreign(folder) is None)


def is_atomic_temporary(entry: Path, names: Collection[str]) -> bool:
    """Whether ``entry`` is the temporary file :func:`write_text_atomic` leaves when killed while writing one of
    ``names`` (``.NAME.0123abcd.tmp``): part of the writer's own output."""
    found = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", entry.name)
    return bool(found) and found[1] in names and entry.is_file()


def only_files(folder: Path, allowed: Callable[[Path], bool] = lambda _: True) -> bool:
    """Whether ``folder`` (and every folder in it) holds only regular files that ``allowed`` accepts; no symlinks."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    for entry in folder.iterdir():
        if entry.is_symlink():
            return False
        if entry.is_dir():
            if not only_files(entry, allowed):
                return False
        elif not (entry.is_file() and allowed(entry)):
            return False
    return True


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


def refusal(path: str | os.PathLike, layout: Layout) -> str | None:
    """Why the existing, non-empty ``path`` is not an output ``layout``'s writer may replace; None when it is.

    It must be a real folder carrying the writer's record and holding nothing the writer would not write.
    """
    path, what = Path(path), _a(layout.what)
    if path.is_symlink():
        return f"{path} is a symlink, not {what} written by robustwrap: refusing to replace it"
    if not path.is_dir():
        return f"{path} is a file, not {what} written by robustwrap: refusing to replace it"
    if layout.torn(path):
        return (f"{path / layout.record} is torn or damaged (not valid JSON), so robustwrap cannot tell this folder "
                f"is {what} of its own and will neither continue nor replace it: choose another folder (if it is "
                "an earlier robustwrap output you no longer need, remove it yourself first)")
    if not layout.marker(path):
        return f"{path} is a folder with other files, not {what} written by robustwrap: refusing to replace it"
    foreign = layout.foreign(path)
    if foreign is not None:
        return (f"{path} holds {foreign.name}, which robustwrap does not write into {what}: refusing to replace it "
                f"(move {foreign.name} out first, or choose another path)")
    return None


def check_output(path: str | os.PathLike, *, overwrite: bool, layout: Layout, parents: bool = False) -> bool:
    """Refuse, before any work, a target whose writing could destroy what this command did not make.

    Leftovers of a killed earlier run on this target are tidied first (:func:`tidy_leftovers`).

    Args:
        path: the file or folder the command will write.
        overwrite: the user asked to replace an earlier output (``--overwrite``).
        layout: what the command writes (decides whether an existing folder is its own).
        parents: missing parent folders will be created (the nearest existing one must be a
            writable folder); by default the parent folder must exist.

    Returns:
        True when an existing output of ours will be replaced; False when ``path`` is new or an
        empty folder (pass it to :func:`replace_folder` as ``replacing``).

    Raises:
        ValueError: naming the path and the reason: its parent folder is missing or not
            writable; it is a symlink, the working directory or one of its parents, the home
            folder or the root; it exists (and is not an empty folder) but is not ours
            (:func:`refusal` names the foreign entry); it is ours but ``overwrite`` is false.
    """
    path = Path(path)
    parent = path.absolute().parent
    while parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{path}: its folder {parent} {'is not a folder' if parent.exists() else 'does not exist'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: its folder {parent} is not writable")
    if path.absolute().parent.is_dir():
        tidy_leftovers(path)
    if not (path.exists() or path.is_symlink()):
        return False
    reason = None if path.is_symlink() else _protected(path.resolve())
    if reason:
        raise ValueError(f"{path}: {reason}; refusing to write there (choose a new folder)")
    if is_empty_folder(path):
        return False
    reason = refusal(path, layout)
    if reason:
        raise ValueError(reason)
    if not overwrite:
        raise ValueError(f"{path} exists: {OVERWRITE_HINT}")
    return True


def check_resumable_output(path: str | os.PathLike, *, resume: bool, overwrite: bool, layout: Layout) -> None:
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
    if not is_empty_folder(path) and layout.holds(path):
        if not (resume or overwrite):
            raise FileExistsError(f"{path} is {_a(layout.what)} from an earlier run: pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another folder")
        if resume:
            reason = _protected(path.resolve())
            if reason:
                raise ValueError(f"{path}: {reason}; refusing to write there (choose a new folder)")
            return
    check_output(path, overwrite=overwrite, layout=layout, parents=True)


def _leftover(target: Path, kind: str) -> Path:
    """A new name beside ``target`` for this process's temporary ("partial") or set-aside ("old") folder."""
    return target.absolute().parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine: a process we may not signal counts as running,
    a zombie (exited, not yet reaped by its parent) as gone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists


def tidy_leftovers(target: str | os.PathLike) -> list[Path]:
    """Clean up what a killed run on ``target`` left beside it; return the leftovers handled.

    Only folders named as :func:`temporary_beside` and :func:`replace_folder` name them, whose
    process is no longer running: a partial write is removed; a set-aside old output is removed
    when ``target`` exists (the swap had finished) and put back at ``target`` when it does not
    (the run was killed mid-swap: the previous output is restored, not lost).
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]{{8}}\.(partial|old)")
    handled = []
    try:
        entries = sorted(target.absolute().parent.iterdir())
    except OSError:
        return handled
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if not found or entry.is_symlink() or not entry.is_dir() or process_alive(int(found[1])):
            continue
        try:
            if found[2] == "old" and not (target.exists() or target.is_symlink()):
                os.rename(entry, target)
            else:
                shutil.rmtree(entry)
        except OSError:  # another run tidies it at the same moment, or it cannot be removed: leave it
            continue
        handled.append(entry)
    return handled


def temporary_beside(target: str | os.PathLike) -> Path:
    """A new empty folder next to ``target`` (same filesystem, so :func:`replace_folder` is a rename).

    Its name carries this process's id, so a later run can tell it was left by a killed one
    (:func:`tidy_leftovers`). Its permissions follow the umask, as a folder made by ``mkdir``
    would (not ``mkdtemp``'s 0700).
    """
    while True:
        folder = _leftover(Path(target), "partial")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def replace_folder(temporary: str | os.PathLike, target: str | os.PathLike, *, replacing: bool,
                   layout: Layout) -> None:
    """Swap a fully written ``temporary`` folder in at ``target``, then delete the old ``target``.

    Args:
        temporary: the folder written (from :func:`temporary_beside`).
        target: where it goes.
        replacing: what :func:`check_output` returned: whether ``target`` was an output of ours
            to replace. When false, a ``target`` that appeared meanwhile (another run writing
            there) is never replaced.
        layout: the writer's layout; a ``target`` being replaced is checked again just before the
            swap (it must still be ours).

    The old target is renamed aside first, so at every moment ``target`` is either the old
    folder or the new one; if the swap fails the old folder is put back (and if the process
    is killed mid-swap, the next run on ``target`` puts it back).

    Raises:
        FileExistsError: ``target`` appeared while the command ran.
        ValueError: ``target`` is no longer an output of ours (:func:`refusal`).
    """
    temporary, target = Path(temporary), Path(target)
    appeared = (f"{target} appeared while this command ran (another run writing there?): refusing to replace it; "
                "rerun with --overwrite to replace it")
    if not replacing or not (target.exists() or target.is_symlink()):
        if target.exists() and not is_empty_folder(target) or target.is_symlink():
            raise FileExistsError(appeared)
        try:
            os.rename(temporary, target)  # onto an existing non-empty folder or a file, this fails: nothing replaced
        except OSError as error:
            if target.exists() or target.is_symlink():
                raise FileExistsError(appeared) from error
            raise
        return
    reason = refusal(target, layout)
    if reason:
        raise ValueError(f"{target} changed while this command ran: {reason}")
    aside = _leftover(target, "old")
    os.rename(target, aside)
    try:
        os.rename(temporary, target)
    except OSError:
        os.rename(aside, target)
        raise
    if refusal(aside, layout):  # something was added in the instant between the check and the swap: keep it
        kept = target.absolute().parent / f"{target.name}.kept-{uuid.uuid4().hex[:8]}"
        os.rename(aside, kept)
        logger.warning("%s changed during the swap: the previous folder is kept as %s", target, kept)
        return
    shutil.rmtree(aside, ignore_errors=True)


def remove_ours(path: str | os.PathLike, *, layout: Layout) -> None:
    """Delete a folder an earlier run of this command wrote (``--overwrite`` of a resumable writer).

    Raises:
        ValueError: the folder is not ours (:func:`refusal`), or is protected (see :func:`check_output`).
    """
    path = Path(path)
    if not path.exists():
        return
    check_output(path, overwrite=True, layout=layout)
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


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's pairs as a dict, refusing a key given twice (plain ``json`` keeps the last silently)."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object (which value was meant?)")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_strict(text: str, *, allow_nan: bool = False) -> object:
    """``json.loads`` that refuses a key repeated in one object and, unless ``allow_nan``, ``NaN``/``Infinity``.

    Raises:
        ValueError: naming the repeated key or the constant (``json.JSONDecodeError`` for bad syntax).
        RecursionError: nesting deeper than Python's recursion limit.
    """
    return json.loads(text, object_pairs_hook=_unique_keys, **({} if allow_nan else {"parse_constant": _refuse_constant}))


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
