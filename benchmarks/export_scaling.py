"""How deployment scales with the number of denoiser calls: component bundle vs single graph.

    python benchmarks/export_scaling.py                         # the issue's setting: real NCSNpp, 1/10/100 calls
    python benchmarks/export_scaling.py --net small --calls 1,10 --repeats 1   # a reduced run (flagged in the table)
    python benchmarks/export_scaling.py --quick                 # smoke run, writes nothing

The denoiser is the score-SDE DDPM++ network (``robustwrap.nets.NCSNpp`` defaults: 106.6M
parameters, random weights) behind ``ScoreSDEEps``; ``--net small`` swaps in a narrow NCSNpp
(nf 32, 2 blocks per level) and says so in the results. The classifier is a SmallResNet at
32x32 (the cost under study is the denoiser's). Per number of calls, side by side in one run:

- component bundle (``export_bundle``): export time, size, node counts, session creation;
- single unrolled graph (``export_bundle(..., unrolled=True)``, ``load_unrolled``), only up to ``--single-max`` calls: the same;
- images/s at batch 8 (explicit noise, so every engine does the same work) for eager,
  ``compile_networks`` (torch.compile of the networks, not the loop; its cold compile + first
  call is timed in a fresh process with an empty inductor cache), the ONNX Runtime components
  (``load_bundle``) and the single graph.

A benchmark, not a test: it measures and writes a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.export import compile_networks, export_bundle, load_bundle, load_unrolled
from robustwrap.nets import NCSNpp, SmallResNet
from robustwrap.adapters import ScoreSDEEps

from common import interleaved_medians, run_child, write_section

SIZE = 32


def build(net: str, calls: int) -> RobustWrapper:
    """The wrapper at ``calls`` denoiser calls (steps = 5 * calls with t_l = 0.2), votes 1."""
    torch.manual_seed(0)
    denoiser = NCSNpp() if net == "real" else NCSNpp(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2)
    config = PurifyConfig(steps=5 * calls, t_l=0.2, t_s=0.1, votes=1)
    wrapper = RobustWrapper(SmallResNet(3, 10), ScoreSDEEps(denoiser.eval()), config, image_size=SIZE)
    assert wrapper.plan.denoiser_calls == calls, (wrapper.plan.denoiser_calls, calls)
    return wrapper


def inputs(wrapper: RobustWrapper, batch: int) -> tuple[torch.Tensor, Noise]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=generator)
    return x, Noise.given(torch.randn(wrapper.noise_shape(x), generator=generator))


def child_compile(net: str, calls: int, batch: int, threads: int) -> dict:
    """Cold compile + first call of compile_networks, then the steady rate (run in a fresh process)."""
    torch.set_num_threads(threads)
    wrapper = build(net, calls)
    x, noise = inputs(wrapper, batch)
    compiled = compile_networks(wrapper)
    with torch.no_grad():
        start = time.perf_counter()
        compiled(x, noise=noise)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        compiled(x, noise=noise)
        steady = time.perf_counter() - start
    return {"cold_s": cold, "images_per_s": batch / steady}


def megabytes(path: Path) -> float:
    files = path.iterdir() if path.is_dir() else [path, *path.parent.glob(path.name + ".data")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def measure(net: str, calls: int, batch: int, repeats: int, single_max: int, throughput_max: int, threads: int,
            compile_too: bool, folder: Path) -> dict:
    wrapper = build(net, calls)
    x, noise = inputs(wrapper, batch)
    row: dict = {"calls": calls}

    start = time.perf_counter()
    bundle = export_bundle(wrapper, folder / f"bundle-{calls}")
    row["bundle_export_s"] = time.perf_counter() - start
    row["bundle_mb"] = megabytes(bundle.path)
    row["bundle_nodes"] = f"{bundle.info.components['denoiser'].nodes} + {bundle.info.components['classifier'].nodes}"
    start = time.perf_counter()
    loaded = load_bundle(bundle.path, threads=threads)
    row["bundle_session_s"] = time.perf_counter() - start
    timing = calls <= throughput_max

    variants = {
        "eager": lambda: wrapper(x, noise=noise),
        "onnx components": lambda: loaded(x, noise=noise),
    }
    if calls <= single_max:
        start = time.perf_counter()  # the bundle again, with the unrolled graph: its extra time is the graph's
        with_unrolled = export_bundle(wrapper, folder / f"unrolled-{calls}", unrolled=True, unrolled_noise="explicit")
        row["single_export_s"] = time.perf_counter() - start - row["bundle_export_s"]
        spec = with_unrolled.info.components["unrolled"]
        row["single_mb"] = spec.bytes / 1e6
        row["single_nodes"] = spec.nodes
        start = time.perf_counter()
        graph = load_unrolled(with_unrolled.path, threads=threads)
        row["single_session_s"] = time.perf_counter() - start
        variants["single graph"] = lambda: graph(x, noise.tensor)
        if timing:
            with torch.no_grad():
                row["single_gap"] = float((graph(x, noise.tensor)[0] - wrapper(x, noise=noise)).abs().max())
    if not timing:
        return row
    with torch.no_grad():
        row["bundle_gap"] = float((loaded(x, noise=noise) - wrapper(x, noise=noise)).abs().max())
        medians = interleaved_medians(variants, repeats=repeats, warmup=1)
    row.update({f"{name} images/s": batch / seconds for name, seconds in medians.items()})

    if compile_too:
        with tempfile.TemporaryDirectory() as cache:
            compiled = run_child(__file__, "--child", net, str(calls), str(batch), str(threads),
                                 env={"TORCHINDUCTOR_CACHE_DIR": cache})
        row["compile_cold_s"] = compiled["cold_s"]
        row["compiled networks images/s"] = compiled["images_per_s"]
    return row


def table(rows: list[dict], net: str, batch: int, threads: int) -> str:
    def cell(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "n/a"

    lines = [
        "| denoiser calls | bundle export s | bundle MB | bundle nodes (denoiser + classifier) | bundle sessions s "
        "| single export s | single MB | single nodes | single session s | cold compile (networks) s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['calls']} | {cell(row, 'bundle_export_s', '.1f')} | {cell(row, 'bundle_mb', '.1f')} | "
            f"{row['bundle_nodes']} | {cell(row, 'bundle_session_s', '.2f')} | {cell(row, 'single_export_s', '.1f')} | "
            f"{cell(row, 'single_mb', '.1f')} | {cell(row, 'single_nodes', 'd')} | {cell(row, 'single_session_s', '.2f')} | "
            f"{cell(row, 'compile_cold_s', '.1f')} |"
        )
    lines += ["", "| denoiser calls | eager img/s | compiled networks img/s | ONNX components img/s | single graph img/s "
              "| max abs diff prob, components vs eager | single vs eager |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['calls']} | {cell(row, 'eager images/s', '.3f')} | {cell(row, 'compiled networks images/s', '.3f')} | "
            f"{cell(row, 'onnx components images/s', '.3f')} | {cell(row, 'single graph images/s', '.3f')} | "
            f"{cell(row, 'bundle_gap', '.1e')} | {cell(row, 'single_gap', '.1e')} |"
        )
    denoiser = ("real score-SDE DDPM++ (NCSNpp defaults, 106.6M parameters, random weights)" if net == "real"
                else "**reduced**: NCSNpp nf=32, ch_mult (1, 2, 2), 2 blocks per level (not the real configuration)")
    return (f"Denoiser: {denoiser}; classifier SmallResNet; 32x32, batch {batch}, votes 1, explicit noise; "
            f"{threads} thread(s) for torch and ONNX Runtime. n/a: not measured at that number of calls "
            "(see the command's --single-max / --throughput-max / --no-compile).\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=("real", "small"), default="real")
    parser.add_argument("--calls", default="1,10,100", help="comma list of denoiser calls")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-max", type=int, default=10, help="export the single graph up to this many calls")
    parser.add_argument("--throughput-max", type=int, default=1000, help="time images/s up to this many calls")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads (1: OpenMP with 2 threads on a shared 2-core machine "
                             "was measured ~40x slower for eager torch)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--quick", action="store_true", help="small net, 1 and 2 calls, writes nothing")
    parser.add_argument("--child", nargs=4, metavar=("NET", "CALLS", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_compile(args.child[0], int(args.child[1]), int(args.child[2]), int(args.child[3]))))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.net, args.calls, args.repeats, args.batch, args.no_compile = "small", "1,2", 1, 2, True
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for calls in (int(c) for c in args.calls.split(",")):
            row = measure(args.net, calls, args.batch, args.repeats, args.single_max, args.throughput_max, args.threads,
                          not args.no_compile, Path(folder))
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    body = table(rows, args.net, args.batch, args.threads)
    print(body)
    if not args.quick:
        write_section("export_scaling.py", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
