"""The write rule (robustwrap.outputs): real folders, the user's files unchanged byte for byte."""

import json
import math
import os
from pathlib import Path

import pytest

import subprocess
import sys

from robustwrap.outputs import (Layout, check_output, check_resumable_output, dumps_strict, loads_strict, remove_ours,
                                replace_folder, temporary_beside, tidy_leftovers, write_text_atomic)


def marked(path: Path) -> bool:
    return (path / "marker.json").is_file()


# A writer that writes marker.json, stale.png and a folder sub/ of files.
THING = Layout("thing", marker=marked, owns=lambda folder, entry: entry.name in ("marker.json", "stale.png", "sub"),
               record="marker.json")
ANYTHING = Layout("thing", marker=lambda _: True, owns=lambda _, __: True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path: Path) -> Path:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_bytes(b"four years of work\n")
    return precious


def test_a_new_path_or_an_empty_folder_is_fine(tmp_path):
    check_output(tmp_path / "new", overwrite=False, layout=THING)
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=False, layout=THING)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_refused_and_unchanged(users_folder, overwrite):
    before = snapshot(users_folder)
    with pytest.raises(ValueError, match="is a folder with other files, not a thing written by robustwrap: "
                       "refusing to replace it") as error:
        check_output(users_folder, overwrite=overwrite, layout=THING)
    assert str(users_folder) in str(error.value)
    with pytest.raises(ValueError):
        remove_ours(users_folder, layout=THING)
    assert snapshot(users_folder) == before


def test_our_folder_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "marker.json").write_text("{}")
    with pytest.raises(ValueError, match="out exists: choose another path or pass --overwrite"):
        check_output(tmp_path / "out", overwrite=False, layout=THING)
    check_output(tmp_path / "out", overwrite=True, layout=THING)


def test_a_plain_file_and_a_symlink_are_refused(tmp_path, users_folder):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"notes")
    (users_folder / "marker.json").write_text("{}")  # even a link to a folder of ours is not replaced
    link = tmp_path / "link"
    link.symlink_to(users_folder)
    for path, kind, layout in ((notes, "a file", THING), (link, "a symlink", ANYTHING)):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=f"is {kind}, not a thing"):
                check_output(path, overwrite=overwrite, layout=layout)
    assert notes.read_bytes() == b"notes" and (users_folder / "thesis.txt").exists()


def test_the_working_directory_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "marker.json").write_text("{}")
    monkeypatch.chdir(work)
    for path, reason in ((Path("."), "the working directory"), (Path(os.getcwd()), "the working directory"),
                         (Path(".."), "holds the working directory"), (tmp_path, "holds the working directory")):
        with pytest.raises(ValueError, match=reason):
            check_output(path, overwrite=True, layout=ANYTHING)
    with pytest.raises(ValueError, match="filesystem root"):
        check_output(Path("/"), overwrite=True, layout=ANYTHING)
    assert (work / "marker.json").exists()


def test_a_missing_parent_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_output(tmp_path / "nowhere" / "out", overwrite=False, layout=THING)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_parent_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_output(locked / "out", overwrite=False, layout=THING)
    finally:
        locked.chmod(0o755)


def test_a_recognised_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text("old")
    (target / "stale.png").write_bytes(b"old")
    replacing = check_output(target, overwrite=True, layout=THING)
    work = temporary_beside(target)
    assert replacing and work.parent == tmp_path and work.name.startswith(f".out.{os.getpid()}.")
    (work / "marker.json").write_text("new")
    replace_folder(work, target, replacing=replacing, layout=THING)
    assert snapshot(target) == {"marker.json": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_replace_folder_creates_a_new_target(tmp_path):
    work = temporary_beside(tmp_path / "fresh")
    (work / "a").write_text("a")
    replace_folder(work, tmp_path / "fresh", replacing=False, layout=THING)
    assert snapshot(tmp_path / "fresh") == {"a": b"a"} and not work.exists()


def test_remove_ours_removes_only_a_recognised_folder(tmp_path):
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "marker.json").write_text("{}")
    remove_ours(target, layout=THING)
    assert not target.exists()
    remove_ours(target, layout=THING)  # absent: nothing to do


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
    check_resumable_output(ours, resume=False, overwrite=False, layout=THING)
    ours.mkdir(parents=True)
    (ours / "marker.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is a thing from an earlier run: pass --resume"):
        check_resumable_output(ours, resume=False, overwrite=False, layout=THING)
    with pytest.raises(ValueError, match="pass one of them"):
        check_resumable_output(ours, resume=True, overwrite=True, layout=THING)
    check_resumable_output(ours, resume=True, overwrite=False, layout=THING)
    check_resumable_output(ours, resume=False, overwrite=True, layout=THING)
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
        with pytest.raises(ValueError, match="not a thing written by robustwrap"):
            check_resumable_output(users_folder, layout=THING, **flags)


