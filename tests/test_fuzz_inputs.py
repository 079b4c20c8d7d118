"""A careless user's bad inputs, as a table: each fails cleanly and leaves every file as it was.

Every row runs in one shared workspace (the working directory, holding the user's files, our
fixtures and an earlier eval run) and asserts: a non-zero exit code (commands) or the named
exception (library); one "error:" line and no traceback; every file byte for byte as before
and no file added.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustwrap import PurifyConfig
from robustwrap.cli import common
from robustwrap.cli.app import app

MODELS = ["--classifier", "small-resnet", "--diffusion", "small-unet", "--num-classes", "10"]
EVAL = ["eval", "--data", "tensors:ok.safetensors", *MODELS, "--steps", "10", "--attack", "none", "--iters", "0",
        "--batch-size", "8", "--defenses", "heterogeneous"]
TUNE = ["tune", "--data", "tensors:ok.safetensors", *MODELS, "--calls", "2", "--n-attack", "2", "--iters", "1"]
PURIFY = ["purify", "photo.png", *MODELS, "--channels", "3", "--image-size", "16", "--steps", "10"]
EXPORT = ["export", *MODELS, "--image-size", "16", "--steps", "10", "--no-check"]
CONFIG_HEAD = '{"format": "robustwrap.PurifyConfig", "version": 1, "config": '
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG declaring width x height pixels (only its header is ever read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


def _hub_repo(cache: Path, repo_id: str, config_text: str) -> None:
    """A hub-cache snapshot holding only ``config.json``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text(config_text)


def _data(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(path))


def _make_workspace(root: Path) -> None:
    """The user's files, bad inputs of every kind, and an earlier eval run."""
    (root / "precious").mkdir()
    (root / "precious" / "thesis.txt").write_bytes(b"four years of work\n")
    (root / "notes.txt").write_bytes(b"my notes\n")
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(6, 3, 16, 16, generator=generator), torch.arange(6) % 3
    _data(root / "ok.safetensors", images, labels)
    _data(root / "other.safetensors", images.flip(0), labels)
    _data(root / "counts.safetensors", torch.rand(20, 3, 16, 16, generator=generator), torch.zeros(5, dtype=torch.long))
    _data(root / "scale255.safetensors", images * 255, labels)
    _data(root / "nan.safetensors", images.masked_fill(images > 0.9, math.nan), labels)
    _data(root / "floatlabels.safetensors", images, labels.float() + 0.5)
    configs = {
        "good.json": CONFIG_HEAD + '{"steps": 10}}',
        "nan_eta.json": CONFIG_HEAD + '{"eta": NaN}}',
        "nan_eta.toml": 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\neta = nan\n',
        "inf_p.toml": 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\np = inf\n',
        "no.json": CONFIG_HEAD + '{"grad_checkpoint": "no"}}',
        "votes.json": CONFIG_HEAD + '{"votes": 2.5}}',
        "tl_nan.json": CONFIG_HEAD + '{"t_l": NaN}}',
        "deep.json": "[" * 50_000 + "]" * 50_000,
        "version.json": '{"format": "robustwrap.PurifyConfig", "version": "1", "config": {}}',
        "list.json": "[1, 2, 3]",
        "eta5.json": CONFIG_HEAD + '{"eta": 5}}',
        "p100.json": CONFIG_HEAD + '{"p": 100}}',
        "twice.json": CONFIG_HEAD + '{"t_l": 0.2, "t_l": 0.9}}',
        "twice.toml": 'format = "robustwrap.PurifyConfig"\nversion = 1\n[config]\nt_l = 0.2\nt_l = 0.9\n',
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8")).save(root / "photo.png")
    _png_header(root / "bomb.png", 20000, 20000)
    (root / "fake.png").write_text("<html>not an image</html>")
    (root / "code.pt").write_bytes(b"\x80\x02cnot_installed_pkg\nThing\nq\x00)\x81q\x01.")
    # A pickle whose loading would call os.system("echo pwned") (protocol 2, as torch.save writes).
    (root / "system.pt").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01cposix\nsystem\nq\x02X\n\x00\x00\x00"
                                     b"echo pwnedq\x03\x85q\x04Rq\x05s.")
    torch.save({"w": torch.ones(1000)}, root / "whole.pt")
    (root / "cut.pt").write_bytes((root / "whole.pt").read_bytes()[:300])
    (root / "whole.pt").unlink()
    cache = root / "hub"
    _hub_repo(cache, "someone/listcfg", "[1, 2]")
    _hub_repo(cache, "someone/tencfg", json.dumps({"architecture": "resnet18", "num_classes": "ten"}))
    _hub_repo(cache, "someone/badjson", "{not json")
    result = CliRunner().invoke(app, [*EVAL, "--out", "oldrun"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*EXPORT, "--out", "bundle", "--triton-repo", "serving", "--name", "small"])
    assert result.exit_code == 0, result.output
    shutil.copytree(root / "bundle", root / "noted-bundle")  # a real bundle the user added a note to
    (root / "noted-bundle" / "NOTES.md").write_bytes(b"what I changed\n")
    (root / "measured").mkdir()  # the user's folder, with a bundle's config.json copied into it
    shutil.copyfile(root / "bundle" / "config.json", root / "measured" / "config.json")
    (root / "measured" / "results.csv").write_bytes(b"run,accuracy\n1,0.93\n")
    shutil.copytree(root / "serving", root / "noted-serving")  # a real Triton model the user added a note to
    (root / "noted-serving" / "small" / "my_notes.txt").write_bytes(b"deployed on monday\n")
    (root / "empty").mkdir()  # an empty folder (`robustwrap serve` refuses it)
    (root / "torn-tune").mkdir()  # a tune folder whose record was cut short
    (root / "torn-tune" / "tune.json").write_text('{"tune": {"calls": 2, "uniform_le')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        _make_workspace(root)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (id, command line, words the error line must hold)
