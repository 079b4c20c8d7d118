"""Model specs come from one registry per kind: how each is written, built, and whether it brings weights."""

import pytest

from robustwrap.cli.common import CLASSIFIER_SPECS, DIFFUSION_SPECS
from robustwrap.specs import (CLASSIFIER_SCHEMES, DIFFUSION_SCHEMES, build_classifier, build_diffusion,
                              describe_schemes, find_scheme, input_shape, spec_has_weights)


@pytest.mark.parametrize("kind, schemes", [("classifier", CLASSIFIER_SCHEMES), ("diffusion", DIFFUSION_SCHEMES)])
def test_every_scheme_is_found_by_how_it_is_written(kind, schemes):
    for key, scheme in schemes.items():
        spec = key if scheme.plain else f"{key}:some/name"
        assert find_scheme(spec, kind) == (scheme, key if scheme.plain else "some/name")
        assert scheme.written in describe_schemes(kind)
    for bad in ("nope", "timm:", "mnist:x", ":x"):
        with pytest.raises(ValueError, match=f"unknown {kind} spec .*use "):
            find_scheme(bad, kind)


def test_the_cli_help_and_the_defaults_come_from_the_registry():
    assert CLASSIFIER_SPECS == describe_schemes("classifier") and DIFFUSION_SPECS == describe_schemes("diffusion")
    assert input_shape("mnist") == (1, 28) and input_shape("timm:resnet18") == (3, 32) and input_shape("?") == (3, 32)
    assert spec_has_weights("mnist", "diffusion") and spec_has_weights("checkpoint:x.pt", "classifier")
    assert not spec_has_weights("small-unet", "diffusion") and not spec_has_weights("torchvision:resnet18", "classifier")
    with pytest.raises(ValueError, match="kind must be"):
        spec_has_weights("mnist", "denoiser")


def test_built_networks_take_the_requested_input():
    assert build_classifier("small-resnet", channels=1, num_classes=4).fc.out_features == 4
    unet = build_diffusion("small-unet", channels=1, image_size=16)
    assert not unet.training
