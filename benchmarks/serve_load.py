"""The served defense under load: the real Triton server over HTTP and gRPC, beside `load_bundle` in one process.

    python benchmarks/serve_load.py            # the shipped MNIST pair, 10 denoiser calls, 1 vote (a few minutes)
    python benchmarks/serve_load.py --quick    # one concurrency, few requests, writes nothing

One bundle of the shipped pair (steps 50 = 10 denoiser calls, 1 vote, per-image seeds) served by
`robustwrap serve`'s server (PyPI's tritonserver 2.51, Python backend) as two models: "bls" (the
pipeline calls python-backend component models through BLS, one round trip per network call) and
"inline" (the pipeline runs the bundle itself: ``--triton-backend inline``). Every engine and the
pipeline use 1 thread (``ort_threads=1``, ``torch_threads=1``), and ``load_bundle`` in this
process runs with 1 thread too: the same thread count. Clients are threads on 127.0.0.1, one
client each, sending requests of 1 or 8 images with seeds, back to back, for a bounded count
and time per cell. Reported per cell: images/s, latency p50 / p90 / p99 of the requests, errors,
and the images per pipeline execution Triton formed (from ``/v2/models/.../stats``). The
in-process rows are ``load_bundle`` at batch 1 and 8 (median of interleaved repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.export import export_bundle, load_bundle
from robustwrap.export.triton import ServingOptions, TritonServer, write_triton_bundle
from robustwrap.specs import build_classifier, build_diffusion

from common import interleaved_times, write_section


def client_for(protocol: str, url: str):
    if protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    return client, client.InferenceServerClient(url)


def request_inputs(client, images: np.ndarray, seeds: np.ndarray) -> list:
    inputs = [client.InferInput("images", list(images.shape), "FP32"), client.InferInput("seed", list(seeds.shape), "INT64")]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(seeds)
    return inputs


def stats(server: TritonServer, model: str) -> tuple[int, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/v2/models/{model}/stats", timeout=10) as response:
        entry = json.loads(response.read())["model_stats"][0]
    return int(entry["execution_count"]), int(entry["inference_count"])


def load_cell(server: TritonServer, model: str, protocol: str, concurrency: int, batch: int, requests: int,
              seconds: float) -> dict:
    """``requests`` requests of ``batch`` images from ``concurrency`` threads (stopping after ``seconds``)."""
    url = f"{server.host}:{server.http_port if protocol == 'http' else server.grpc_port}"
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        client, connection = client_for(protocol, url)
        generator = np.random.default_rng(index)
        while time.perf_counter() < deadline:
            with lock:
                number = next(counter, None)
            if number is None:
                return
            images = generator.random((batch, 1, 28, 28), dtype=np.float32)
            seeds = (np.arange(batch, dtype=np.int64) + number * batch).reshape(-1, 1)
            start = time.perf_counter()
            try:
                connection.infer(model, request_inputs(client, images, seeds))
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as error:  # a benchmark counts failures and goes on
                with lock:
                    errors.append(type(error).__name__)

    executions, inferences = stats(server, model)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    executions_after, inferences_after = stats(server, model)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [latencies[0]] * 99
    return {"images_per_s": len(latencies) * batch / elapsed, "p50": cuts[49], "p90": cuts[89], "p99": cuts[98],
            "requests": len(latencies), "errors": len(errors), "seconds": elapsed,
            "per_execution": (inferences_after - inferences) / max(1, executions_after - executions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    concurrencies, batches, requests, seconds = ([2], [1], 8, 20.0) if args.quick else ([1, 2, 4, 8, 32], [1, 8], 64, 40.0)
    config = PurifyConfig(steps=50, votes=1)
    wrapper = RobustWrapper(build_classifier("mnist", num_classes=10, channels=1),
                            build_diffusion("mnist", channels=1, image_size=28), config, image_size=28)
    rows, local_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        bundle = export_bundle(wrapper, Path(folder) / "bundle", specs={"classifier": "mnist", "diffusion": "mnist"})
        repo = Path(folder) / "serving"
        options = ServingOptions(max_batch_size=8, torch_threads=1, ort_threads=1, max_queue_size=256)
        write_triton_bundle(repo, bundle.path, component_backend="python", name="bls", options=options)
        write_triton_bundle(repo, bundle.path, component_backend="inline", name="inline", options=options)

        local = load_bundle(bundle.path, threads=1)
        inputs = {b: torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(b)) for b in batches}
        with torch.no_grad():
            times = interleaved_times({b: (lambda b=b: local(inputs[b], noise=Noise.seeded(torch.arange(b)))) for b in batches},
                                      repeats=3 if args.quick else 10)
        in_process = {b: b / statistics.median(values) for b, values in times.items()}
        for b, rate in in_process.items():
            local_rows.append(f"| load_bundle in this process, batch {b} | {rate:.1f} |")

        with TritonServer(repo, http_port=0, grpc_port=0) as server:
            for model in ("bls", "inline"):  # warm both
                for protocol in ("http", "grpc"):
                    load_cell(server, model, protocol, 1, 1, 2, seconds)
            for model in ("bls", "inline"):
                for protocol in ("http", "grpc"):
                    for batch in batches:
                        for concurrency in concurrencies:
                            cell = load_cell(server, model, protocol, concurrency, batch, requests, seconds)
                            reference = in_process[8 if concurrency * batch >= 8 and 8 in in_process else batch]
                            rows.append(
                                f"| {model} | {protocol} | {batch} | {concurrency} | {cell['images_per_s']:.1f} | "
                                f"**{cell['images_per_s'] / reference:.2f}x** | {cell['p50'] * 1e3:.0f} / "
                                f"{cell['p90'] * 1e3:.0f} / {cell['p99'] * 1e3:.0f} ms | {cell['requests']} in "
                                f"{cell['seconds']:.1f} s | {cell['errors']} | {cell['per_execution']:.1f} |")
                            print(rows[-1], flush=True)
    body = (
        "The shipped MNIST pair, 10 denoiser calls (steps 50, t_l 0.2), 1 vote, per-image seeds; 1 thread for every "
        "engine, the pipeline and load_bundle; the server and the clients share this machine's cores. Each cell: up to "
        f"{requests} requests or {seconds:.0f} s, back to back from the given number of client threads on 127.0.0.1. "
        "\"vs in-process\" divides by load_bundle's images/s at the batch the server could form (batch 8 when "
        "concurrency x request batch reaches 8, else the request's batch). Images per execution: what Triton's dynamic "
        "batcher gave the pipeline.\n\n"
        "| images/s in one process | images/s |\n|---|---|\n" + "\n".join(local_rows) + "\n\n"
        "| model | protocol | request batch | concurrency | images/s | vs in-process | latency p50 / p90 / p99 | "
        "requests | errors | images per execution |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(body)
    if not args.quick:
        write_section("serve_load.py", body)


if __name__ == "__main__":
    sys.exit(main())
