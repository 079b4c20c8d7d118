"""The deployment path end to end in a real Triton Inference Server (PyPI's nvidia-pytriton build, CPU).

`robustwrap export --triton-backend python` writes two defenses into one repository,
`robustwrap serve` (a subprocess, as a user runs it) serves it on 127.0.0.1, and tritonclient
talks to it over HTTP. Every wait and loop is bounded; the server is stopped by its own process
id and the test checks that no process of it (server or Python backend stub) is left.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

from robustwrap.export import load_bundle  # noqa: E402

pytestmark = pytest.mark.slow
ROBUSTWRAP = [sys.executable, "-m", "robustwrap.cli.app"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _export(bundle: Path, repo: Path, name: str, votes: int, *options: str) -> None:
    command = [*ROBUSTWRAP, "export", "--out", str(bundle), "--steps", "10", "--votes", str(votes), "--no-check",
               "--triton-repo", str(repo), "--triton-backend", "python", "--name", name, "--triton-max-batch", "8",
               "--max-batch", "16", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two defenses (votes 2 and 3) in one repository, served by `robustwrap serve`."""
    folder = tmp_path_factory.mktemp("triton")
    repo = folder / "serving"
    _export(folder / "bundle-a", repo, "digits", votes=2)
    _export(folder / "bundle-b", repo, "digits3", votes=3)
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:  # its components run by OpenVINO at bf16 inside the Python backend
        _export(folder / "bundle-c", repo, "digits-bf16", 1, "--engine", "openvino", "--precision", "bf16")
    port, grpc = _free_port(), _free_port()
    log = open(folder / "serve.log", "w")
    server = subprocess.Popen([*ROBUSTWRAP, "serve", str(repo), "--http-port", str(port), "--grpc-port", str(grpc),
                               "--timeout", "240"], stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    ready = False
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
                ready = response.status == 200
        except OSError:
            pass
        if ready:
            break
        time.sleep(1)
    try:
        assert ready, (folder / "serve.log").read_text()[-3000:]
        yield {"url": url, "repo": repo, "bundles": (folder / "bundle-a", folder / "bundle-b", folder / "bundle-c"),
               "process": server, "log": folder / "serve.log", "openvino": openvino}
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        log.close()


def _infer(url: str, model: str, images: np.ndarray, seeds: np.ndarray | None = None):
    client = http.InferenceServerClient(url, network_timeout=120.0)
    inputs = [http.InferInput("images", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images)
    if seeds is not None:
        inputs.append(http.InferInput("seed", list(seeds.shape), "INT64"))
        inputs[1].set_data_from_numpy(seeds)
    result = client.infer(model, inputs)
    return result.as_numpy("probabilities"), result.as_numpy("labels")


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).numpy()


def test_served_probabilities_equal_load_bundle_on_the_same_seeds(served):
    images, seeds = _images(3), np.array([[5], [6], [7]], dtype=np.int64)
    probabilities, labels = _infer(served["url"], "digits", images, seeds)
    local = load_bundle(served["bundles"][0])
    with torch.no_grad():
        expected = local(torch.from_numpy(images), seeds=torch.from_numpy(seeds[:, 0]))
        expected_labels = local.predict(torch.from_numpy(images), seeds=torch.from_numpy(seeds[:, 0]))
    assert probabilities.shape == (3, 10) and labels.shape == (3, 1)
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels[:, 0], expected_labels.numpy())
    one, _ = _infer(served["url"], "digits", images[1:2], seeds[1:2])  # a seed means the same in any batch
    np.testing.assert_allclose(one, probabilities[1:2], rtol=0, atol=1e-6)


def test_openvino_bf16_components_serve_what_load_bundle_computes(served):
    if not served["openvino"]:
        pytest.skip("openvino is not installed")
    images, seeds = _images(3, seed=4), np.array([[1], [2], [3]], dtype=np.int64)
    probabilities, labels = _infer(served["url"], "digits-bf16", images, seeds)
    local = load_bundle(served["bundles"][2], "openvino", precision="bf16")
    with torch.no_grad():
        expected = local(torch.from_numpy(images), seeds=torch.from_numpy(seeds[:, 0]))
    config = (served["repo"] / "digits-bf16-denoiser" / "config.pbtxt").read_text()
    assert 'string_value: "openvino"' in config and 'string_value: "bf16"' in config
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=0, atol=1e-3)  # bf16 kernels, other threads
    np.testing.assert_array_equal(labels[:, 0], expected.argmax(1).numpy())


