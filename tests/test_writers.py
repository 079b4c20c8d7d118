"""Every writer (eval, tune, purify) follows robustwrap.outputs' rule; resumes check fingerprints."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.cli.app import app
from robustwrap.data import tensor_file
from robustwrap.evaluation import EvalConfig, run_evaluation
from robustwrap.images import LARGE_PIXELS, load_picture
from robustwrap.tune import TuneSettings, tune

from .tiny import tiny_classifier, tiny_unet, tiny_wrapper

CLEAN = EvalConfig(attack="none", batch_size=2)
TINY_TUNE = dict(calls=2, uniform_levels=(0.2,), heterogeneous_levels=(0.2,), cuts=(0.8,), n_attack=2,
                 evaluation=EvalConfig(attack="pgd-eot", iters=1, eot=1, loss="ce", eps=8 / 255, batch_size=4),
                 refine=False, families=("uniform",))
PURIFY_ARGS = ["--classifier", "small-resnet", "--diffusion", "small-unet", "--channels", "3",
               "--image-size", "16", "--steps", "10"]
runner = CliRunner()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _data(n: int = 4):
    generator = torch.Generator().manual_seed(5)
    return torch.rand(n, 3, 16, 16, generator=generator), torch.randint(0, 10, (n,), generator=generator)


@pytest.fixture
def users_folder(tmp_path: Path) -> Path:
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "thesis.txt").write_bytes(b"four years\n")
    (mine / "table.md").write_bytes(b"| my | table |\n")
    return mine


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_evaluation_refuses_a_users_folder(users_folder, flags):
    images, labels = _data()
    before = snapshot(users_folder)
    with pytest.raises(ValueError, match="not a results folder written by robustwrap"):
        run_evaluation(tiny_wrapper(), images, labels, CLEAN, users_folder, num_classes=10, **flags)
    assert snapshot(users_folder) == before


def test_evaluation_overwrite_replaces_only_its_own_folder(tmp_path):
    images, labels = _data()
    out = tmp_path / "run"
    run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10)
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10)
    (out / "results.jsonl").write_text((out / "results.jsonl").read_text() + "\n")  # marks the old file
    report = run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, overwrite=True).to_json()
    assert report["n_samples"] == 4 and not (out / "results.jsonl").read_text().endswith("\n\n")
    (out / "notes.txt").write_text("mine")  # now it holds something of the user's: never replaced
    with pytest.raises(ValueError, match="holds notes.txt, which robustwrap does not write into a results folder"):
        run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_start_leaves_nothing_and_does_not_block_the_rerun(tmp_path, monkeypatch):
    images, labels = _data()
    out = tmp_path / "deep" / "run"
    for bad, match in ((images * 255, r"values in \[0, 1\]"), (images.clone().fill_(float("nan")), "NaN")):
        with pytest.raises(ValueError, match=match):
            run_evaluation(tiny_wrapper(), bad, labels, CLEAN, out, num_classes=10)
        assert not (tmp_path / "deep").exists()
    import robustwrap.evaluation.run as evaluation  # where run_evaluation looks evaluate_batch up

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "evaluate_batch", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10)
    assert not (tmp_path / "deep").exists()
    assert run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10).n_samples == 4


def test_resume_refuses_other_data_or_weights_naming_what_changed(tmp_path):
    images, labels = _data()
    out = tmp_path / "run"
    run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, stop_after=1)
    before = snapshot(out)
    other_weights = tiny_wrapper()
    with torch.no_grad():
        next(other_weights.classifier.parameters()).add_(0.01)
    changed_images = images.clone()
    changed_images[3, 0, 0, 0] = 0.5
    for wrapper, data, what in ((tiny_wrapper(), (changed_images, labels), "the images changed"),
                                (tiny_wrapper(), (images, (labels + 1) % 10), "the labels changed"),
                                (other_weights, (images, labels), "the classifier's weights changed")):
        with pytest.raises(ValueError, match=what):
            run_evaluation(wrapper, *data, CLEAN, out, num_classes=10, resume=True)
        assert snapshot(out) == before
    assert run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, resume=True).n_samples == 4


def test_tensors_data_with_unequal_counts_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "data.safetensors"
    save_file({"images": torch.rand(20, 3, 16, 16), "labels": torch.zeros(5, dtype=torch.long)}, str(path))
    with pytest.raises(ValueError, match="holds 20 images but 5 labels"):
        tensor_file(path)
    save_file({"images": torch.rand(2, 3, 16, 16), "labels": torch.tensor([0.5, 1.0])}, str(path))
    with pytest.raises(ValueError, match="labels must be integers"):
        tensor_file(path)


@pytest.fixture
def tune_data():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = tiny_classifier()(images).argmax(1)
    return images, labels


def _tune(out: Path, data, **flags):
    wrapper = RobustWrapper(tiny_classifier(), tiny_unet(), PurifyConfig())
    return tune(wrapper, *data, out, TuneSettings(**TINY_TUNE), num_classes=10, **flags)


def test_tune_refuses_a_users_folder_and_replaces_only_its_own(tmp_path, users_folder, tune_data):
    before = snapshot(users_folder)
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError, match="not a tune folder written by robustwrap"):
            _tune(users_folder, tune_data, **flags)
    assert snapshot(users_folder) == before
    out = tmp_path / "sweep"
    _tune(out, tune_data)
    with pytest.raises(FileExistsError, match="--resume"):
        _tune(out, tune_data)
    (out / "table.md").write_text("stale")
    _tune(out, tune_data, overwrite=True)
    assert (out / "table.md").read_text() != "stale" and json.loads((out / "best.json").read_text())
    changed = (tune_data[0].flip(0), tune_data[1].flip(0))
    with pytest.raises(ValueError, match="the images changed"):
        _tune(out, changed, resume=True)


def test_a_failed_tune_start_leaves_nothing(tmp_path, tune_data, monkeypatch):
    import robustwrap.tune as tuning

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(tuning, "run_evaluation", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        _tune(tmp_path / "sweep", tune_data)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(ValueError, match="NaN"):
        _tune(tmp_path / "sweep", (tune_data[0] * float("nan"), tune_data[1]))
    assert not (tmp_path / "sweep").exists()


def _photo(path: Path) -> Path:
    from PIL import Image

    Image.fromarray((np.random.rand(16, 16, 3) * 255).astype("uint8")).save(path)
    return path


def test_purify_replaces_only_its_own_folder(tmp_path, users_folder):
    photo = _photo(tmp_path / "photo.png")
    before = snapshot(users_folder)
    for flags in ([], ["--overwrite"]):
        code, output = invoke("purify", str(photo), "--out", str(users_folder), *PURIFY_ARGS, *flags)
        assert code == 2 and "not a purify folder written by robustwrap" in output and "Traceback" not in output
    assert snapshot(users_folder) == before
    out = tmp_path / "out"
    assert invoke("purify", str(photo), "--out", str(out), *PURIFY_ARGS)[0] == 0
    assert json.loads((out / "purify.json").read_text())["files"] == ["photo.purified.png", "photo.figure.png"]
    code, output = invoke("purify", str(photo), "--out", str(out), *PURIFY_ARGS)
    assert code == 2 and "exists: choose another path or pass --overwrite" in output
    other = _photo(tmp_path / "other.png")
    code, output = invoke("purify", str(other), "--out", str(out), "--overwrite", *PURIFY_ARGS)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["other.figure.png", "other.purified.png", "purify.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydocs", "other.png", "out", "photo.png"]


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height grey pixels (its data is a stub: only the header is read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def test_huge_images_are_refused_before_decoding_and_large_ones_warned_about(tmp_path, caplog):
    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ValueError, match="bomb.png.*over the limit of 50000000"):
        load_picture(bomb)
    with pytest.raises(ValueError, match="over the limit of 1000"):
        load_picture(_png_header(tmp_path / "small.png", 40, 40), max_pixels=1000)
    code, output = invoke("purify", str(bomb), "--out", str(tmp_path / "out"), *PURIFY_ARGS)
    assert code == 2 and "over the limit" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()
    from PIL import Image

    Image.new("1", (2100, LARGE_PIXELS // 2000)).save(tmp_path / "large.png")
    with caplog.at_level("WARNING", logger="robustwrap.images"):
        load_picture(tmp_path / "large.png")
    assert "large image" in caplog.text


def test_a_report_left_mid_write_by_a_crash_does_not_make_the_folder_foreign(tmp_path):
    images, labels = _data()
    out = tmp_path / "run"
    run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10)
    (out / ".report.json.0123abcd.tmp").write_text('{"clean')
    assert run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, resume=True).n_samples == 4
    (out / ".hidden-notes.tmp").write_text("mine")
    with pytest.raises(ValueError, match="holds .hidden-notes.tmp, which robustwrap does not write"):
        run_evaluation(tiny_wrapper(), images, labels, CLEAN, out, num_classes=10, overwrite=True)
