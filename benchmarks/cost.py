"""What the defense costs beyond its networks, what single-step resampling saves, what
checkpointing buys. Side by side in one run on this CPU; results go to RESULTS.md.

    python benchmarks/cost.py            # about 6 minutes on 2 cores
    python benchmarks/cost.py --quick    # a smoke run, not for the record (writes nothing)

1. Overhead: wrapper.forward ÷ (denoiser calls × one denoiser call + the two classifier calls).
2. Single-step vs RePaint multi-step resampling at U = 20: one forward + backward, time and memory.
3. Full-gradient backward with per-call checkpointing: peak memory at 50 vs 5 denoiser calls.

Times are medians of interleaved runs in this process; memory is measured in a fresh child
process per setting (see ``common.run_isolated``).
"""

from __future__ import annotations

import argparse
import json

import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.nets import SmallResNet, SmallUNet

from common import interleaved_medians, peak_rss_increase_mib, run_isolated, saved_for_backward_mib, write_section


def build(config: PurifyConfig, size: int) -> RobustWrapper:
    torch.manual_seed(0)
    classifier = SmallResNet(3, 10, widths=(32, 64, 128))
    unet = SmallUNet(3, base_channels=32, channel_mults=(1, 2, 2), sample_size=size)
    return RobustWrapper(classifier, unet, config)


