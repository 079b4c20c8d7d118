"""Network definitions the library ships: small models for tests and training, checkpoint layouts.

Transcribed networks only: they import torch and the standard library, nothing from robustwrap.
How their checkpoints are recognised, filtered and adapted lives in :mod:`robustwrap.families`.
"""

from .guided_unet import GuidedDiffusionUNet
from .ncsnpp import NCSNpp
from .small_resnet import SmallResNet
from .song_unet import EDMDenoiser, SongUNet
from .unet import SmallUNet
from .wide_resnet import DMWideResNet, WideResNet

__all__ = ["GuidedDiffusionUNet", "NCSNpp", "SmallResNet", "SmallUNet", "WideResNet", "DMWideResNet", "SongUNet", "EDMDenoiser"]
