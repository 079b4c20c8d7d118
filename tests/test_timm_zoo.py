"""The two-line promise across timm families: wrap, run, mask, differentiate, leave no hook.

Each architecture is built with ``pretrained=False`` (transformers with ``dynamic_img_size``
where timm offers it, so that they run at two sizes) and wrapped in two lines with a tiny
diffusion model and two denoiser calls. Heavy models are marked slow.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from robustwrap import Noise, PurifyConfig, RobustWrapper, TimmIntermediates, log_mean_probability

from .tiny import tiny_unet

# name, extra create_model arguments, the two input sizes it is run at
ZOO = [
    ("resnet18", {}, (32, 64)),
    ("resnext26ts", {}, (32, 64)),
    ("resnetv2_18", {}, (32, 64)),
    ("convnext_atto", {}, (32, 64)),
    ("efficientnet_b0", {}, (32, 64)),
    ("regnetx_002", {}, (32, 64)),
    ("mobilenetv3_small_050", {}, (32, 64)),
    ("ghostnet_050", {}, (32, 64)),
    ("densenet121", {}, (32, 64)),
    ("dla46_c", {}, (32, 64)),
    ("repvgg_a0", {}, (32, 64)),
    ("rexnet_100", {}, (32, 64)),
    ("mobilevit_xxs", {}, (64, 128)),
    ("edgenext_xx_small", {}, (64, 128)),
    ("poolformerv2_s12", {}, (32, 64)),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (32, 64)),
    ("deit_tiny_patch16_224", {"dynamic_img_size": True}, (32, 64)),
    ("beit_base_patch16_224", {"embed_dim": 96, "depth": 4, "num_heads": 2, "img_size": 64}, (64,)),
    ("eva02_tiny_patch14_224", {"dynamic_img_size": True}, (56, 84)),
    ("swin_tiny_patch4_window7_224", {"img_size": 112}, (112,)),
    ("maxvit_nano_rw_256", {"img_size": 128}, (128,)),
    ("wide_resnet50_2", {}, (32, 64)),
]
SLOW = {"densenet121", "wide_resnet50_2", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256", "eva02_tiny_patch14_224"}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "name, kwargs, sizes",
    [pytest.param(*entry, id=entry[0], marks=[pytest.mark.slow] if entry[0] in SLOW else []) for entry in ZOO],
)
def test_any_timm_classifier_wraps_in_two_lines(name, kwargs, sizes):
    classifier = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    hooks_before = _hooks(classifier)
    wrapper = RobustWrapper(classifier, tiny_unet(size=sizes[0]), PurifyConfig(steps=10, t_l=0.2, t_s=0.1))
    assert isinstance(wrapper.stages, TimmIntermediates)  # timm's own seam: no hooks at all
    generator = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.rand(2, 3, size, size, generator=generator)
        maps = wrapper.stage_maps(x)
        assert 1 <= len(maps) <= 4 and all(m.dim() == 4 and m.shape[0] == 2 for m in maps)
        mask = wrapper.mask(x)
        coverage = mask.mean(dim=(1, 2, 3))
        assert ((coverage > 0) & (coverage < 1)).all(), f"trivial mask at {size}: {coverage.tolist()}"
        x.requires_grad_(True)
        logits = wrapper.vote_logits(x, noise=Noise.stream(generator))  # (S, B, K)
        assert logits.shape == (1, 2, 10)
        (gradient,) = torch.autograd.grad(log_mean_probability(logits).sum(), x)
        assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    assert _hooks(classifier) == hooks_before  # nothing stays attached to the user's model


def test_inspect_reports_where_a_transformers_stage_maps_come_from():
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    result = CliRunner().invoke(app, ["inspect", "vit_tiny_patch16_224"])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "forward_intermediates index 11 (blocks.11)" in output and "(192, 14, 14)" in output
    assert "only (224, 224)" in output  # a ViT without dynamic_img_size pins its size


@pytest.mark.parametrize(
    "name, kwargs, sizes",
    [pytest.param(*entry, id=entry[0], marks=[pytest.mark.slow] if entry[0] in SLOW else []) for entry in ZOO],
)
def test_one_forward_pass_gives_the_classifiers_logits_and_its_stage_maps(name, kwargs, sizes):
    """What exported classifiers compute (export.modules.ClassifierWithStages): model(x) and the maps, once."""
    classifier = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    source = TimmIntermediates.default_for(classifier)
    x = torch.rand(2, 3, sizes[0], sizes[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, maps = source.logits_and_maps(classifier, x)
        torch.testing.assert_close(logits, classifier(x))
        for got, want in zip(maps, source.capture(classifier, x), strict=True):
            torch.testing.assert_close(got, want)
