"""The CIFAR-10 ResNet-18 layout of the widely used "pytorch-cifar" models (3x3 stem, no max-pool).

This is the architecture of the ResNet-18 that ``pyautoattack`` ships as
``pyautoattack/examples/model_test.pt`` (module names ``conv1, bn1, layer1..layer4, linear``;
residual projections in ``shortcut.0`` / ``shortcut.1``). It takes [0, 1] images (N, 3, 32, 32)
without normalisation and returns logits (N, num_classes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        projection = stride != 1 or in_planes != planes
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                         if projection else nn.Sequential())

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32 x 32 images: stages ``layer1..layer4`` (64, 128, 256, 512 channels)."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes, stages = 64, []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for stride in [1 if index == 0 else 2] + [1] * (count - 1):
                layers.append(_BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def pyautoattack_resnet18_weights() -> Path:
    """Path of ``pyautoattack``'s bundled CIFAR-10 ResNet-18 weights (installed package, no import).

    Raises:
        FileNotFoundError: pyautoattack is not installed or its wheel lacks the example model.
    """
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled CIFAR-10 ResNet-18 comes with pyautoattack: pip install 'robustwrap[eval]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "examples" / "model_test.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this pyautoattack build does not ship examples/model_test.pt")
    return path
