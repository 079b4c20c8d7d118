"""The deployment path end to end in a real Triton Inference Server (PyPI's nvidia-pytriton build, CPU).

`robustwrap export --triton-backend python` writes two defenses into one repository,
`robustwrap serve` (a subprocess, as a user runs it) serves it on 127.0.0.1, and tritonclient
talks to it over HTTP. Every wait and loop is bounded; the server is stopped by its own process
id and the test checks that no process of it (server or Python backend stub) is left.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

from robustwrap import Noise  # noqa: E402
from robustwrap.cpus import native_bf16  # noqa: E402
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
    _export(folder / "bundle-b", repo, "digits3", 3, "--max-queue-size", "2")  # a short queue, to fill
    _export(folder / "bundle-d", repo, "digits-inline", 2, "--triton-backend", "inline")  # no component models
    # components run by OpenVINO inside the Python backend: at bf16 where the CPU has bf16 units (elsewhere
    # OpenVINO refuses bf16, tested in test_bundle), else at fp32
    openvino = None if importlib.util.find_spec("openvino") is None else "bf16" if native_bf16() else "fp32"
    if openvino:
        _export(folder / "bundle-c", repo, "digits-ov", 1, "--engine", "openvino", "--precision", openvino)
    port, grpc, metrics = _free_port(), _free_port(), _free_port()
    log = open(folder / "serve.log", "w")
    server = subprocess.Popen([*ROBUSTWRAP, "serve", str(repo), "--http-port", str(port), "--grpc-port", str(grpc),
                               "--metrics-port", str(metrics), "--timeout", "240"], stdout=log, stderr=subprocess.STDOUT)
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
        yield {"url": url, "repo": repo, "bundles": (folder / "bundle-a", folder / "bundle-b", folder / "bundle-c",
                                                   folder / "bundle-d"),
               "process": server, "log": folder / "serve.log", "openvino": openvino, "metrics": metrics,
               "folder": folder}
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
        expected = local(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0])))
        expected_labels = local.predict(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0])))
    assert probabilities.shape == (3, 10) and labels.shape == (3, 1)
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels[:, 0], expected_labels.numpy())
    one, _ = _infer(served["url"], "digits", images[1:2], seeds[1:2])  # a seed means the same in any batch
    np.testing.assert_allclose(one, probabilities[1:2], rtol=0, atol=1e-6)


def test_openvino_components_serve_what_load_bundle_computes(served):
    precision = served["openvino"]
    if not precision:
        pytest.skip("openvino is not installed")
    images, seeds = _images(3, seed=4), np.array([[1], [2], [3]], dtype=np.int64)
    probabilities, labels = _infer(served["url"], "digits-ov", images, seeds)
    local = load_bundle(served["bundles"][2], "openvino", precision=precision)
    with torch.no_grad():
        expected = local(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0])))
    config = (served["repo"] / "digits-ov-denoiser" / "config.pbtxt").read_text()
    assert 'string_value: "openvino"' in config and f'string_value: "{precision}"' in config
    tolerance = 1e-3 if precision == "bf16" else 1e-5  # bf16 kernels, other threads
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=0, atol=tolerance)
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


def _stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return {"executions": stats["execution_count"], "inferences": stats["inference_count"]}


def _settled_stats(url: str, model: str, before: dict, inferences: int, wait_s: float = 10.0) -> dict:
    """The model's statistics once ``inferences`` more have been counted since ``before`` (Triton counts an
    execution after its responses are sent: under load the answers can arrive first), waiting at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = _stats(url, model)
        if stats["inferences"] - before["inferences"] >= inferences or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def _local(served, index=0):
    return load_bundle(served["bundles"][index])


def test_concurrent_requests_run_as_one_batch_and_each_answer_is_its_seeds(served):
    before = {model: _stats(served["url"], model) for model in ("digits", "digits-denoiser")}
    requests = [(_images(1, seed=40 + i), np.array([[400 + i]], dtype=np.int64)) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda r: _infer(served["url"], "digits", *r)[0], requests))
    after = {"digits": _settled_stats(served["url"], "digits", before["digits"], 12),
             "digits-denoiser": _stats(served["url"], "digits-denoiser")}
    pipeline = {key: after["digits"][key] - before["digits"][key] for key in ("executions", "inferences")}
    assert pipeline["inferences"] == 12 and pipeline["executions"] < 12, pipeline  # requests batched together
    denoiser_calls = after["digits-denoiser"]["executions"] - before["digits-denoiser"]["executions"]
    assert denoiser_calls < 12 * _local(served).plan.denoiser_calls, denoiser_calls
    local = _local(served)
    with torch.no_grad():
        for (images, seeds), got in zip(requests, answers):
            want = local(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0]))).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_inline_components_serve_what_load_bundle_computes_in_batches(served):
    before = _stats(served["url"], "digits-inline")
    requests = [(_images(2, seed=60 + i), np.array([[600 + i], [700 + i]], dtype=np.int64)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _infer(served["url"], "digits-inline", *r)[0], requests))
    after = _settled_stats(served["url"], "digits-inline", before, 16)
    assert after["inferences"] - before["inferences"] == 16 and after["executions"] - before["executions"] < 8
    local = _local(served, 3)
    with torch.no_grad():
        for (images, seeds), got in zip(requests, answers):
            want = local(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0]))).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert "digits-inline v1: READY (onnxruntime fp32: NOT verified" in served["log"].read_text()


