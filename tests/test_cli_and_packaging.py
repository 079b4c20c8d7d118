"""The `robustwrap` command and the installed package layout."""

import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert code == 2 and "page.pt" in output and "weights-only" in output
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
