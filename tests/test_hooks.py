"""Stage-module inference on the backbones users bring, and hooks that do not leak."""

import gc

import pytest
import timm
import torch
import torchvision
from torch import nn

from robustwrap import HookedStages, PurifyConfig, RobustWrapper, infer_stage_modules
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
    assert infer_stage_modules(model) == ["layer.0", "layer.1", "layer.2", "relu"]


# The official code's hooks on the paper's pre-activation backbones (issue 10, item 5):
# a block's output there is a residual sum; the mask reads the last activation before it.
def test_robustbench_wrn_reads_the_last_relu2_of_each_block_like_the_official_code():
    model = WideResNet(depth=16, widen_factor=1).eval()  # 2 blocks per group
    wrapper = RobustWrapper(model, tiny_unet(size=32), PurifyConfig(steps=10), normalization=None)
    assert wrapper.stages.names == ("block1.layer.1.relu2", "block2.layer.1.relu2", "block3.layer.1.relu2", "relu")


def test_deepmind_wrn_reads_the_last_relu_1_of_each_group_like_the_official_code():
    model = DMWideResNet(depth=16, width=1).eval()
    wrapper = RobustWrapper(model, tiny_unet(size=32), PurifyConfig(steps=10), normalization=None)
    assert wrapper.stages.names == ("layer.0.block.1.relu_1", "layer.1.block.1.relu_1", "layer.2.block.1.relu_1", "relu")


def test_wrn_stage_maps_are_the_last_activations_not_the_residual_sums():
    model = WideResNet(depth=16, widen_factor=1).eval()  # 2 blocks per group
    x = torch.rand(2, 3, 32, 32)
    wrapper = RobustWrapper(model, tiny_unet(size=32), PurifyConfig(steps=10), normalization=None)
    block = model.block1.layer[-1]
    with torch.no_grad():
        h = model.block1.layer[0](model.conv1(x))
        expected = block.relu2(block.bn2(block.conv1(block.relu1(block.bn1(h)))))
        residual_sum = model.block1(model.conv1(x))
        got = wrapper.stage_maps(x)[0]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, residual_sum)


def test_torchvision_shared_relu_is_read_at_its_last_call_the_block_output():
    model = torchvision.models.resnet50(weights=None).eval()
    wrapper = RobustWrapper(model, tiny_unet(size=32), PurifyConfig(steps=10))
    assert wrapper.stages.names == ("layer1.2.relu", "layer2.3.relu", "layer3.5.relu", "layer4.2.relu")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(wrapper.normalize(x)))))
        expected = []
        for name in RESNET_STAGES:
            h = getattr(model, name)(h)
            expected.append(h)
        captured = wrapper.stage_maps(x)
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want)
    assert _hook_count(model) == 0


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
    with pytest.raises(ValueError, match="stages=\\["):
        infer_stage_modules(model)
    with pytest.raises(ValueError, match="stages=\\["):
        RobustWrapper(model, tiny_unet())
    wrapper = RobustWrapper(model, tiny_unet(), stages=["1"])  # explicit names override inference
    assert wrapper.stages.names == ("1",)


def test_explicit_names_must_exist():
    with pytest.raises(ValueError, match="no module named"):
        RobustWrapper(tiny_classifier(), tiny_unet(), stages=["layer9"])


def test_hooks_capture_the_named_modules_outputs_and_leave_nothing_attached():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = []
        for name in RESNET_STAGES:
            h = getattr(model, name)(h)
            expected.append(h)
        captured = HookedStages(RESNET_STAGES).capture(model, x)
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want)
    assert _hook_count(model) == 0


def test_a_stage_that_does_not_run_is_an_error():
    model = tiny_classifier()
    model.unused = nn.ReLU()
    with pytest.raises(RuntimeError, match="did not run"):
        HookedStages(["layer1", "unused"]).capture(model, torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no module named"):
        HookedStages(["layer1", "layer7"]).capture(model, torch.rand(1, 3, 16, 16))
    assert _hook_count(model) == 0


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hook_stays_on_the_classifier_and_thousand_forwards_grow_nothing():
    classifier = tiny_classifier()
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=5, t_l=0.2, t_s=0.0))
    x = torch.rand(1, 3, 16, 16)
    assert _hook_count(classifier) == 0
    with torch.no_grad():
        for _ in range(20):
            wrapper(x)
        gc.collect()
        objects_before = len(gc.get_objects())
        for _ in range(1000):
            wrapper(x)
        gc.collect()
        objects_after = len(gc.get_objects())
    assert _hook_count(classifier) == 0
    assert objects_after - objects_before < 100, (objects_before, objects_after)


def test_a_failing_forward_leaves_no_hook_behind():
    classifier = tiny_classifier()
    wrapper = RobustWrapper(classifier, tiny_unet(), PurifyConfig(steps=5))
    with pytest.raises(RuntimeError):
        wrapper.stages.capture(classifier, torch.rand(1, 5, 16, 16))  # wrong channels inside the network
    assert _hook_count(classifier) == 0


def test_the_removed_keywords_are_refused():
    with pytest.raises(TypeError, match="blocks"):
        RobustWrapper(tiny_classifier(), tiny_unet(), blocks=["1"])  # stages= is the one name
    assert not hasattr(RobustWrapper, "close")


def test_a_wrapper_deep_copies_and_pickles_with_its_stage_source():
    import copy
    import pickle

    wrapper = RobustWrapper(torchvision.models.resnet18(weights=None), tiny_unet(size=32), PurifyConfig(steps=10))
    x = torch.rand(2, 3, 32, 32)
    for clone in (copy.deepcopy(wrapper), pickle.loads(pickle.dumps(wrapper))):
        assert clone.classifier is not wrapper.classifier
        torch.testing.assert_close(clone.mask(x), wrapper.mask(x))
        assert _hook_count(clone.classifier) == 0 and _hook_count(wrapper.classifier) == 0
