"""Combining S stochastic purifications into one decision per image (Alg. 3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import VoteRule


def vote_labels(probs: Tensor, rule: VoteRule = "hard") -> Tensor:
    """Labels from per-run class probabilities.

    Args:
        probs: (S, B, K) softmax outputs of the S runs.
        rule: ``"hard"``: the most frequent argmax label, ties broken by the mean probability;
            ``"soft"``: argmax of the mean probability.

    Returns:
        (B,) int64 labels in [0, K).
    """
    mean = probs.mean(dim=0)
    if rule == "soft":
        return mean.argmax(dim=1)
    classes = torch.arange(probs.shape[2], device=probs.device)
    counts = (probs.argmax(dim=2, keepdim=True) == classes).sum(dim=0).to(mean.dtype)
    return (counts + 0.5 * mean).argmax(dim=1)  # counts differ by >= 1; 0.5 * mean < 1 only orders ties


def log_mean_probability(logits: Tensor) -> Tensor:
    """log of the mean softmax probability over the S runs, computed stably.

    ``log(mean_s softmax(z_s)) = logsumexp_s(log_softmax(z_s)) - log S``: finite with a
    non-zero gradient even when a softmax rounds to exactly 1 in float32 (logit margins above
    ~17), where ``log(clamp(mean prob))`` has a zero gradient.

    Args:
        logits: (S, B, K) logits of the S runs.

    Returns:
        (B, K) log mean probabilities (what the attacks take as logits).
    """
    return torch.logsumexp(logits.log_softmax(dim=2), dim=0) - math.log(logits.shape[0])
