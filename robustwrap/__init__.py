"""robustwrap: make any image classifier robust at deployment with heterogeneous-noise purification.

    >>> from robustwrap import RobustWrapper, PurifyConfig
    >>> wrapper = RobustWrapper(classifier, diffusion, PurifyConfig(votes=4))
    >>> probs = wrapper(images)        # (B, K), images (B, C, H, W) in [0, 1]
"""

from .adapters import DiffusersUNetEps, EDMDenoiserEps, EpsModel, LearnedSigmaEps, as_eps_model
from .config import MODES, PurifyConfig
from .defense import BareClassifier, Defense, bare
from .hooks import HookedStages, infer_stage_modules, last_activations
from .mask import attention_map, binarize, soft_mask
from .noise import Noise, NoiseSource
from .sampler import purify_latent
from .stages import OwnStageMaps, StageSource, TimmIntermediates, infer_stage_source
from .schedule import SamplingPlan, ddim_grid, linear_alphas_cumprod, make_plan
from .vote import log_mean_probability, vote_labels
from .wrapper import RobustWrapper

__version__ = "0.1.0"

__all__ = [
    "RobustWrapper",
    "PurifyConfig",
    "MODES",
    "Defense",
    "BareClassifier",
    "bare",
    "EpsModel",
    "LearnedSigmaEps",
    "DiffusersUNetEps",
    "EDMDenoiserEps",
    "as_eps_model",
    "StageSource",
    "TimmIntermediates",
    "HookedStages",
    "OwnStageMaps",
    "infer_stage_source",
    "infer_stage_modules",
    "last_activations",
    "attention_map",
    "binarize",
    "soft_mask",
    "Noise",
    "NoiseSource",
    "purify_latent",
    "SamplingPlan",
    "ddim_grid",
    "linear_alphas_cumprod",
    "make_plan",
    "vote_labels",
    "log_mean_probability",
]
