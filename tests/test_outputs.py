"""The write rule (robustwrap.outputs): real folders, the user's files unchanged byte for byte."""

import json
import math
import os
from pathlib import Path

import pytest

from robustwrap.outputs import (check_output, check_resumable_output, dumps_strict, remove_ours, replace_folder,
                                temporary_beside, write_text_atomic)


def marked(path: Path) -> bool:
    return (path / "marker.json").is_file()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path: Path) -> Path:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_bytes(b"four years of work\n")
    return precious


def test_a_new_path_or_an_empty_folder_is_fine(tmp_path):
    check_output(tmp_path / "new", overwrite=False, ours=marked, what="thing")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=False, ours=marked, what="thing")


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_refused_and_unchanged(users_folder, overwrite):
    before = snapshot(users_folder)
    with pytest.raises(ValueError, match="is a folder with other files, not a thing written by robustwrap: "
                       "refusing to replace it") as error:
        check_output(users_folder, overwrite=overwrite, ours=marked, what="thing")
    assert str(users_folder) in str(error.value)
    with pytest.raises(ValueError):
        remove_ours(users_folder, ours=marked, what="thing")
    assert snapshot(users_folder) == before


def test_our_folder_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "marker.json").write_text("{}")
    with pytest.raises(ValueError, match="out exists: choose another path or pass --overwrite"):
        check_output(tmp_path / "out", overwrite=False, ours=marked, what="thing")
    check_output(tmp_path / "out", overwrite=True, ours=marked, what="thing")


def test_a_plain_file_and_a_symlink_are_refused(tmp_path, users_folder):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"notes")
    (users_folder / "marker.json").write_text("{}")  # even a link to a folder of ours is not replaced
    link = tmp_path / "link"
    link.symlink_to(users_folder)
    for path, kind, ours in ((notes, "a file", marked), (link, "a symlink", lambda p: True)):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=f"is {kind}, not a thing"):
                check_output(path, overwrite=overwrite, ours=ours, what="thing")
    assert notes.read_bytes() == b"notes" and (users_folder / "thesis.txt").exists()


def test_a_single_file_writer_may_recognise_its_own_file(tmp_path):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"ours")
    check_output(graph, overwrite=True, ours=lambda p: p.read_bytes() == b"ours", what="graph")


def test_the_working_directory_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "marker.json").write_text("{}")
    monkeypatch.chdir(work)
    for path, reason in ((Path("."), "the working directory"), (Path(os.getcwd()), "the working directory"),
                         (Path(".."), "holds the working directory"), (tmp_path, "holds the working directory")):
        with pytest.raises(ValueError, match=reason):
            check_output(path, overwrite=True, ours=lambda p: True, what="thing")
    with pytest.raises(ValueError, match="filesystem root"):
        check_output(Path("/"), overwrite=True, ours=lambda p: True, what="thing")
    assert (work / "marker.json").exists()


def test_a_missing_parent_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_output(tmp_path / "nowhere" / "out", overwrite=False, ours=marked, what="thing")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_parent_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_output(locked / "out", overwrite=False, ours=marked, what="thing")
    finally:
        locked.chmod(0o755)


def test_a_recognised_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text("old")
    (target / "stale.png").write_bytes(b"old")
    check_output(target, overwrite=True, ours=marked, what="thing")
    work = temporary_beside(target)
    assert work.parent == tmp_path and work.name.startswith(".out.")
    (work / "marker.json").write_text("new")
    replace_folder(work, target)
    assert snapshot(target) == {"marker.json": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_replace_folder_creates_a_new_target(tmp_path):
    work = temporary_beside(tmp_path / "fresh")
    (work / "a").write_text("a")
    replace_folder(work, tmp_path / "fresh")
    assert snapshot(tmp_path / "fresh") == {"a": b"a"} and not work.exists()


def test_remove_ours_removes_only_a_recognised_folder(tmp_path):
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "marker.json").write_text("{}")
    remove_ours(target, ours=marked, what="thing")
    assert not target.exists()
    remove_ours(target, ours=marked, what="thing")  # absent: nothing to do


def test_write_text_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best.json"
    path.write_text("old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_written_files_and_folders_get_the_usual_permissions(tmp_path):
    (tmp_path / "plain").write_text("x")
    (tmp_path / "plain-folder").mkdir()
    write_text_atomic(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkstemp's 0600
    assert temporary_beside(tmp_path / "out").stat().st_mode == (tmp_path / "plain-folder").stat().st_mode


def test_dumps_strict_names_the_non_finite_field():
    assert json.loads(dumps_strict({"a": [1.0, 2]})) == {"a": [1.0, 2]}
    with pytest.raises(ValueError, match=r"points\[1\]\.clean is not a finite number"):
        dumps_strict({"points": [{"clean": 0.5}, {"clean": math.nan}]})
    with pytest.raises(ValueError, match="eta is not a finite number"):
        dumps_strict({"eta": math.inf}, indent=2)


def test_a_resumable_writer_continues_or_replaces_only_its_own(tmp_path, users_folder):
    ours = tmp_path / "run" / "deeper"  # missing parents are created by resumable writers
    check_resumable_output(ours, resume=False, overwrite=False, ours=marked, what="thing")
    ours.mkdir(parents=True)
    (ours / "marker.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is a thing from an earlier run: pass --resume"):
        check_resumable_output(ours, resume=False, overwrite=False, ours=marked, what="thing")
    with pytest.raises(ValueError, match="pass one of them"):
        check_resumable_output(ours, resume=True, overwrite=True, ours=marked, what="thing")
    check_resumable_output(ours, resume=True, overwrite=False, ours=marked, what="thing")
    check_resumable_output(ours, resume=False, overwrite=True, ours=marked, what="thing")
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
        with pytest.raises(ValueError, match="not a thing written by robustwrap"):
            check_resumable_output(users_folder, ours=marked, what="thing", **flags)
