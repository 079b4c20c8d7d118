"""Network definitions the library ships: small models for tests and training, checkpoint layouts."""

from .small_resnet import SmallResNet
from .unet import SmallUNet
from .wide_resnet import DMWideResNet, WideResNet

__all__ = ["SmallResNet", "SmallUNet", "WideResNet", "DMWideResNet"]
