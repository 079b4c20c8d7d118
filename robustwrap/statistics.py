"""Confidence intervals for accuracies: one formula (Wilson score, 95%), in one place.

Every accuracy the library and the CLI report — evaluation, tuning, sanity checks, tables and
plots — carries the Wilson score interval of a binomial proportion (Wilson 1927): unlike the
normal-approximation standard error it never leaves [0, 1] and does not collapse to a point
at 0% or 100%, which matters for robust accuracies near 0 measured on a few dozen images.

For an accuracy p over n images and z the standard-normal quantile (1.96 for 95%):

    centre = (p + z^2 / (2n)) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
    interval = [centre - half, centre + half]

A mean over R repeated runs of the same n images is treated as one proportion over n images
(the runs are not independent samples of images).

Two runs on the *same* images are compared pairwise, by the images whose verdict changed
(:func:`paired_sign_test`: McNemar's exact test), not by overlapping intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 97.5% standard-normal quantile: a two-sided 95% interval
LEVEL = 0.95


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion.

    Args:
        p: the observed proportion in [0, 1] (successes / n).
        n: the number of trials (images), >= 1.
        z: the normal quantile; default the two-sided 95% one.

    Returns:
        (low, high) with 0 <= low <= p <= high <= 1.

    Raises:
        ValueError: p outside [0, 1] or not finite, n < 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"p must be a proportion in [0, 1], got {p!r}")
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass(frozen=True)
class Accuracy:
    """An accuracy over ``n`` images with its Wilson 95% interval."""

    value: float  # in [0, 1]
    n: int        # images it is measured on

    @property
    def interval(self) -> tuple[float, float]:
        """(low, high) Wilson 95% interval."""
        return wilson_interval(self.value, self.n)

    @property
    def low(self) -> float:
        return self.interval[0]

    @property
    def high(self) -> float:
        return self.interval[1]

    def below(self, other: "Accuracy") -> bool:
        """True when this accuracy lies under the lower end of ``other``'s interval."""
        return self.value < other.low

    def above(self, other: "Accuracy") -> bool:
        """True when this accuracy lies over the upper end of ``other``'s interval."""
        return self.value > other.high

    def __str__(self) -> str:
        return format_accuracy(self.value, self.n)


def interval_record(p: float, n: int) -> list[float]:
    """[low, high] of the Wilson 95% interval, rounded to 6 digits, for JSON reports."""
    low, high = wilson_interval(p, n)
    return [round(low, 6), round(high, 6)]


def format_accuracy(p: float, n: int, *, percent_sign: bool = True, decimals: int = 1) -> str:
    """'62.5% [52.1, 71.8]': a percentage with its Wilson 95% interval (in percent), to ``decimals`` places."""
    low, high = wilson_interval(p, n)
    sign = "%" if percent_sign else ""
    return f"{100 * p:.{decimals}f}{sign} [{100 * low:.{decimals}f}, {100 * high:.{decimals}f}]"


INTERVAL_NOTE = "in brackets: the Wilson 95% interval over the images"


def paired_sign_test(gained: int, lost: int) -> float:
    """Two-sided exact p-value that two runs on the same images differ (McNemar's exact test).

    Args:
        gained: images robust in the second run but not the first; lost: the reverse (>= 0).

    Returns:
        p in [0, 1]: twice the binomial(gained + lost, 1/2) tail of the smaller count, capped at 1;
        1.0 when no image changed.
    """
    if isinstance(gained, bool) or isinstance(lost, bool) or min(gained, lost) < 0:
        raise ValueError(f"need counts >= 0, got {gained} and {lost}")
    changed = gained + lost
    tail = sum(math.comb(changed, k) for k in range(min(gained, lost) + 1)) / 2 ** changed
    return min(1.0, 2 * tail)
