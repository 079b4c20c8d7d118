"""Combining S stochastic purifications into one decision per image (Alg. 3)."""

from __future__ import annotations

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
