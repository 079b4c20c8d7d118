"""Network definitions the library ships: small models for tests and training, checkpoint layouts."""

from .guided_unet import GuidedDiffusionUNet
from .small_resnet import SmallResNet
from .unet import SmallUNet
from .wide_resnet import DMWideResNet, WideResNet

__all__ = ["GuidedDiffusionUNet", "SmallResNet", "SmallUNet", "WideResNet", "DMWideResNet"]
