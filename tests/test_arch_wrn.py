"""Our RobustBench WideResNets have exactly the state-dict layout of the real checkpoints.

The recordings in tests/data/arch/ were enumerated from RobustBench's source
(architectures/wide_resnet.py, dm_wide_resnet.py, model_zoo/cifar10.py), not from our modules.
Real configurations are built on the meta device (no memory, no compute).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robustwrap import infer_stage_modules, infer_stage_source
from robustwrap.nets import DMWideResNet, WideResNet
from robustwrap.checkpoints import load_state_dict

from .recordings import layout, layout_diff, recorded

WRN_28_10_PARAMS = 36_479_194  # publicly quoted for WRN-28-10 (36.5M)
WRN_70_16_PARAMS = 266_796_506  # publicly quoted for WRN-70-16 (266.8M, "267M")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def recorded_params(entries: list) -> int:
    return sum(math.prod(shape) for key, shape in entries if key.rsplit(".", 1)[-1] not in BUFFER_SUFFIXES and key not in ("mean", "std"))


@pytest.mark.parametrize(
    "build, recording, params",
    [
        (lambda: WideResNet(depth=28, widen_factor=10, num_classes=10), "robustbench_wrn_28_10.txt", WRN_28_10_PARAMS),
        (lambda: DMWideResNet(depth=70, width=16, num_classes=10), "robustbench_dm_wrn_70_16.txt", WRN_70_16_PARAMS),
    ],
    ids=["Standard_WRN-28-10", "DM_WRN-70-16"],
)
def test_real_config_matches_the_recorded_checkpoint_layout(build, recording, params):
    with torch.device("meta"):
        model = build()
    ours, real = layout(model), recorded(recording)
    assert ours == real, "state-dict layout differs from RobustBench's:\n" + layout_diff(ours, real)
    assert sum(p.numel() for p in model.parameters()) == params == recorded_params(real)


def test_dm_wrn_normalisation_buffers_and_activation_are_robustbenchs():
    with torch.device("meta"):
        model = DMWideResNet()
    assert model.mean.shape == model.std.shape == (3, 1, 1)  # RobustBench: .view(num_input_channels, 1, 1)
    assert {"mean", "std"} <= set(model.state_dict())  # buffers, so they come with the checkpoint
    cpu = DMWideResNet(depth=10, width=1)
    torch.testing.assert_close(cpu.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    torch.testing.assert_close(cpu.std.flatten(), torch.tensor([0.2471, 0.2435, 0.2616]))
    assert isinstance(cpu.relu, nn.SiLU) and isinstance(cpu.layer[0].block[0].relu_0, nn.SiLU)  # Swish


def test_stage_maps_of_the_real_configs_are_read_where_the_official_code_hooks_them():
    with torch.device("meta"):  # the probe that finds the last activations runs on the meta device too
        wrn, dm = WideResNet(), DMWideResNet()
    assert infer_stage_modules(wrn) == ["block1", "block2", "block3", "relu"]
    assert infer_stage_modules(dm) == ["layer.0", "layer.1", "layer.2", "relu"]
    assert infer_stage_source(wrn).names == ("block1.layer.3.relu2", "block2.layer.3.relu2", "block3.layer.3.relu2", "relu")
    assert infer_stage_source(dm).names == ("layer.0.block.10.relu_1", "layer.1.block.10.relu_1", "layer.2.block.10.relu_1", "relu")


def test_tiny_configs_run_on_cpu_and_hooks_capture_each_stage():
    x = torch.rand(2, 3, 32, 32)
    for model, widths in ((WideResNet(depth=10, widen_factor=1), (16, 32, 64, 64)), (DMWideResNet(depth=10, width=1), (16, 32, 64, 64))):
        model.eval()
        with torch.no_grad():
            stages = infer_stage_source(model).capture(model, x)
            logits = model(x)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        assert [s.shape[1] for s in stages] == list(widths)
        assert [s.shape[-1] for s in stages] == [32, 16, 8, 8]


def test_dm_block_pads_like_tensorflow_same():
    # stride 2: pad (0, 1, 0, 1) before the unpadded 3x3 conv, as the reference does
    model = DMWideResNet(depth=10, width=1).eval()
    block = model.layer[1].block[0]
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        activated = block.relu_0(block.batchnorm_0(x))
        expected = nn.functional.conv2d(nn.functional.pad(activated, (0, 1, 0, 1)), block.conv_0.weight, stride=2)
        expected = block.conv_1(block.relu_1(block.batchnorm_1(expected))) + block.shortcut(activated)
        torch.testing.assert_close(block(x), expected)


def _save_robustbench_style(model: nn.Module, path: Path, drop_num_batches_tracked: bool = False) -> None:
    state = {k: v for k, v in model.state_dict().items() if not (drop_num_batches_tracked and k.endswith("num_batches_tracked"))}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)


@pytest.mark.parametrize("drop_num_batches_tracked", [False, True], ids=["with_nbt", "without_nbt"])
@pytest.mark.parametrize("build", [lambda: WideResNet(depth=10, widen_factor=2), lambda: DMWideResNet(depth=10, width=2)], ids=["WRN", "DMWRN"])
def test_robustbench_style_checkpoint_loads_strictly(tmp_path, build, drop_num_batches_tracked):
    torch.manual_seed(3)
    source = build()
    with torch.no_grad():  # make the stored statistics distinguishable from a fresh model's
        for name, buffer in source.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(7)
    path = tmp_path / "model.pt"
    _save_robustbench_style(source, path, drop_num_batches_tracked)

    state = load_state_dict(path)
    assert not any(k.startswith("module.") for k in state)
    torch.manual_seed(4)
    target = build()
    target.load_state_dict(state, strict=True)
    for key, value in source.state_dict().items():
        if drop_num_batches_tracked and key.endswith("num_batches_tracked"):
            assert target.state_dict()[key].item() == 0  # PyTorch's default for checkpoints without it
        else:
            torch.testing.assert_close(target.state_dict()[key], value, msg=key)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_a_checkpoint_with_a_wrong_layout_is_refused(tmp_path):
    source = WideResNet(depth=10, widen_factor=1)
    path = tmp_path / "model.pt"
    _save_robustbench_style(source, path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        WideResNet(depth=10, widen_factor=2).load_state_dict(load_state_dict(path), strict=True)
