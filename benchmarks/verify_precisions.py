"""`robustwrap verify` of every engine and precision on the shipped MNIST models, as one table.

    python benchmarks/verify_precisions.py              # 1,000 held-out digits, 64 attacked (about 20 min on 2 cores)
    python benchmarks/verify_precisions.py --quick      # 64 digits, 8 attacked, writes nothing

The bundle holds the shipped pair at the heterogeneous defense `robustwrap tune` calibrated to it
(models/mnist/calibrated/heterogeneous.json: t_l 0.4, t_s 0.2, τ 1.0, steps 25 = 10 denoiser calls,
1 vote; what `robustwrap eval` runs for this pair), with its fp32 and bf16 AOTInductor packages and its int8 models (``quantize_bundle``: NNCF, 32 digits of
mnist5k:train, disjoint from the verified ones). Each engine and precision is verified against the fp32 eager
defense by :func:`robustwrap.export.verify` with its default thresholds and attack (PGD+EOT,
L-inf 0.3, 10 iterations x 4 copies), on the same stratified subset and the same per-image seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.cpus import cpu_features
from robustwrap.schedule import describe_defense
from robustwrap.data import draw_subset, load_dataset
from robustwrap.export import export_bundle, quantize_bundle, verify
from robustwrap.export.verifier import VERIFY_ATTACK, craft_adversarial
from robustwrap.export.engines import describe_precision
from robustwrap.export.verification import format_rate

from common import write_section

CANDIDATES = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
              ("openvino", {"classifier": "fp32", "denoiser": "bf16"}), ("openvino", "int8"),
              ("openvino", {"classifier": "fp32", "denoiser": "int8"}), ("aoti", "bf16"),
              ("aoti", {"classifier": "fp32", "denoiser": "bf16"})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-attack", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_attack = 64, 8
    torch.set_num_threads(args.threads)
    from robustwrap.specs import build_classifier, build_diffusion

    from robustwrap.store import calibrated_configs

    config = PurifyConfig.load(calibrated_configs("mnist", "mnist")["heterogeneous"])  # what eval deploys for this pair
    eager = RobustWrapper(build_classifier("mnist", num_classes=10, channels=1),
                          build_diffusion("mnist", channels=1, image_size=28), config, image_size=28)
    images, labels = load_dataset("mnist5k:heldout")
    indices, subset = draw_subset(labels, args.n, 0, spec="mnist5k:heldout")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        bundle = export_bundle(eager, Path(folder) / "mnist", specs={"classifier": "mnist", "diffusion": "mnist"},
                               aoti=("fp32", "bf16")).path  # AOTInductor packages, fp32 and bf16 (autocast)
        quantize_bundle(bundle, eager)  # int8 models, calibrated on 32 digits of mnist5k:train (disjoint from these)
        attack = dataclasses.replace(VERIFY_ATTACK, eps=0.3)  # MNIST's L-inf radius
        start = time.perf_counter()  # one attack against the eager defense, judged on every engine
        adversarial = craft_adversarial(eager, images[indices][:args.n_attack], labels[indices][:args.n_attack], attack)
        attack_seconds = time.perf_counter() - start
        for engine, precision in CANDIDATES:
            start = time.perf_counter()
            report = verify(eager, bundle, images[indices], labels[indices], num_classes=10, engine=engine,
                            precision=precision, n_attack=args.n_attack, threads=args.threads, attack=attack,
                            adversarial=adversarial)
            seconds = time.perf_counter() - start
            f = report.figures
            mask = f["mask_pixel_agreement"]
            rows.append(
                f"| {engine} {describe_precision(report.precisions)} | {'passed' if report.passed else '**failed**'} | "
                f"{format_rate(f['decision_agreement'])} | {format_rate(f['clean']['engine'])} "
                f"({f['clean']['lost']} lost, {f['clean']['gained']} gained) | "
                f"{format_rate(f['robust']['engine'])} ({f['robust']['lost']} lost, {f['robust']['gained']} gained) | "
                f"{f['probability_gap']['max']:.1e} / {f['probability_gap']['mean']:.1e} | "
                f"{f['purified_pixel_gap']['max']:.2g} / {f['purified_pixel_gap']['mean']:.1e} | "
                f"{mask['flipped']} of {mask['pixels']:,} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    reference = report.figures
    body = (
        f"The shipped MNIST pair at its calibrated heterogeneous defense ({describe_defense(config)}); aoti bf16: the AOTInductor packages compiled under bf16 autocast (as compile_networks(precision=\"bf16\")); int8: both networks or the denoiser quantised by NNCF on 32 digits of mnist5k:train. "
        f"{subset['size']} held-out digits (mnist5k:heldout, stratified, seed 0), "
        f"{args.n_attack} of them attacked by PGD+EOT against the fp32 eager defense (L-inf 0.3, 10 iterations x 4 "
        f"copies, CE; crafted once, {attack_seconds:.0f} s, and judged on every engine), verdicts on held-out seeds; the same per-image seeds on both sides; {args.threads} thread(s). "
        f"The fp32 eager defense scored clean {format_rate(reference['clean']['eager'])}, robust "
        f"{format_rate(reference['robust']['eager'])}. CPU features: {cpu_features()}. Thresholds: agreement ≥ 99.5%, "
        "clean / robust accuracy at most 0.5 / 1 point lower and not significantly lower (McNemar exact, 0.05). "
        "Rates: Wilson 95% intervals.\n\n"
        "| engine, precision | verdict | decision agreement | clean accuracy (engine) | robust accuracy (engine) | "
        "prob gap max / mean | purified-pixel gap max / mean | mask pixels flipped | seconds (without the attack) |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if not args.quick:
        write_section("verify_precisions.py", body)
    else:
        print(body)


if __name__ == "__main__":
    sys.exit(main())
