"""Cost of one attack iteration (EOT 1) on the defense: full gradient, with per-call
checkpointing, and through a cheaper surrogate, side by side.

    python benchmarks/attack_cost.py            # about 3 minutes on 2 cores
    python benchmarks/attack_cost.py --quick    # smoke run, writes nothing

One iteration = one forward + backward of DefenseLogits on a batch (what PGD+EOT does per EOT
sample). Networks: the shipped MNIST models (models/mnist/, 1 x 28 x 28); time = median of
interleaved runs in this process; peak memory = peak RSS of a fresh child process (see
common.run_isolated).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch
import torch.nn.functional as F

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.attacks import DefenseLogits
from robustwrap.specs import build_classifier, build_diffusion

from common import interleaved_medians, peak_rss_increase_mib, run_isolated, write_section

SETTINGS = {
    "full gradient": {"checkpoint": False, "surrogate_steps": None},
    "full gradient, checkpointed": {"checkpoint": True, "surrogate_steps": None},
    "surrogate (steps / 10)": {"checkpoint": False, "surrogate_steps": "tenth"},
}


def build(steps: int, checkpoint: bool, surrogate_steps: int | None) -> RobustWrapper:
    wrapper = RobustWrapper(build_classifier("mnist"), build_diffusion("mnist"), PurifyConfig(steps=steps, grad_checkpoint=checkpoint))
    return wrapper.with_config(replace(wrapper.config, steps=surrogate_steps)) if surrogate_steps else wrapper


def iteration(model: DefenseLogits, x: torch.Tensor, y: torch.Tensor) -> None:
    point = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(point), y, reduction="sum"), point)


def child(spec: dict) -> dict:
    model = DefenseLogits(build(spec["steps"], spec["checkpoint"], spec["surrogate_steps"]))
    x, y = torch.rand(spec["batch"], 1, 28, 28), torch.zeros(spec["batch"], dtype=torch.long)
    iteration(model, x, y)  # warm-up
    return {"peak_mib": peak_rss_increase_mib(lambda: iteration(model, x, y))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=250, help="defense steps (t_l = 0.2: steps / 5 calls)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.batch, args.steps, args.repeats = 2, 50, 1

    specs = {
        name: {"steps": args.steps, "batch": args.batch, "checkpoint": s["checkpoint"],
               "surrogate_steps": max(5, args.steps // 10) if s["surrogate_steps"] else None}
        for name, s in SETTINGS.items()
    }
    models = {name: DefenseLogits(build(**{k: v for k, v in spec.items() if k != "batch"})) for name, spec in specs.items()}
    x, y = torch.rand(args.batch, 1, 28, 28), torch.zeros(args.batch, dtype=torch.long)
    times = interleaved_medians({name: (lambda m=m: iteration(m, x, y)) for name, m in models.items()}, args.repeats)
    peaks = {name: run_isolated(__file__, "--child", json.dumps(spec))["peak_mib"] for name, spec in specs.items()}

    full_time, full_peak = times["full gradient"], peaks["full gradient"]
    rows = "\n".join(
        f"| {name} | {models[name].wrapper.plan.denoiser_calls} | {times[name]:.2f} s ({times[name] / full_time:.2f}x) "
        f"| {peaks[name]:.0f} MiB ({peaks[name] / full_peak:.2f}x) |"
        for name in SETTINGS
    )
    body = (
        f"One attack iteration (EOT 1: forward + backward of the defense) on a batch of {args.batch} MNIST-size "
        f"images (1x28x28) with the shipped models (models/mnist/); defense steps={args.steps} at t_l=0.2; "
        f"medians of {args.repeats} interleaved runs; peak RSS above the start in a fresh process.\n\n"
        f"| gradient | denoiser calls | time | peak memory |\n|---|---|---|---|\n{rows}\n"
    )
    print(body)
    if not args.quick:
        write_section("attack_cost.py", body)


if __name__ == "__main__":
    main()
