"""The two WideResNet layouts RobustBench checkpoints use, with their module names.

- :class:`WideResNet`: the pre-activation WRN behind RobustBench's ``Standard`` CIFAR-10 model
  (``robustbench/model_zoo/architectures/wide_resnet.py``, ``WideResNet(depth=28,
  widen_factor=10)``, no ``sub_block1``): ``conv1``, ``block1..block3`` each holding ``layer``,
  then ``bn1``, ``relu``, ``fc``. 36,479,194 parameters at 28-10.
- :class:`DMWideResNet`: the DeepMind-style WRN (``dm_wide_resnet.py``) behind
  ``Gowal2020Uncovering_70_16`` and ``Rebuffi2021Fixing_70_16_cutmix_extra``, which RobustBench
  builds as ``DMWideResNet(num_classes=10, depth=70, width=16, activation_fn=Swish,
  mean=CIFAR10_MEAN, std=CIFAR10_STD)``: ``mean``/``std`` buffers of shape (3, 1, 1),
  ``init_conv``, ``layer[i].block[j]``, ``batchnorm``, ``relu``, ``logits``.
  266,796,506 parameters at 70-16.

State-dict names and shapes match those files exactly (tests/data/arch/*.txt, checked by
tests/test_arch_wrn.py), so a RobustBench checkpoint read with
:func:`robustwrap.specs.load_state_dict` loads with ``strict=True``.

``num_batches_tracked``: our BatchNorm layers have the buffer, as RobustBench's do. Whether a
given checkpoint file stores it is not something the reference source says. A checkpoint
without it still loads strictly: ``load_state_dict`` returns a plain dict without torch's
``_metadata``, and for such a dict PyTorch's BatchNorm fills a missing ``num_batches_tracked``
with 0 (the same happens inside RobustBench, whose prefix stripping also drops the metadata).

Both take [0, 1] images. Pooling is global average pooling, equal to the reference
``avg_pool2d(out, 8)`` on 32x32 inputs. Depth and width are arguments so tests can build tiny
ones; the stage hooks are ``block1..block3 + relu`` and ``layer[i].block[-1] + relu``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_planes), nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class _NetworkBlock(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[_PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(num_blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """RobustBench WRN-depth-width (default 28-10) for 32x32 images in [0, 1] -> logits."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = _NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = _NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _DMBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(in_planes), activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)  # padded in forward ('SAME')
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(out_planes), activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        padded = F.pad(activated, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(padded))))
        return out + (self.shortcut(activated) if self.shortcut is not None else x)


class _DMBlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                _DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind-style WRN-depth-width (default 70-16, Swish) for [0, 1] images -> logits.

    Args:
        mean, std: per-channel statistics applied to the input inside the model; buffers of
            shape (C, 1, 1) as in RobustBench (default: its CIFAR10_MEAN / CIFAR10_STD).
        activation: nn.SiLU (Swish, used by Gowal2020Uncovering_70_16 and
            Rebuffi2021Fixing_70_16_cutmix_extra) or nn.ReLU (RobustBench's class default).
        padding: zero padding added around the input before normalisation (RobustBench's
            ``padding``, 0 for all the CIFAR-10 models named above).
    """

    def __init__(
        self,
        depth: int = 70,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        activation: type[nn.Module] = nn.SiLU,
        padding: int = 0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DMWideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(in_channels, 1, 1))
        self.padding = padding
        self.init_conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            *[_DMBlockGroup(n, widths[i], widths[i + 1], 1 if i == 0 else 2, activation) for i in range(3)]
        )
        self.batchnorm, self.relu = nn.BatchNorm2d(widths[3]), activation()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
