"""Stage-module inference on the backbones users bring, and hooks that do not leak."""

import gc

import pytest
import timm
import torch
import torchvision
from torch import nn

from robustwrap import PurifyConfig, RobustWrapper, StageHooks, infer_stage_modules
from robustwrap.nets import DMWideResNet, WideResNet

from .tiny import tiny_classifier, tiny_unet

RESNET_STAGES = ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_timm_resnets(name):
    assert infer_stage_modules(timm.create_model(name, pretrained=False)) == RESNET_STAGES


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_torchvision_resnets(name):
    assert infer_stage_modules(getattr(torchvision.models, name)(weights=None)) == RESNET_STAGES


def test_robustbench_wrn_28_10_layout():
    model = WideResNet(depth=10, widen_factor=1)  # the WRN-28-10 layout at a test size
    assert infer_stage_modules(model) == ["block1", "block2", "block3", "relu"]


def test_deepmind_wrn_70_16_layout():
    model = DMWideResNet(depth=16, width=1)  # 2 blocks per group
    assert infer_stage_modules(model) == ["layer.0.block.1", "layer.1.block.1", "layer.2.block.1", "relu"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("convnext_atto", ["stages.0", "stages.1", "stages.2", "stages.3"]),
        ("efficientnet_b0", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]),
    ],
)
def test_timm_feature_info_models_skip_the_stride_2_stem(name, expected):
    assert infer_stage_modules(timm.create_model(name, pretrained=False)) == expected


def test_model_wrapped_with_its_normalisation_is_found_one_level_down():
    wrapped = nn.Sequential(nn.Identity(), torchvision.models.resnet18(weights=None))
    assert infer_stage_modules(wrapped) == [f"1.{name}" for name in RESNET_STAGES]


def test_unknown_model_error_says_how_to_pass_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    with pytest.raises(ValueError, match="blocks=\\["):
        infer_stage_modules(model)
    with pytest.raises(ValueError, match="blocks=\\["):
        RobustWrapper(model, tiny_unet())
    wrapper = RobustWrapper(model, tiny_unet(), blocks=["1"])  # explicit names override inference
    assert wrapper.blocks == ("1",)


def test_explicit_names_must_exist():
    with pytest.raises(ValueError, match="no module named"):
        RobustWrapper(tiny_classifier(), tiny_unet(), blocks=["layer9"])


def test_hooks_capture_the_named_modules_outputs():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = []
        for name in RESNET_STAGES:
            h = getattr(model, name)(h)
            expected.append(h)
        with StageHooks(model, RESNET_STAGES) as hooks:
            model(x)
            captured = hooks.pop()
            with pytest.raises(RuntimeError):  # read-and-cleared: a second pop finds nothing
                hooks.pop()
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want)
    assert all(len(getattr(model, name)._forward_hooks) == 0 for name in RESNET_STAGES)  # removed on exit


def test_pop_without_a_forward_pass_is_an_error():
    hooks = StageHooks(tiny_classifier(), ["layer1"])
    with pytest.raises(RuntimeError, match="did not run"):
        hooks.pop()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_thousand_forwards_grow_neither_hooks_nor_memory():
    classifier = tiny_classifier()
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=5, t_l=0.2, t_s=0.0))
    x = torch.rand(1, 3, 16, 16)
    hooks_before = _hook_count(classifier)
    assert hooks_before == 3
    with torch.no_grad():
        for _ in range(20):
            wrapper(x)
        gc.collect()
        objects_before = len(gc.get_objects())
        for _ in range(1000):
            wrapper(x)
        gc.collect()
        objects_after = len(gc.get_objects())
    assert _hook_count(classifier) == hooks_before
    assert wrapper._hooks._captured == {}
    assert objects_after - objects_before < 100, (objects_before, objects_after)
    wrapper.close()
    assert _hook_count(classifier) == 0
    wrapper.close()  # idempotent


def test_deleting_the_wrapper_removes_its_hooks():
    classifier = tiny_classifier()
    wrapper = RobustWrapper(classifier, tiny_unet())
    assert _hook_count(classifier) == 3
    del wrapper
    gc.collect()
    assert _hook_count(classifier) == 0