COMMAND_ROWS = [
    # eval: outputs
    ("eval-users-folder", [*EVAL, "--out", "precious"], "not an eval folder written by robustwrap"),
    ("eval-users-folder-overwrite", [*EVAL, "--out", "precious", "--overwrite"], "not an eval folder"),
    ("eval-plain-file", [*EVAL, "--out", "notes.txt"], "is a file"),
    ("eval-plain-file-overwrite", [*EVAL, "--out", "notes.txt", "--overwrite"], "is a file"),
    ("eval-working-directory", [*EVAL, "--out", ".", "--overwrite"], "is the working directory"),
    ("eval-parent-directory", [*EVAL, "--out", "..", "--overwrite"], "holds the working directory"),
    ("eval-rerun-without-resume", [*EVAL, "--out", "oldrun"], "pass --resume to continue it, --overwrite"),
    ("eval-resume-and-overwrite", [*EVAL, "--out", "oldrun", "--resume", "--overwrite"], "pass one of them"),
    ("eval-resume-other-data", ["eval", *EVAL[1:2], "tensors:other.safetensors", *EVAL[3:], "--out", "oldrun",
                                "--resume"], "the images changed"),
    ("eval-resume-other-seed", [*EVAL, "--out", "oldrun", "--resume", "--seed", "5"], "other settings"),
    # eval: data
    ("eval-count-mismatch", ["eval", "--data", "tensors:counts.safetensors", *EVAL[3:], "--out", "r"],
     "holds 20 images but 5 labels"),
    ("eval-data-0-255", ["eval", "--data", "tensors:scale255.safetensors", *EVAL[3:], "--out", "r"], "values in [0, 1]"),
    ("eval-data-nan", ["eval", "--data", "tensors:nan.safetensors", *EVAL[3:], "--out", "r"], "NaN"),
    ("eval-float-labels", ["eval", "--data", "tensors:floatlabels.safetensors", *EVAL[3:], "--out", "r"],
     "labels must be integers"),
    ("eval-missing-data", ["eval", "--data", "tensors:nowhere.safetensors", *EVAL[3:], "--out", "r"], "not found"),
    ("eval-labels-out-of-range", [*EVAL, "--num-classes", "2", "--out", "r"], "labels must be in [0, 2)"),
    # eval: settings
    ("eval-config-nan-eta", [*EVAL, "--config", "nan_eta.json", "--out", "r"], "nan_eta.json: eta must be a finite"),
    ("eval-config-nan-eta-toml", [*EVAL, "--config", "nan_eta.toml", "--out", "r"], "eta must be a finite number"),
    ("eval-config-inf-p", [*EVAL, "--config", "inf_p.toml", "--out", "r"], "p must be a finite number"),
    ("eval-config-string-bool", [*EVAL, "--config", "no.json", "--out", "r"], "grad_checkpoint must be true or false"),
    ("eval-config-fractional-votes", [*EVAL, "--config", "votes.json", "--out", "r"], "votes must be an int"),
    ("eval-config-nan-t-l", [*EVAL, "--config", "tl_nan.json", "--out", "r"], "t_l must be a finite number"),
    ("eval-config-deep", [*EVAL, "--config", "deep.json", "--out", "r"], "nested too deeply"),
    ("eval-config-string-version", [*EVAL, "--config", "version.json", "--out", "r"], "version must be an integer"),
    ("eval-config-a-list", [*EVAL, "--config", "list.json", "--out", "r"], "is not a robustwrap config"),
    ("eval-eps-nan", [*EVAL, "--eps", "nan", "--out", "r"], "--eps nan: settings must be finite"),
    ("eval-eps-above-1", [*EVAL, "--eps", "2", "--out", "r"], "an L-inf eps must be at most 1"),
    ("eval-config-eta-5", [*EVAL, "--config", "eta5.json", "--out", "r"], "eta must be in [0, 1]"),
    ("eval-config-p-100", [*EVAL, "--config", "p100.json", "--out", "r"], "p must be in (0, 8]"),
    ("eval-config-key-twice", [*EVAL, "--config", "twice.json", "--out", "r"], "the key 't_l' appears twice"),
    ("eval-config-key-twice-toml", [*EVAL, "--config", "twice.toml", "--out", "r"], "Cannot overwrite a value"),
    ("eval-t-l-inf", [*EVAL, "--t-l", "inf", "--out", "r"], "--t-l inf: settings must be finite"),
    ("eval-votes-a-billion", [*EVAL, "--votes", "1000000000", "--out", "r"], "allocate"),  # fails in batch 1
    # eval: weights and hub specs
    ("eval-weights-need-code", [*EVAL, "--classifier-weights", "code.pt", "--out", "r"], "would execute code"),
    ("eval-weights-call-os-system", [*EVAL, "--classifier-weights", "system.pt", "--out", "r"],
     "would execute code (it pickles posix.system)"),
    ("eval-weights-truncated", [*EVAL, "--classifier-weights", "cut.pt", "--out", "r"], "cut.pt"),
    ("hub-config-a-list", ["eval", *EVAL[1:3], "--classifier", "hf:someone/listcfg", *EVAL[5:], "--out", "r"],
     "holds a JSON list"),
    ("hub-num-classes-ten", ["eval", *EVAL[1:3], "--classifier", "hf:someone/tencfg", *EVAL[5:], "--out", "r"],
     "num_classes must be a positive integer, got 'ten'"),
    ("hub-config-not-json", ["eval", *EVAL[1:3], "--classifier", "hf:someone/badjson", *EVAL[5:], "--out", "r"],
     "is not valid JSON"),
    # tune
    ("tune-users-folder", [*TUNE, "--out", "precious"], "not a tune folder written by robustwrap"),
    ("tune-users-folder-overwrite", [*TUNE, "--out", "precious", "--overwrite"], "not a tune folder"),
    ("tune-plain-file", [*TUNE, "--out", "notes.txt", "--overwrite"], "is a file"),
    ("tune-an-eval-folder", [*TUNE, "--out", "oldrun", "--overwrite"], "not a tune folder"),
    ("tune-config-nan-eta", [*TUNE, "--config", "nan_eta.json", "--out", "t"], "eta must be a finite number"),
    ("tune-config-deep", [*TUNE, "--config", "deep.json", "--out", "t"], "nested too deeply"),
    ("tune-resume-torn-record", [*TUNE, "--out", "torn-tune", "--resume"], "tune.json is torn or damaged"),
    ("tune-overwrite-torn-record", [*TUNE, "--out", "torn-tune", "--overwrite"], "choose another folder"),
    ("tune-min-clean-nan", [*TUNE, "--min-clean", "nan", "--out", "t"], "--min-clean nan"),
    ("tune-eps-inf", [*TUNE, "--eps", "inf", "--out", "t"], "--eps inf"),
    ("tune-count-mismatch", ["tune", "--data", "tensors:counts.safetensors", *TUNE[3:], "--out", "t"],
     "holds 20 images but 5 labels"),
    ("tune-data-nan", ["tune", "--data", "tensors:nan.safetensors", *TUNE[3:], "--out", "t"], "NaN"),
    # purify
    ("purify-users-folder", [*PURIFY, "--out", "precious"], "not a purify folder written by robustwrap"),
    ("purify-users-folder-overwrite", [*PURIFY, "--out", "precious", "--overwrite"], "not a purify folder"),
    ("purify-plain-file-overwrite", [*PURIFY, "--out", "notes.txt", "--overwrite"], "is a file"),
    ("purify-working-directory", [*PURIFY, "--out", ".", "--overwrite"], "is the working directory"),
    ("purify-decompression-bomb", ["purify", "bomb.png", *PURIFY[2:], "--out", "p"], "over the limit"),
    ("purify-pixel-limit", [*PURIFY, "--max-pixels", "100", "--out", "p"], "over the limit of 100"),
    ("purify-not-an-image", ["purify", "fake.png", *PURIFY[2:], "--out", "p"], "is not an image PIL can read"),
    ("purify-missing-image", ["purify", "nowhere.png", *PURIFY[2:], "--out", "p"], "no such image file"),
    ("purify-config-nan-eta", [*PURIFY, "--config", "nan_eta.json", "--out", "p"], "eta must be a finite number"),
    ("purify-config-deep", [*PURIFY, "--config", "deep.json", "--out", "p"], "nested too deeply"),
    ("purify-t-l-nan", [*PURIFY, "--t-l", "nan", "--out", "p"], "--t-l nan"),
    # export and serve
    ("export-users-folder", [*EXPORT, "--out", "precious"], "not a bundle written by robustwrap"),
    ("export-users-folder-overwrite", [*EXPORT, "--out", "precious", "--overwrite"], "not a bundle written by"),
    ("export-plain-file", [*EXPORT, "--out", "notes.txt"], "is a file"),
    ("export-plain-file-overwrite", [*EXPORT, "--out", "notes.txt", "--overwrite"], "is a file"),
    ("export-working-directory", [*EXPORT, "--out", ".", "--overwrite"], "is the working directory"),
    ("export-parent-directory", [*EXPORT, "--out", "..", "--overwrite"], "holds the working directory"),
    ("export-existing-bundle", [*EXPORT, "--out", "bundle"], "exists"),
    ("export-overwrite-bundle-with-a-note", [*EXPORT, "--out", "noted-bundle", "--overwrite"],
     "noted-bundle holds NOTES.md, which robustwrap does not write into a bundle"),
    ("export-overwrite-folder-with-a-copied-config", [*EXPORT, "--out", "measured", "--overwrite"],
     "measured holds results.csv, which robustwrap does not write into a bundle"),
    ("export-overwrite-triton-model-with-a-note", [*EXPORT, "--out", "b", "--triton-repo", "noted-serving", "--name",
                                                   "small", "--overwrite"],
     "small holds my_notes.txt, which robustwrap does not write into a Triton model"),
    ("export-missing-folder", [*EXPORT, "--out", "nowhere/bundle"], "does not exist"),
    ("export-config-nan-eta", [*EXPORT, "--config", "nan_eta.json", "--out", "b"], "eta must be a finite number"),
    ("export-t-l-nan", [*EXPORT, "--t-l", "nan", "--out", "b"], "--t-l nan"),
    ("export-triton-repo-a-file", [*EXPORT, "--out", "b", "--triton-repo", "notes.txt"],
     "is a file, not a Triton model repository"),
    ("export-triton-model-exists", [*EXPORT, "--out", "b", "--triton-repo", "serving", "--name", "small"], "exists"),
    ("export-triton-bad-name", [*EXPORT, "--out", "b", "--triton-repo", "serving", "--name", "../up"],
     "model name must be"),
    ("export-onnx-at-bf16", [*EXPORT, "--out", "b", "--precision", "bf16"], "--engine onnx takes --precision fp32"),
    ("export-aoti-at-int8", [*EXPORT, "--out", "b", "--engine", "aoti", "--precision", "int8"],
     "--engine aoti takes --precision fp32 or bf16, got int8"),
    ("export-fp16-not-trt", [*EXPORT, "--out", "b", "--engine", "openvino", "--fp16"], "--engine openvino takes"),
    ("export-triton-openvino-fp32", [*EXPORT, "--out", "b", "--engine", "openvino", "--triton-repo", "t",
                                     "--triton-backend", "openvino"], "--triton-backend openvino serves bf16 only"),
    ("serve-missing-repository", ["serve", "nowhere"], "is not a folder"),
    ("serve-a-file", ["serve", "notes.txt"], "is not a folder"),
    ("serve-a-bundle", ["serve", "bundle"], "is a bundle, not a Triton model repository: write one from it"),
    ("serve-users-folder", ["serve", "precious"], "holds no model robustwrap wrote"),
    ("serve-empty-folder", ["serve", "empty"], "empty is empty: write a defense into it"),
]


