"""End-to-end paths with real-layout networks: ImageNet (224 classifier, 256 diffusion) and CIFAR-10.

The diffusion networks here are untrained and small (same architecture family as the real
ones, tiny widths): these tests check the plumbing (sizes, ranges, normalisation, loading),
not accuracy.
"""

from __future__ import annotations

import json

import timm
import torch
from typer.testing import CliRunner

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.cli.app import app
from robustwrap.data import foolbox_samples
from robustwrap.inputs import IMAGENET_MEAN, IMAGENET_STD, Normalize
from robustwrap.nets import GuidedDiffusionUNet
from robustwrap.specs import build_classifier


def test_imagenet_path_classifier_at_224_normalised_diffusion_at_256():
    torch.manual_seed(0)
    classifier = timm.create_model("resnet50", pretrained=False).eval()
    unet = GuidedDiffusionUNet(image_size=256, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                               attention_resolutions=(), num_head_channels=8).eval()
    wrapper = RobustWrapper(classifier, unet, PurifyConfig.imagenet(steps=10))
    assert wrapper.image_size is None and wrapper.diffusion_size == (256, 256)  # any input size, purified at 256

    seen_by_classifier, seen_by_diffusion = [], []
    classifier.conv1.register_forward_pre_hook(lambda _, args: seen_by_classifier.append(args[0].detach()))
    unet.register_forward_pre_hook(lambda _, args: seen_by_diffusion.append(args[0].detach()))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        probabilities = wrapper(x, noise=Noise.stream(torch.Generator().manual_seed(0)))

    assert probabilities.shape == (1, 1000)
    assert all(tuple(t.shape) == (1, 3, 224, 224) for t in seen_by_classifier) and len(seen_by_classifier) == 2
    torch.testing.assert_close(seen_by_classifier[0], Normalize(IMAGENET_MEAN, IMAGENET_STD)(x))  # the mask pass
    assert seen_by_diffusion and all(tuple(t.shape) == (1, 3, 256, 256) for t in seen_by_diffusion)
    purified = seen_by_classifier[1] * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert purified.min() >= -1e-5 and purified.max() <= 1 + 1e-5  # [0, 1] images, normalised for the classifier


def test_pyautoattack_resnet18_classifies_foolbox_cifar10_samples():
    images, labels = foolbox_samples("cifar10")
    classifier = build_classifier("cifar10-resnet18")
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9  # measured 20 / 20; a wrong layout or input scaling gives chance level


def test_cifar10_path_end_to_end_through_the_cli(tmp_path):
    """pyautoattack's ResNet-18 on foolbox's 20 CIFAR-10 images, defended with an untrained
    small UNet (plumbing only: a user passes --diffusion checkpoint:<their file>)."""
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [
        "eval", "--data", "foolbox:cifar10", "--classifier", "cifar10-resnet18", "--diffusion", "small-unet",
        "--defenses", "none,heterogeneous", "--n-samples", "4", "--batch-size", "4", "--iters", "1", "--eot", "1",
        "--steps", "10", "--out", str(out),
    ], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output  # the untrained diffusion model is flagged
    none = json.loads((out / "none" / "report.json").read_text())
    assert none["n_samples"] == 4 and none["clean_accuracy"]["mean"] == 1.0
    assert (out / "heterogeneous" / "report.json").is_file()


def test_purify_takes_the_cifar10_models_sizes_by_default(tmp_path):
    images, _ = foolbox_samples("cifar10")
    from PIL import Image

    picture = tmp_path / "cat.png"
    Image.fromarray((images[0].numpy().transpose(1, 2, 0) * 255).round().astype("uint8")).save(picture)
    result = CliRunner().invoke(app, ["purify", str(picture), "--classifier", "cifar10-resnet18", "--diffusion", "small-unet",
                                      "--steps", "10", "--out", str(tmp_path / "out")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "resized" not in result.output  # 32 x 32 input, 32 x 32 models
    assert Image.open(tmp_path / "out" / "cat.purified.png").size == (32, 32)
