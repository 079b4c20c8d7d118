"""A non-editable install carries the shipped models and runs the main job from any folder."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "robustwrap/models/mnist/Linf/Standard_SmallResNet.safetensors",
    "robustwrap/models/mnist/Linf/Standard_SmallResNet.md",
    "robustwrap/models/mnist/diffusion/DDPM_SmallUNet.safetensors",
    "robustwrap/models/mnist/diffusion/DDPM_SmallUNet.md",
    "robustwrap/models/mnist/calibrated/uniform.json",  # the defenses eval runs by default
    "robustwrap/models/mnist/calibrated/heterogeneous.json",
    "robustwrap/models/mnist/calibrated/README.md",
}


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_models_and_eval_runs_from_another_folder(tmp_path):
    pytest.importorskip("mlxtend")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("robustwrap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert SHIPPED <= names
    assert not any(name.startswith("models/") for name in names)

    # Install the wheel alone into its own folder; its dependencies come from this environment.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ROBUSTWRAP_MODEL_DIR", None)
    probe = subprocess.run([sys.executable, "-c", "import robustwrap.store as s; print(s.shipped_dir()); "
                            "print(s.calibrated_configs('mnist', 'mnist')['heterogeneous'])"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    store, calibrated = probe.stdout.split()
    assert Path(store).is_relative_to(target) and Path(calibrated).is_relative_to(target)  # not the checkout's models/
    result = subprocess.run(
        [sys.executable, "-m", "robustwrap.cli.app", "eval", "--n-samples", "10", "--batch-size", "10", "--iters", "1",
         "--eot", "1", "--steps", "10", "--defenses", "none,heterogeneous", "--out", "results"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((elsewhere / "results" / "heterogeneous" / "report.json").read_text())
    assert report["n_samples"] == 10 and report["clean_accuracy"]["mean"] >= 0.8  # the trained shipped models