@pytest.mark.parametrize("args, words", [pytest.param(a, w, id=i) for i, a, w in COMMAND_ROWS])
def test_bad_command_lines_fail_cleanly_and_touch_nothing(workspace, monkeypatch, args, words):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HF_HUB_CACHE", str(workspace / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(common.console, "width", 100_000)  # one message, one line
    before = snapshot(workspace)
    result = CliRunner().invoke(app, args)
    output = result.output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, output
    assert "Traceback" not in output and not isinstance(result.exception, (AssertionError, RecursionError))
    assert len(errors) == 1 and words in errors[0], output
    assert snapshot(workspace) == before  # every file as it was, and none added


def _library_rows():
    from robustwrap.data import tensor_file
    from robustwrap.evaluation import EvalConfig, run_evaluation
    from robustwrap.images import load_picture
    from robustwrap.outputs import Layout, check_output, dumps_strict
    from robustwrap.tune import TuneSettings, tune

    from robustwrap import RobustWrapper
    from robustwrap.outputs import temporary_beside

    from .tiny import tiny_classifier, tiny_unet, tiny_wrapper

    def evaluate_into(folder: str, **flags):
        images, labels = tensor_file("ok.safetensors")
        return run_evaluation(tiny_wrapper(), images, labels, EvalConfig(attack="none"), folder, num_classes=10,
                              **flags)

    def tune_into(folder: str):
        images, labels = tensor_file("ok.safetensors")
        return tune(tiny_wrapper(), images, labels, folder, TuneSettings(calls=2, n_attack=2), num_classes=10)

    from robustwrap.checkpoints import CheckpointError, read_checkpoint
    from robustwrap.export import compile_networks, export_bundle, load_bundle, write_triton_bundle

    def export_into(folder: str, **flags):
        return export_bundle(tiny_wrapper(), folder, image_size=16, **flags)

    def export_racing(folder: str):
        """Another export into the same new folder finishes while this one runs: this one must not replace it."""
        from unittest import mock

        import robustwrap.export.bundle as bundle_module

        def temporary_then_the_other_run_finishes(target):
            work = temporary_beside(target)
            shutil.copytree("bundle", folder)
            return work

        try:
            with mock.patch.object(bundle_module, "temporary_beside", temporary_then_the_other_run_finishes):
                export_into(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the other run's bundle (it stays, byte for byte, until here)

    class NaNDiffusion(torch.nn.Module):
        in_channels = 3

        def forward(self, x_t, t):
            return torch.full_like(x_t, math.nan)

    class OneChannelDiffusion(torch.nn.Module):
        in_channels = 3

        def forward(self, x_t, t):
            return x_t[:, :1]

    class Returns(torch.nn.Module):
        """The tiny classifier, but forward returns what ``wrap`` makes of its logits."""

        in_channels = 3

        def __init__(self, wrap):
            super().__init__()
            self.net, self.wrap = tiny_classifier(), wrap

        def forward(self, x):
            return self.wrap(self.net(x))

    def predict(classifier, diffusion, images=None):
        wrapper = RobustWrapper(classifier, diffusion, PurifyConfig(steps=10), stages=["net.layer1", "net.layer2"]
                                if isinstance(classifier, Returns) else None)
        return wrapper.predict(torch.rand(2, 3, 16, 16) if images is None else images)

    def evaluate_3_logits():
        images, labels = tensor_file("ok.safetensors")
        wrapper = RobustWrapper(tiny_classifier(num_classes=3), tiny_unet(), PurifyConfig(steps=10))
        return run_evaluation(wrapper, images, labels, EvalConfig(attack="none"), "r", num_classes=10)

    return [
        ("config-nan-eta", lambda: PurifyConfig(eta=math.nan), ValueError, "eta must be a finite number"),
        ("config-inf-p", lambda: PurifyConfig(p=math.inf), ValueError, "p must be a finite number"),
        ("config-nan-t-l", lambda: PurifyConfig(t_l=math.nan), ValueError, "t_l must be a finite number"),
        ("config-fractional-votes", lambda: PurifyConfig(votes=2.5), ValueError, "votes must be an int"),
        ("config-bool-steps", lambda: PurifyConfig(steps=True), ValueError, "steps must be an int"),
        ("config-string-bool", lambda: PurifyConfig(grad_checkpoint="no"), ValueError, "must be true or false"),
        ("config-string-number", lambda: PurifyConfig(tau="0.9"), ValueError, "tau must be a number"),
        ("config-replace-nan", lambda: dataclasses.replace(PurifyConfig(), eta=math.nan), ValueError, "eta must be"),
        ("overrides-nan", lambda: PurifyConfig.from_dict({"eta": math.nan}, source="the config overrides"),
         ValueError, "the config overrides: eta must be a finite number"),
        ("overrides-string-coercion", lambda: PurifyConfig.from_dict({"steps": "50"}, source="overrides"),
         ValueError, "steps must be an int"),
        ("config-file-a-list", lambda: PurifyConfig.load("list.json"), ValueError, "not a robustwrap config"),
        ("config-file-deep", lambda: PurifyConfig.load("deep.json"), ValueError, "nested too deeply"),
        ("eval-into-users-folder", lambda: evaluate_into("precious"), ValueError, "not a results folder"),
        ("eval-overwrite-users-folder", lambda: evaluate_into("precious", overwrite=True), ValueError,
         "not a results folder"),
        ("eval-into-the-working-directory", lambda: evaluate_into(".", overwrite=True), ValueError,
         "is the working directory"),
        ("tune-into-users-folder", lambda: tune_into("precious"), ValueError, "not a tune folder"),
        ("image-bomb", lambda: load_picture("bomb.png"), ValueError, "over the limit of 50000000"),
        ("pickle-needs-code", lambda: read_checkpoint("code.pt"), CheckpointError, "would execute code"),
        ("tensors-count-mismatch", lambda: tensor_file("counts.safetensors"), ValueError, "20 images but 5 labels"),
        ("check-output-home", lambda: check_output(Path.home(), overwrite=True, layout=Layout("x", lambda _: True, lambda _, __: True)),
         ValueError, "home folder"),
        ("strict-json", lambda: dumps_strict({"points": [{"robust": math.nan}]}), ValueError,
         r"points[0].robust is not a finite number"),
        ("tune-settings-fractional", lambda: TuneSettings(calls=2.5), ValueError, "calls must be an int"),
        ("eval-config-nan-eps", lambda: EvalConfig(eps=math.nan), ValueError, "eps must be a finite number"),
        ("bundle-users-folder", lambda: load_bundle("precious"), ValueError, "not a robustwrap bundle"),
        ("bundle-overrides-nan", lambda: load_bundle("bundle", config={"eta": math.nan}), ValueError,
         "eta must be a finite number"),
        ("bundle-overrides-string", lambda: load_bundle("bundle", config={"votes": "4"}), ValueError,
         "votes must be an int"),
        ("bundle-unknown-engine", lambda: load_bundle("bundle", engine="tvm"), ValueError, "engine must be one of"),
        ("export-overwrite-users-folder", lambda: export_into("precious", overwrite=True), ValueError,
         "not a bundle written by robustwrap"),
        ("export-overwrite-a-file", lambda: export_into("notes.txt", overwrite=True), ValueError, "is a file"),
        ("triton-into-a-file", lambda: write_triton_bundle("notes.txt", "bundle"), ValueError, "is a file"),
        ("triton-over-its-models", lambda: write_triton_bundle("serving", "bundle", name="small"), ValueError,
         "exists"),
        ("triton-not-a-bundle", lambda: write_triton_bundle("serving", "precious"), ValueError,
         "not a robustwrap bundle"),
        # out-of-range values that used to pass
        ("config-eta-5", lambda: PurifyConfig(eta=5), ValueError, "eta must be in [0, 1]"),
        ("config-p-100", lambda: PurifyConfig(p=100), ValueError, "p must be in (0, 8]"),
        ("bundle-overrides-eta-5", lambda: load_bundle("bundle", config={"eta": 5}), ValueError,
         "the config overrides: invalid PurifyConfig: eta must be in [0, 1]"),
        ("config-file-key-twice", lambda: PurifyConfig.load("twice.json"), ValueError, "the key 't_l' appears twice"),
        ("eval-config-linf-eps-2", lambda: EvalConfig(eps=2), ValueError, "an L-inf eps must be at most 1"),
        ("tune-settings-negative-step", lambda: TuneSettings(level_step=-0.1), ValueError,
         "level_step must be in (0, 1)"),
        # what the networks return
        ("diffusion-returns-nan", lambda: predict(tiny_classifier(), NaNDiffusion()), ValueError,
         "the diffusion model returned 1536 NaN or infinite values in its predicted noise"),
        ("diffusion-returns-wrong-shape", lambda: predict(tiny_classifier(), OneChannelDiffusion()), ValueError,
         "the diffusion model returned a float32 tensor of shape (2, 1, 16, 16) for x_t of shape (2, 3, 16, 16)"),
        ("classifier-returns-a-tuple", lambda: predict(Returns(lambda z: (z, z)), tiny_unet()), ValueError,
         "the classifier returned a tuple of 2 items, expected logits of shape (2, K)"),
        ("classifier-returns-a-dict", lambda: predict(Returns(lambda z: {"logits": z}), tiny_unet()), ValueError,
         "the classifier returned a dict with keys ['logits']"),
        ("classifier-returns-nan", lambda: predict(Returns(lambda z: z * math.nan), tiny_unet()), ValueError,
         "the classifier returned 20 NaN or infinite values in its logits"),
        ("classifier-3-logits-for-10-classes", evaluate_3_logits, ValueError,
         "the classifier returns 3 logits per image but the data has 10 classes"),
        ("images-without-data", lambda: predict(tiny_classifier(), tiny_unet(), torch.rand(2, 3, 16, 16, device="meta")),
         ValueError, "the images are on the meta device"),
        # files
        ("pickle-calls-os-system", lambda: read_checkpoint("system.pt"), CheckpointError,
         "would execute code (it pickles posix.system)"),
        ("export-racing-another-run", lambda: export_racing("racing"), FileExistsError,
         "racing appeared while this command ran"),
        # precisions
        ("bundle-aoti-bf16-not-exported", lambda: load_bundle("bundle", engine="aoti", precision="bf16"), ValueError,
         "has no AOTInductor package for the classifier at bf16"),
        ("export-aoti-int8", lambda: export_into("b", aoti=("int8",)), ValueError,
         "aoti must be a bool or distinct precisions of ['fp32', 'bf16'], got ('int8',)"),
        ("triton-inline-tensorrt", lambda: write_triton_bundle("t", "bundle", component_backend="inline",
                                                                engine="tensorrt"), ValueError,
         "inline components run ['onnxruntime', 'openvino', 'aoti'], got engine 'tensorrt'"),
        ("triton-inline-aoti-not-exported", lambda: write_triton_bundle("t", "bundle", component_backend="inline",
                                                                         engine="aoti"), ValueError,
         "has no ['aoti'] AOTInductor packages"),
        ("compile-at-fp16", lambda: compile_networks(RobustWrapper(tiny_classifier(), tiny_unet()), precision="fp16"),
         ValueError, "compile_networks runs at ['fp32', 'bf16'], got precision 'fp16'"),
    ]


LIBRARY_IDS = ["config-nan-eta", "config-inf-p", "config-nan-t-l", "config-fractional-votes", "config-bool-steps",
               "config-string-bool", "config-string-number", "config-replace-nan", "overrides-nan",
               "overrides-string-coercion", "config-file-a-list", "config-file-deep", "eval-into-users-folder",
               "eval-overwrite-users-folder", "eval-into-the-working-directory", "tune-into-users-folder",
               "image-bomb", "pickle-needs-code", "tensors-count-mismatch", "check-output-home", "strict-json",
               "tune-settings-fractional", "eval-config-nan-eps", "bundle-users-folder", "bundle-overrides-nan",
               "bundle-overrides-string", "bundle-unknown-engine", "export-overwrite-users-folder",
               "export-overwrite-a-file", "triton-into-a-file", "triton-over-its-models", "triton-not-a-bundle",
               "config-eta-5", "config-p-100", "bundle-overrides-eta-5", "config-file-key-twice",
               "eval-config-linf-eps-2", "tune-settings-negative-step", "diffusion-returns-nan",
               "diffusion-returns-wrong-shape", "classifier-returns-a-tuple", "classifier-returns-a-dict",
               "classifier-returns-nan", "classifier-3-logits-for-10-classes", "images-without-data",
               "pickle-calls-os-system", "export-racing-another-run", "bundle-aoti-bf16-not-exported",
               "export-aoti-int8", "compile-at-fp16", "triton-inline-tensorrt", "triton-inline-aoti-not-exported"]


@pytest.mark.parametrize("row", LIBRARY_IDS)
def test_bad_library_calls_raise_the_named_error_and_touch_nothing(workspace, monkeypatch, row):
    monkeypatch.chdir(workspace)
    name, call, error, words = next(r for r in _library_rows() if r[0] == row)
    before = snapshot(workspace)
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert words in message, message
    if not row.startswith("pickle-"):  # those add a how-to-convert hint on its own lines
        assert "\n" not in message
    assert snapshot(workspace) == before


def test_the_table_is_as_large_as_promised():
    assert len(COMMAND_ROWS) + len(LIBRARY_IDS) >= 60
    assert sorted(r[0] for r in _library_rows()) == sorted(LIBRARY_IDS)


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_after_the_next_run(tmp_path):
    """SIGKILL while the bundle is written leaves a hidden partial folder; the next export of that target removes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-c", "from robustwrap.cli.app import main; main()", *EXPORT, "--out", "b"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".b.*.partial")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    left = list(tmp_path.glob(".b.*.partial"))
    assert left and not (tmp_path / "b").exists(), "the export ended before the kill: nothing was tested"
    (tmp_path / f".b.{os.getpid()}.0123abcd.partial").mkdir()  # a live process's write: not ours to remove
    result = CliRunner().invoke(app, [*EXPORT, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.{os.getpid()}.0123abcd.partial", "b"]