def forward_backward(wrapper: RobustWrapper, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    wrapper(x)[:, 0].sum().backward()


def measure_memory(config: dict, batch: int, size: int) -> dict:
    """In a child process: peak RSS of one forward + backward, and what autograd saves."""
    wrapper = build(PurifyConfig(**config), size)
    x = torch.rand(batch, 3, size, size)
    forward_backward(wrapper, x)  # warm-up (first backward initialises autograd's engine)
    peak = peak_rss_increase_mib(lambda: forward_backward(wrapper, x))
    saved = saved_for_backward_mib(lambda: wrapper(x.clone().requires_grad_(True)))
    return {"peak_mib": peak, "saved_mib": saved, "calls": wrapper.plan.denoiser_calls}


def memory(config: dict, batch: int, size: int) -> dict:
    return run_isolated(__file__, "--memory-child", json.dumps({"config": config, "batch": batch, "size": size}))


def overhead(batch: int, size: int, repeats: int) -> str:
    config = PurifyConfig(steps=100, t_l=0.2, t_s=0.1, resample_steps=3)  # 20 denoiser calls
    wrapper = build(config, size)
    x = torch.rand(batch, 3, size, size)
    x_t, t = torch.randn(batch, 3, size, size), torch.full((batch,), 100.0)
    calls = wrapper.plan.denoiser_calls

    def networks_chained() -> None:
        """The same network calls in the same order, each denoiser call on the previous output."""
        wrapper.classifier(x)
        state = x_t
        for step in wrapper.plan.steps:
            state = wrapper.eps_model(state, torch.full((batch,), float(step.t_model)))
        wrapper.classifier(x)

    with torch.no_grad():
        times = interleaved_medians(
            {
                "wrapper": lambda: wrapper(x),
                "chained": networks_chained,
                "denoiser": lambda: wrapper.eps_model(x_t, t),
                "classifier": lambda: wrapper.classifier(x),
            },
            repeats,
        )
    networks = calls * times["denoiser"] + 2 * times["classifier"]
    return (
        f"### Overhead of the pipeline around its networks\n\n"
        f"SmallUNet(32, mults 1-2-2) and SmallResNet(32-64-128) at {size}x{size}, batch {batch}, "
        f"{calls} denoiser calls (steps=100, t_l=0.2, t_s=0.1, U=3), S=1, no grad; medians of {repeats} "
        f"interleaved runs.\n\n"
        f"| wrapper.forward | one denoiser call | one classifier call | calls x one call | overhead ratio (target <= 1.10) "
        f"| the same calls chained | ratio to the chain |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {times['wrapper'] * 1e3:.1f} ms | {times['denoiser'] * 1e3:.2f} ms | {times['classifier'] * 1e3:.2f} ms "
        f"| {networks * 1e3:.1f} ms | **{times['wrapper'] / networks:.3f}** | {times['chained'] * 1e3:.1f} ms "
        f"| **{times['wrapper'] / times['chained']:.3f}** |\n\n"
        f"'The same calls chained' runs the classifier twice and the {calls} denoiser calls in the pipeline's order, "
        f"each on the previous output, without the pipeline's own arithmetic (noising, inpainting, DDIM updates, mask).\n"
    )


def resampling(batch: int, size: int, repeats: int) -> str:
    lines = []
    for t_s, note in ((0.1, "default t_s = 0.1: 10 of the 20 DDIM steps are stage 1"), (0.0, "t_s = 0: all 20 steps are stage 1")):
        configs = {mode: dict(steps=100, t_l=0.2, t_s=t_s, resample_steps=20, resampling=mode) for mode in ("single", "repaint")}
        wrappers = {mode: build(PurifyConfig(**config), size) for mode, config in configs.items()}
        x = torch.rand(batch, 3, size, size)
        times = interleaved_medians({m: (lambda w=w: forward_backward(w, x)) for m, w in wrappers.items()}, repeats)
        mems = {mode: memory(config, batch, size) for mode, config in configs.items()}
        single, repaint = mems["single"], mems["repaint"]
        for mode in ("single", "repaint"):
            lines.append(
                f"| {note} | {mode} | {mems[mode]['calls']} | {times[mode]:.2f} s | {mems[mode]['peak_mib']:.0f} MiB "
                f"| {mems[mode]['saved_mib']:.0f} MiB |"
            )
        lines.append(
            f"| | **saving** | | **{100 * (1 - times['single'] / times['repaint']):.1f}%** "
            f"| **{100 * (1 - single['peak_mib'] / repaint['peak_mib']):.1f}%** "
            f"| **{100 * (1 - single['saved_mib'] / repaint['saved_mib']):.1f}%** |"
        )
    table = "\n".join(lines)
    return (
        f"### Single-step vs RePaint multi-step resampling, U = 20\n\n"
        f"One forward + backward, batch {batch} at {size}x{size}, steps=100, t_l=0.2, no checkpointing; time = "
        f"median of {repeats} interleaved runs; peak = process peak RSS above the start of the forward; saved = "
        f"tensor storage autograd keeps for backward. The paper reports -89% time and -87% memory; the target "
        f"was >= 95% less of each. The saving is bounded by the ratio of denoiser calls, so it depends on how "
        f"many steps are stage 1.\n\n"
        f"| setting | resampling | denoiser calls | time | peak memory | saved for backward |\n"
        f"|---|---|---|---|---|---|\n{table}\n"
    )


def checkpoint_memory(batch: int, size: int) -> str:
    rows = [memory(dict(steps=steps, t_l=0.2, t_s=0.1, grad_checkpoint=True), batch, size) for steps in (25, 250)]
    table = "\n".join(f"| {r['calls']} | {r['peak_mib']:.0f} MiB | {r['saved_mib']:.1f} MiB |" for r in rows)
    return (
        f"### Full-gradient backward with per-call checkpointing: 50 vs 5 denoiser calls\n\n"
        f"Batch {batch} at {size}x{size}, grad_checkpoint=True (steps 25 and 250 at t_l = 0.2).\n\n"
        f"| denoiser calls | peak memory (forward + backward) | saved for backward |\n|---|---|---|\n{table}\n\n"
        f"Ratio 50 / 5 calls: **{rows[1]['peak_mib'] / rows[0]['peak_mib']:.2f}x** peak memory (target <= 1.5x), "
        f"{rows[1]['saved_mib'] / rows[0]['saved_mib']:.2f}x saved-for-backward.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, prints only")
    parser.add_argument("--only", choices=["overhead", "resampling", "checkpoint"], help="run one part (prints only)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        spec = json.loads(args.memory_child)
        print(json.dumps(measure_memory(spec["config"], spec["batch"], spec["size"])))
        return
    if args.quick:
        args.batch, args.size, args.repeats = 2, 16, 1
    if args.only:
        part = {"overhead": lambda: overhead(args.batch, args.size, args.repeats),
                "resampling": lambda: resampling(max(1, args.batch // 2), args.size, max(1, args.repeats // 2)),
                "checkpoint": lambda: checkpoint_memory(args.batch, args.size)}[args.only]
        print(part())
        return
    sections = [
        overhead(args.batch, args.size, args.repeats),
        resampling(max(1, args.batch // 2), args.size, max(1, args.repeats // 2)),
        checkpoint_memory(args.batch, args.size),
    ]
    body = "\n".join(sections)
    print(body)
    if not args.quick:
        write_section("cost.py", body)


if __name__ == "__main__":
    main()
