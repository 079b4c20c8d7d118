"""How many pixels the heterogeneous mask marks on the shipped MNIST models, per threshold tau.

    python benchmarks/mask_coverage.py        # seconds

The calibrated heterogeneous config (models/mnist/calibrated/heterogeneous.json) thresholds the
attention map at tau = 1.0; this says what that and nearby thresholds mark: on a seeded
stratified subset of held-out digits, the attended pixels per digit, in the deployed float32.
"""

from __future__ import annotations

import argparse

import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.data import draw_subset, load_dataset
from robustwrap.mask import binarize
from robustwrap.specs import build_classifier, build_diffusion
from robustwrap.store import calibrated_configs

from common import write_section

DATA = "mnist5k:heldout"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="digits: a seeded stratified subset (seed 0)")
    args = parser.parse_args()
    images, labels = load_dataset(DATA)
    indices, subset = draw_subset(labels, args.n, 0, spec=DATA)
    config = PurifyConfig.load(calibrated_configs("mnist", "mnist")["heterogeneous"])
    wrapper = RobustWrapper(build_classifier("mnist"), build_diffusion("mnist"), config)
    with torch.no_grad():
        attention = wrapper.attention(images[indices])  # (n, 1, 28, 28) in [0, 1]
    pixels = attention[0].numel()
    rows = ["| tau | attended pixels per digit: mean (min–max) | fraction of the image |", "|---|---|---|"]
    for tau in (0.8, 0.9, 1.0):
        counts = binarize(attention, "threshold", tau).flatten(1).sum(1)
        rows.append(f"| {tau:g}{' (calibrated)' if tau == config.tau else ''} | {counts.mean():.1f} "
                    f"({counts.min():.0f}–{counts.max():.0f}) | {counts.mean() / pixels:.2%} |")
    body = (f"{subset['size']} of {subset['of']} held-out digits ({DATA}; stratified, seed 0), the shipped "
            f"classifier's attention map (p {config.p:g}, {config.attention_norm} normalisation) in float32, "
            f"{pixels} pixels per digit.\n\n" + "\n".join(rows))
    write_section("mask_coverage.py", body)


if __name__ == "__main__":
    main()
