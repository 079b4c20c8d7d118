"""Images per second on this CPU for eager, compiled networks, the bundle and its unrolled graph, side by side.

    python benchmarks/export_speed.py           # about 5 minutes on 2 cores
    python benchmarks/export_speed.py --quick   # smoke run, writes nothing

Same wrapper (SmallUNet + SmallResNet at 32x32, fixed steps and votes) in every engine: eager,
``compile_networks`` (torch.compile of the two networks), the bundle over ONNX Runtime
(``load_bundle``) and the bundle's unrolled graph (``load_unrolled``); batch 8, explicit noise so
every engine does the same work; medians of interleaved runs. Also: export time and size,
compile time with a cold and with a warm inductor cache (each in a fresh process), parity.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.export import compile_networks, export_bundle, load_bundle, load_unrolled
from robustwrap.nets import SmallResNet, SmallUNet

from common import interleaved_medians, run_child, write_section


def build(size: int, steps: int) -> RobustWrapper:
    torch.manual_seed(0)
    return RobustWrapper(
        SmallResNet(3, 10, widths=(32, 64, 128)),
        SmallUNet(3, base_channels=32, channel_mults=(1, 2, 2), sample_size=size),
        PurifyConfig(steps=steps, votes=1),
    )


def compile_seconds(batch: int, size: int, steps: int) -> float:
    """In a child process: torch.compile the two networks and time the first call."""
    wrapper = build(size, steps)
    images = torch.rand(batch, 3, size, size)
    noise = Noise.given(torch.randn(wrapper.noise_shape(images)))
    start = time.perf_counter()
    compiled = compile_networks(wrapper)
    with torch.no_grad():
        compiled(images, noise=noise)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="t_l = 0.2: steps / 5 denoiser calls")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.steps, args.repeats = 2, 16, 10, 1
    sizes = ["--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps)]
    if args.compile_child:
        print(json.dumps({"seconds": compile_seconds(args.batch, args.size, args.steps)}))
        return

    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        cold = run_child(__file__, "--compile-child", *sizes, env=env)["seconds"]
        warm = run_child(__file__, "--compile-child", *sizes, env=env)["seconds"]

    wrapper = build(args.size, args.steps)
    images = torch.rand(args.batch, 3, args.size, args.size)
    noise = Noise.given(torch.randn(wrapper.noise_shape(images)))

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        exported = export_bundle(wrapper, Path(folder) / "bundle", image_size=args.size, unrolled=True,
                                 unrolled_noise="explicit")
        export_seconds = time.perf_counter() - start
        served = load_bundle(exported.path)
        runner = load_unrolled(exported.path)

        compiled = compile_networks(wrapper)

        with torch.no_grad():
            eager_scores = wrapper(images, noise=noise)
            parity_compile = float((compiled(images, noise=noise) - eager_scores).abs().max())
            parity_bundle = float((served(images, noise=noise) - eager_scores).abs().max())
            parity_onnx = float((runner(images, noise.tensor)[0] - eager_scores).abs().max())
            times = interleaved_medians(
                {
                    "eager": lambda: wrapper(images, noise=noise),
                    "compiled networks": lambda: compiled(images, noise=noise),
                    "bundle (ONNX Runtime)": lambda: served(images, noise=noise),
                    "unrolled graph (ONNX Runtime)": lambda: runner(images, noise.tensor),
                },
                args.repeats,
            )

    eager = times["eager"]
    rows = "\n".join(
        f"| {name} | {args.batch / seconds:.1f} | {seconds * 1e3:.0f} ms | **{eager / seconds:.2f}x** |"
        for name, seconds in times.items()
    )
    body = (
        f"SmallUNet(32, mults 1-2-2) + SmallResNet(32-64-128) at {args.size}x{args.size}, batch {args.batch}, "
        f"steps={args.steps} ({wrapper.plan.denoiser_calls} denoiser calls), S=1, explicit noise; medians of "
        f"{args.repeats} interleaved runs; ONNX Runtime {__import__('onnxruntime').__version__} CPU provider.\n\n"
        f"| engine | images/s | per batch | vs eager |\n|---|---|---|---|\n{rows}\n\n"
        f"| | value |\n|---|---|\n"
        f"| bundle export time (with the unrolled graph) | {export_seconds:.1f} s |\n"
        f"| bundle | {exported.bytes / 1e6:.1f} MB; nodes "
        f"{', '.join(f'{n} {c.nodes}' for n, c in exported.info.components.items())} |\n"
        f"| compile_networks + first call, cold inductor cache (fresh process) | {cold:.1f} s |\n"
        f"| compile_networks + first call, warm inductor cache (fresh process) | {warm:.1f} s |\n"
        f"| parity vs eager (max abs prob) | compiled {parity_compile:.1e}, bundle {parity_bundle:.1e}, "
        f"unrolled {parity_onnx:.1e} |\n"
    )
    print(body)
    if not args.quick:
        write_section("export_speed.py", body)


if __name__ == "__main__":
    main()