def test_a_marked_folder_with_a_file_the_writer_does_not_write_is_refused(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text("{}")
    (target / "NOTES.md").write_bytes(b"mine")
    before = snapshot(target)
    for call in (lambda: check_output(target, overwrite=True, layout=THING),
                 lambda: remove_ours(target, layout=THING),
                 lambda: check_resumable_output(target, resume=True, overwrite=False, layout=THING)):
        with pytest.raises(ValueError, match="out holds NOTES.md, which robustwrap does not write into a thing: "
                           "refusing to replace it"):
            call()
    assert snapshot(target) == before
    (target / "NOTES.md").unlink()
    (target / "sub").mkdir()
    (target / "sub" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="holds sub"):  # THING owns sub/ by name; a symlink anywhere is foreign
        check_output(target, overwrite=True, layout=Layout("thing", marked, lambda f, e: e.name == "marker.json"))
    assert (target / "sub" / "link").is_symlink() and (target / "marker.json").read_text() == "{}"


def test_a_torn_record_is_named_with_what_to_do(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text('{"cut')
    torn = Layout("thing", marker=lambda f: (f / "marker.json").read_text() == "{}", owns=THING.owns,
                  record="marker.json")
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
        with pytest.raises(ValueError, match="marker.json is torn or damaged .* choose another folder"):
            check_resumable_output(target, layout=torn, **flags)
    assert (target / "marker.json").read_text() == '{"cut'
    (target / "marker.json").write_text('{"another": "program"}')  # valid JSON, not ours: someone else's file
    with pytest.raises(ValueError, match="is a folder with other files, not a thing written by robustwrap"):
        check_resumable_output(target, layout=torn, resume=True, overwrite=False)


def test_the_swap_never_replaces_a_target_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "out"
    replacing = check_output(target, overwrite=True, layout=THING)  # new: nothing to replace
    work = temporary_beside(target)
    (work / "marker.json").write_text("second")
    target.mkdir()  # another run finished first
    (target / "marker.json").write_text("first")
    with pytest.raises(FileExistsError, match="appeared while this command ran"):
        replace_folder(work, target, replacing=replacing, layout=THING)
    assert snapshot(target) == {"marker.json": b"first"}


def test_the_swap_checks_again_that_the_target_is_still_ours(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text("{}")
    replacing = check_output(target, overwrite=True, layout=THING)
    work = temporary_beside(target)
    (target / "added-meanwhile.txt").write_bytes(b"mine")
    with pytest.raises(ValueError, match="changed while this command ran: .* holds added-meanwhile.txt"):
        replace_folder(work, target, replacing=replacing, layout=THING)
    assert snapshot(target) == {"marker.json": b"{}", "added-meanwhile.txt": b"mine"}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_run_are_tidied_by_the_next_run_and_only_those(tmp_path):
    target = tmp_path / "out"
    dead = _dead_pid()
    killed_write = tmp_path / f".out.{dead}.0123abcd.partial"
    running_write = tmp_path / f".out.{os.getpid()}.4567abcd.partial"  # a live process: left alone
    other_target = tmp_path / f".other.{dead}.89abcdef.partial"
    users = tmp_path / ".out.partial"  # not a name robustwrap gives: the user's
    for folder in (killed_write, running_write, other_target, users):
        folder.mkdir()
        (folder / "x").write_text("x")
    check_output(target, overwrite=False, layout=THING)
    assert not killed_write.exists() and running_write.exists() and other_target.exists() and users.exists()


def test_a_swap_killed_midway_gets_the_old_output_back(tmp_path):
    target = tmp_path / "out"
    old = tmp_path / f".out.{_dead_pid()}.0123abcd.old"  # renamed aside, then the process was killed
    old.mkdir()
    (old / "marker.json").write_text("{}")
    assert tidy_leftovers(target) == [old]
    assert snapshot(target) == {"marker.json": b"{}"} and not old.exists()
    old.mkdir()  # the swap had finished (target exists): the aside copy goes
    (old / "marker.json").write_text("older")
    tidy_leftovers(target)
    assert not old.exists() and snapshot(target) == {"marker.json": b"{}"}


def test_loads_strict_refuses_a_repeated_key_and_non_finite_constants():
    assert loads_strict('{"a": {"b": 1}, "c": [1.5]}') == {"a": {"b": 1}, "c": [1.5]}
    with pytest.raises(ValueError, match="the key 't_l' appears twice"):
        loads_strict('{"config": {"t_l": 0.2, "t_l": 0.9}}')
    with pytest.raises(ValueError, match="NaN is not a number JSON allows"):
        loads_strict('{"a": NaN}')
    assert math.isnan(loads_strict('{"a": NaN}', allow_nan=True)["a"])


def test_a_file_added_during_the_swap_is_kept_not_deleted(tmp_path, monkeypatch):
    import robustwrap.outputs as outputs

    target = tmp_path / "out"
    target.mkdir()
    (target / "marker.json").write_text("old")
    replacing = check_output(target, overwrite=True, layout=THING)
    work = temporary_beside(target)
    (work / "marker.json").write_text("new")
    checked = outputs.refusal

    def add_after_the_check(path, layout):  # the user adds a file right after the last check
        reason = checked(path, layout)
        if path == target:
            (target / "added.txt").write_bytes(b"mine")
        return reason

    monkeypatch.setattr(outputs, "refusal", add_after_the_check)
    replace_folder(work, target, replacing=replacing, layout=THING)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.kept-")]
    assert snapshot(target) == {"marker.json": b"new"} and len(kept) == 1
    assert snapshot(kept[0]) == {"marker.json": b"old", "added.txt": b"mine"}


def test_a_killed_atomic_write_does_not_make_a_folder_foreign(tmp_path):
    from robustwrap.outputs import is_atomic_temporary

    (tmp_path / ".best.json.0123abcd.tmp").write_text("{")
    (tmp_path / ".notes.txt.0123abcd.tmp").write_text("{")
    assert is_atomic_temporary(tmp_path / ".best.json.0123abcd.tmp", {"best.json"})
    assert not is_atomic_temporary(tmp_path / ".notes.txt.0123abcd.tmp", {"best.json"})


def test_the_bundle_layout_owns_what_export_quantize_and_verify_write_and_nothing_else(tmp_path):
    from robustwrap.export.format import BUNDLE_LAYOUT, FORMAT

    bundle = tmp_path / "b"
    (bundle / "verified").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"format": FORMAT, "components": {
        "denoiser": {"file": "denoiser.onnx"}, "classifier": {"file": "classifier.onnx"}}}))
    for name in ("denoiser.onnx", "denoiser.onnx.data", "classifier.onnx", "denoiser.int8.xml", "denoiser.int8.bin",
                 ".config.json.0123abcd.tmp", "timing.cache", "verified/openvino-bf16.json",
                 "verified/openvino-classifier-fp32-denoiser-int8.png", "verified/.onnxruntime-fp32.json.0123abcd.tmp"):
        (bundle / name).write_text("x")
    assert BUNDLE_LAYOUT.holds(bundle)  # a killed quantisation or record write leaves it ours
    (bundle / "verified" / "my notes.txt").write_text("mine")
    assert BUNDLE_LAYOUT.foreign(bundle) == bundle / "verified"
