"""robustwrap: make any image classifier robust at deployment with heterogeneous-noise purification.

    >>> from robustwrap import RobustWrapper, PurifyConfig
    >>> wrapper = RobustWrapper(classifier, diffusion, PurifyConfig(votes=4))
    >>> probs = wrapper(images)        # (B, K), images (B, C, H, W) in [0, 1]
"""

from .adapters import DiffusersUNetEps, EDMDenoiserEps, EpsModel, LearnedSigmaEps, as_eps_model
from .config import PurifyConfig
from .hooks import StageHooks, infer_stage_modules
from .mask import attention_map, binarize
from .noise import NoiseSource
from .sampler import purify_latent
from .schedule import SamplingPlan, ddim_grid, linear_alphas_cumprod, make_plan
from .vote import vote_labels
from .wrapper import RobustWrapper

__version__ = "0.1.0"

__all__ = [
    "RobustWrapper",
    "PurifyConfig",
    "EpsModel",
    "LearnedSigmaEps",
    "DiffusersUNetEps",
    "EDMDenoiserEps",
    "as_eps_model",
    "StageHooks",
    "infer_stage_modules",
    "attention_map",
    "binarize",
    "NoiseSource",
    "purify_latent",
    "SamplingPlan",
    "ddim_grid",
    "linear_alphas_cumprod",
    "make_plan",
    "vote_labels",
]
