"""The served path against eager, side by side: eager, compiled networks, ONNX Runtime, AOT packages and OpenVINO,
at fp32 and the reduced precisions.

    python benchmarks/served_speed.py                    # the shipped MNIST models and the real DDPM++ + WRN-28-10
    python benchmarks/served_speed.py --models shipped   # only the shipped models (a few minutes)
    python benchmarks/served_speed.py --quick            # smoke run, writes nothing

For each model pair, one eager wrapper and, built from it, ``compile_networks`` (torch.compile
of the two networks), ``load_bundle(engine="onnxruntime")``, ``load_bundle(engine="aoti")``
(AOTInductor packages, fp32 and bf16), ``compile_networks(precision="bf16")`` (bf16 autocast, as the bf16
packages) and ``load_bundle(engine="openvino")`` at fp32, bf16, bf16 for the
denoiser only (its classifier, hence its mask, at fp32) and an int8 denoiser (NNCF): the same networks, the same loop code, the same per-image seeds, at
S = 1, 4 and 8 votes. Times are interleaved repeats (median, min, max) of one batch. Every engine
gets the same number of threads (``--threads``: torch's intra-op pool for eager, compiled and AOT
packages; ``intra_op_num_threads`` for ONNX Runtime, ``INFERENCE_NUM_THREADS`` for OpenVINO). The
reduced precisions change the function: their |d prob| is reported, and ``robustwrap verify``
says whether they still decide as eager does. Cold start: in a fresh process each,
load + first batch of the bundle's engines against ``compile_networks`` + first batch with an
empty inductor cache. The table goes to RESULTS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.cpus import cpu_features, native_bf16
from robustwrap.export import compile_networks, export_bundle, load_bundle, quantize_bundle

from common import interleaved_times, run_child, write_section

MODELS = {
    "shipped": "the shipped MNIST models (SmallResNet + SmallUNet, 1 x 28 x 28)",
    "real": "WRN-28-10 (RobustBench layout) + the real score-SDE DDPM++ (NCSNpp defaults, 106.6M parameters), "
            "random weights, 3 x 32 x 32",
}


def build(models: str, steps: int) -> RobustWrapper:
    """The eager wrapper (random weights are drawn from a local generator's seed: no global state)."""
    config = PurifyConfig(steps=steps, votes=1)
    if models == "shipped":
        from robustwrap.specs import build_classifier, build_diffusion

        return RobustWrapper(build_classifier("mnist", num_classes=10, channels=1),
                             build_diffusion("mnist", channels=1, image_size=28), config, image_size=28)
    from robustwrap.adapters import ScoreSDEEps
    from robustwrap.nets import NCSNpp, WideResNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return RobustWrapper(WideResNet().eval(), ScoreSDEEps(NCSNpp().eval()), config, image_size=32)


def images_for(wrapper: RobustWrapper, batch: int) -> torch.Tensor:
    return torch.rand(batch, wrapper.channels, *wrapper.image_size, generator=torch.Generator().manual_seed(1))


def cold_child(models: str, steps: int, batch: int, threads: int, engine: str, bundle: str) -> dict:
    """In a fresh process: the seconds from nothing to the first answered batch on one engine."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if engine.startswith("compiled networks"):
        served = compile_networks(build(models, steps), precision="bf16" if engine.endswith("bf16") else None)
    else:  # "openvino-bf16", "aoti-bf16": an engine and its precision
        engine, _, precision = engine.partition("-")
        served = load_bundle(bundle, engine=engine, precision=precision or None,
                             threads=threads if engine in ("onnxruntime", "openvino") else None)
    x = images_for(served, batch)
    with torch.no_grad():
        served(x, noise=Noise.seeded(torch.arange(batch)))
    return {"seconds": time.perf_counter() - start}


def measure(models: str, steps: int, batch: int, votes: list[int], repeats: int, threads: int, folder: Path,
            quick: bool) -> str:
    torch.set_num_threads(threads)
    bf16_units = native_bf16() is True
    wrapper = build(models, steps)
    start = time.perf_counter()
    bundle = export_bundle(wrapper, folder / models, aoti=("fp32", "bf16"), max_batch=4096)
    export_seconds = time.perf_counter() - start
    if models == "shipped":  # int8 models (NNCF), calibrated on 32 digits of mnist5k:train
        quantize_bundle(bundle.path, wrapper)
    engines = {
        "eager": wrapper,
        "compiled networks": compile_networks(wrapper),
        "onnxruntime": load_bundle(bundle.path, threads=threads),
        "aoti packages": load_bundle(bundle.path, engine="aoti"),
        "compiled networks bf16": compile_networks(wrapper, precision="bf16"),
        "aoti packages bf16": load_bundle(bundle.path, engine="aoti", precision="bf16"),
        "openvino fp32": load_bundle(bundle.path, engine="openvino", precision="fp32", threads=threads),
    }
    if bf16_units:  # elsewhere OpenVINO would run f32 under the name bf16, and load_bundle refuses it
        engines["openvino bf16"] = load_bundle(bundle.path, engine="openvino", precision="bf16", threads=threads)
        engines["openvino bf16 denoiser"] = load_bundle(bundle.path, engine="openvino", threads=threads,
                                                        precision={"classifier": "fp32", "denoiser": "bf16"})
    if models == "shipped":
        engines["openvino int8 denoiser"] = load_bundle(bundle.path, engine="openvino", threads=threads,
                                                        precision={"classifier": "fp32", "denoiser": "int8"})
    x = images_for(wrapper, batch)
    noise = Noise.seeded(torch.arange(batch))  # the same per-image seeds for every engine
    rows, gaps = [], {}
    for s in votes:
        config = PurifyConfig(steps=steps, votes=s)
        views = {name: engine.with_config(config) for name, engine in engines.items()}
        with torch.no_grad():
            reference = views["eager"](x, noise=noise)
            for name, view in views.items():
                gaps[name] = max(gaps.get(name, 0.0), float((view(x, noise=noise) - reference).abs().max()))
            times = interleaved_times({name: (lambda v=view: v(x, noise=noise)) for name, view in views.items()},
                                      repeats=repeats, warmup=1)
        eager = statistics.median(times["eager"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append(f"| {s} | {name} | {batch / median:.2f} | {median * 1e3:.0f} ({min(values) * 1e3:.0f}–"
                        f"{max(values) * 1e3:.0f}) ms | **{eager / median:.2f}x** |")

    cold = {}
    openvino = "openvino-bf16" if bf16_units else "openvino-fp32"
    for engine in ("onnxruntime", "aoti", "aoti-bf16", openvino, f"{openvino} (warm cache)",
                   "compiled networks", "compiled networks bf16"):
        warm = engine.endswith(" (warm cache)")
        with tempfile.TemporaryDirectory() as cache:  # empty caches (inductor's, OpenVINO's): a server's first start
            if warm:  # a first start fills OpenVINO's cache; the second is timed
                run_child(__file__, "--cold-child", models, str(steps), str(batch), str(threads), openvino,
                          str(bundle.path), env={"TORCHINDUCTOR_CACHE_DIR": cache, "ROBUSTWRAP_CACHE": cache})
            cold[engine] = run_child(__file__, "--cold-child", models, str(steps), str(batch), str(threads),
                                     engine.removesuffix(" (warm cache)"), str(bundle.path),
                                     env={"TORCHINDUCTOR_CACHE_DIR": cache, "ROBUSTWRAP_CACHE": cache})["seconds"]
    calls = wrapper.plan.denoiser_calls
    return (
        f"### {MODELS[models]}\n\n"
        f"Batch {batch}, {calls} denoiser calls (steps {steps}, t_l 0.2), per-image seeds, {threads} thread(s) for every "
        f"engine; {repeats} interleaved repeats after one warm-up: median (min–max) per batch. Export of the bundle "
        f"with its AOT packages (fp32 and bf16): {export_seconds:.0f} s. Largest |d prob| against eager on the same seeds: "
        + ", ".join(f"{name} {gap:.1e}" for name, gap in gaps.items() if name != "eager") + "."
        + ("" if bf16_units else f" This CPU has no bf16 units (CPU features: {cpu_features()}): the torch bf16 rows run "
           "emulated bf16, and OpenVINO bf16 is refused (OpenVINO would run f32 under its name).") + "\n\n"
        "| votes S | engine | images/s | per batch | vs eager |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Cold start, each in a fresh process with empty inductor and OpenVINO caches (the warm row: the OpenVINO "
        "cache a first start filled), after `import torch, robustwrap`: building or loading the defense and "
        "answering its first batch.\n\n| engine | seconds |\n|---|---|\n"
        + "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in cold.items()) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("shipped", "real", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="shipped models, 2 calls, S = 1 and 2, writes nothing")
    parser.add_argument("--cold-child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        models, steps, batch, threads, engine, bundle = args.cold_child
        print(json.dumps(cold_child(models, int(steps), int(batch), int(threads), engine, bundle)))
        return
    plans = {"shipped": (50, 8, [1, 4, 8]), "real": (10, 2, [1, 4, 8])}  # steps, batch, votes
    chosen = ["shipped", "real"] if args.models == "both" else [args.models]
    if args.quick:
        plans, chosen, args.repeats = {"shipped": (10, 2, [1, 2])}, ["shipped"], 1
    sections = []
    with tempfile.TemporaryDirectory() as folder:
        for models in chosen:
            steps, batch, votes = plans[models]
            sections.append(measure(models, steps, batch, votes, args.repeats, args.threads, Path(folder), args.quick))
            print(sections[-1], flush=True)
    if not args.quick:  # a run of one pair keeps its own section: the other pair's numbers stay as they were
        write_section("served_speed.py" if args.models == "both" else f"served_speed.py --models {args.models}",
                      "\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())