def test_without_a_seed_each_request_gets_fresh_noise(served):
    images = _images(2, seed=1)
    first, _ = _infer(served["url"], "digits", images)
    second, _ = _infer(served["url"], "digits", images)
    np.testing.assert_allclose(first.sum(1), np.ones(2), atol=1e-5)
    assert not np.array_equal(first, second)


def test_concurrent_requests_equal_sequential_ones(served):
    requests = [(_images(2, seed=10 + i), np.array([[100 + i], [200 + i]], dtype=np.int64)) for i in range(4)]
    sequential = [_infer(served["url"], "digits", *r)[0] for r in requests]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda r: _infer(served["url"], "digits", *r)[0], requests))
    for got, want in zip(concurrent, sequential):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_two_defenses_in_one_repository_both_answer(served):
    images, seeds = _images(2, seed=3), np.array([[1], [2]], dtype=np.int64)
    two, _ = _infer(served["url"], "digits", images, seeds)
    three, _ = _infer(served["url"], "digits3", images, seeds)
    local = load_bundle(served["bundles"][1])
    assert local.config.votes == 3
    with torch.no_grad():
        expected = local(torch.from_numpy(images), seeds=torch.from_numpy(seeds[:, 0])).numpy()
    np.testing.assert_allclose(three, expected, rtol=0, atol=1e-6)
    assert not np.array_equal(two, three)  # 2 votes vs 3 votes: two models, not one overwritten


def _bad_inputs():
    good = _images(2)
    above = good.copy()
    above[0, 0, 0, 0] = 1.5
    nan = good.copy()
    nan[1, 0, 3, 3] = np.nan
    return [
        ("values above 1", above, None, r"\[0, 1\]"),
        ("NaN", nan, None, "NaN"),
        ("empty batch", good[:0], None, "empty|batch|byte size"),  # Triton itself refuses it
        ("negative seed", good, np.array([[1], [-5]], dtype=np.int64), "seed"),
        ("seed batch mismatch", good, np.array([[1], [2], [3]], dtype=np.int64), "batch|shape|seed"),
        ("wrong image shape", _images(2)[:, :, :20], None, "shape|dims|unexpected"),
    ]


@pytest.mark.parametrize("case, images, seeds, message", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_client_mistakes_are_400_with_a_message(served, case, images, seeds, message):
    with pytest.raises(InferenceServerException) as raised:
        _infer(served["url"], "digits", images, seeds)
    assert raised.value.status() == "400", (case, raised.value.status(), raised.value.message())
    assert raised.value.message() and __import__("re").search(message, raised.value.message()), raised.value.message()
    _infer(served["url"], "digits", _images(1), np.array([[1]], dtype=np.int64))  # the stub lives on


def test_every_model_is_ready_and_nothing_is_left_after_sigterm(served):
    client = http.InferenceServerClient(served["url"])
    index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    defenses = ("digits", "digits3", *(("digits-bf16",) if served["openvino"] else ()))
    assert index == {f"{name}{part}": "READY" for name in defenses for part in ("", "-classifier", "-denoiser")}
    said = served["log"].read_text()  # robustwrap serve says how each pipeline runs and whether that was verified
    assert "digits v1: READY (onnxruntime fp32: NOT verified: robustwrap verify BUNDLE" in said
    assert not served["openvino"] or "digits-bf16 v1: READY (openvino bf16: NOT verified (a reduced precision!)" in said
    repo = str(served["repo"])
    assert len(_processes_mentioning(repo)) >= 2  # the server and its stubs mention the repository
    served["process"].send_signal(signal.SIGTERM)
    assert served["process"].wait(60) == 0, served["log"].read_text()[-2000:]
    deadline = time.monotonic() + 20
    while _processes_mentioning(repo) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(repo) == [], json.dumps(_processes_mentioning(repo))
    assert "stopped" in served["log"].read_text()
