"""Wrap a timm classifier in the defense and look at what each stage does.

    python examples/wrap_timm.py

Offline, so the networks here carry random weights: the point is the API and the shapes.
With real weights (``timm.create_model("resnet50", pretrained=True)`` and a diffusion
checkpoint trained on the linear DDPM schedule) the same lines give the defended model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import timm
import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.nets import SmallUNet


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.manual_seed(0)
    classifier = timm.create_model("resnet18", pretrained=False, num_classes=10)
    diffusion = SmallUNet(3, base_channels=16, channel_mults=(1, 2, 2), sample_size=64)

    # The two lines: wrap, then call. ImageNet-style settings (top-15% mask), fewer steps for a CPU.
    config = replace(PurifyConfig.imagenet(), steps=50, votes=4)
    wrapper = RobustWrapper(classifier, diffusion, config)

    images = torch.rand(2, 3, 96, 96)
    start = time.perf_counter()
    probs = wrapper(images, noise=Noise.stream(torch.Generator().manual_seed(0)))
    elapsed = time.perf_counter() - start
    mask = wrapper.mask(images)
    print(f"stage maps: {wrapper.stages.describe()}")
    print(f"purified at {wrapper.diffusion_size_for(images)}, classified at {tuple(images.shape[-2:])}")
    print(f"{wrapper.plan.denoiser_calls} denoiser calls x {config.votes} votes in {elapsed:.2f} s")
    print(f"attended fraction per image: {mask.mean(dim=(1, 2, 3)).tolist()}")
    print(f"mean probabilities: {probs.shape}, labels by majority vote: {wrapper.predict(images).tolist()}")


if __name__ == "__main__":
    main()