def test_a_request_larger_than_the_pipeline_batch_runs_in_chunks(served):
    images, seeds = _images(19, seed=8), np.arange(19, dtype=np.int64).reshape(-1, 1) + 50  # --triton-max-batch 8
    probabilities, labels = _infer(served["url"], "digits", images, seeds)
    with torch.no_grad():
        want = _local(served)(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0]))).numpy()
    assert probabilities.shape == (19, 10) and labels.shape == (19, 1)
    np.testing.assert_allclose(probabilities, want, rtol=0, atol=1e-6)


def test_a_request_without_images_is_400_naming_the_input(served):
    client = http.InferenceServerClient(served["url"], network_timeout=60.0)
    seed = http.InferInput("seed", [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[3]], dtype=np.int64))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("digits", [seed])
    assert raised.value.status() == "400" and "images" in raised.value.message(), raised.value.message()


def test_a_full_queue_refuses_at_once(served):
    """digits3 queues at most 2 requests: of 24 sent at once, some are refused (503) and the rest answered."""
    def attempt(i):
        try:
            _infer(served["url"], "digits3", _images(2, seed=i), np.array([[i], [i + 1]], dtype=np.int64))
            return "ok"
        except InferenceServerException as error:
            return f"{error.status()} {error.message()}"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(attempt, range(24)))
    refused = [o for o in outcomes if o != "ok"]
    assert refused and "ok" in outcomes, outcomes
    assert all(o.startswith("503") and "queue" in o for o in refused), refused


def test_metrics_show_queue_time_and_executions(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_queue_duration_us{model="digits",version="1"}' in text
    assert 'nv_inference_exec_count{model="digits",version="1"}' in text
    assert 'nv_inference_pending_request_count{model="digits",version="1"}' in text
    # Triton 2.51 does not count a full queue's refusals in nv_inference_request_failure (0 after the 503s above)


def test_a_killed_stub_is_reloaded_and_not_ready_meanwhile(served):
    url = served["url"]
    stub = _processes_mentioning(f"{served['repo']}/digits/1/model.py")
    assert len(stub) == 1, stub
    os.kill(stub[0], signal.SIGKILL)
    start = time.monotonic()
    states, deadline = [], start + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
                state = response.status
        except urllib.error.HTTPError as error:
            state = error.code
        except OSError:
            state = "down"
        if not states or states[-1] != state:
            states.append(state)
        if state == 200 and len(states) > 2:
            break
        time.sleep(0.1)
    recovery = time.monotonic() - start
    assert states[-1] == 200 and (400 in states or 503 in states), states  # not ready while broken, ready after
    assert recovery < 60, recovery
    images, seeds = _images(2, seed=9), np.array([[9], [10]], dtype=np.int64)
    got, _ = _infer(url, "digits", images, seeds)
    with torch.no_grad():
        want = _local(served)(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0]))).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert "digits: a stub died; reloaded in" in served["log"].read_text()


def test_two_defenses_in_one_repository_both_answer(served):
    images, seeds = _images(2, seed=3), np.array([[1], [2]], dtype=np.int64)
    two, _ = _infer(served["url"], "digits", images, seeds)
    three, _ = _infer(served["url"], "digits3", images, seeds)
    local = load_bundle(served["bundles"][1])
    assert local.config.votes == 3
    with torch.no_grad():
        expected = local(torch.from_numpy(images), noise=Noise.seeded(torch.from_numpy(seeds[:, 0]))).numpy()
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
    defenses = ("digits", "digits3", *(("digits-ov",) if served["openvino"] else ()))
    assert index == {**{f"{name}{part}": "READY" for name in defenses for part in ("", "-classifier", "-denoiser")},
                     "digits-inline": "READY"}
    said = served["log"].read_text()  # robustwrap serve says how each pipeline runs and whether that was verified
    assert "digits v1: READY (onnxruntime fp32: NOT verified: robustwrap verify BUNDLE" in said
    assert not served["openvino"] or f"digits-ov v1: READY (openvino {served['openvino']}: NOT verified" in said
    repo = str(served["repo"])
    assert len(_processes_mentioning(repo)) >= 2  # the server and its stubs mention the repository
    served["process"].send_signal(signal.SIGTERM)
    assert served["process"].wait(60) == 0, served["log"].read_text()[-2000:]
    deadline = time.monotonic() + 20
    while _processes_mentioning(repo) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(repo) == [], json.dumps(_processes_mentioning(repo))
    assert "stopped" in served["log"].read_text()


def test_a_busy_port_is_one_line_naming_it(served):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*ROBUSTWRAP, "serve", str(served["repo"]), "--http-port", str(port), "--grpc-port", "0"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr + done.stdout, done.stderr + done.stdout


def test_no_process_outlives_a_sigkilled_serve(served, tmp_path):
    repo = tmp_path / "one"
    repo.mkdir()
    for model in ("digits", "digits-classifier", "digits-denoiser"):
        shutil.copytree(served["repo"] / model, repo / model)
    port = _free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([*ROBUSTWRAP, "serve", str(repo), "--http-port", str(port), "--grpc-port", "0",
                                   "--timeout", "240"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "Ctrl-C" not in (tmp_path / "serve.log").read_text():
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        time.sleep(0.5)
    assert len(_processes_mentioning(str(repo))) >= 4  # the server and its three stubs
    server.kill()
    server.wait(10)
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(repo)) == [], "left running after SIGKILL of robustwrap serve"
