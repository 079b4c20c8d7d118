"""The module that leaves Python: images (and optionally noise) in, votes out, batch first."""

from __future__ import annotations

from torch import Tensor, nn

from robustwrap.vote import vote_labels
from robustwrap.wrapper import RobustWrapper


class ExportGraph(nn.Module):
    """A :class:`RobustWrapper` with a fixed configuration, as a graph with batch-first tensors.

    Inputs:
        images: (B, C, H, W) float32 in [0, 1].
        noise: only when ``explicit_noise``: (B, K, S, C, Hd, Wd) standard normal, where
            K = ``wrapper.plan.noise_draws`` and S = ``wrapper.config.votes``.

    Outputs:
        scores: (B, K_classes) mean class probability over the S votes.
        labels: (B,) int64 labels by the configured vote rule.
        purified: only when ``with_purified``: (B, S, C, H, W) purified images in [0, 1].
    """

    def __init__(self, wrapper: RobustWrapper, explicit_noise: bool = False, with_purified: bool = False) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.explicit_noise = explicit_noise
        self.with_purified = with_purified

    @property
    def input_names(self) -> list[str]:
        return ["images", "noise"] if self.explicit_noise else ["images"]

    @property
    def output_names(self) -> list[str]:
        return ["scores", "labels", "purified"] if self.with_purified else ["scores", "labels"]

    def forward(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, ...]:
        if noise is not None:
            noise = noise.permute(1, 2, 0, 3, 4, 5)  # (B, K, S, ...) -> the wrapper's (K, S, B, ...)
        purified, probs = self.wrapper.purify_and_classify(images, noise=noise)
        outputs = (probs.mean(dim=0), vote_labels(probs, self.wrapper.config.vote))
        return (*outputs, purified.transpose(0, 1)) if self.with_purified else outputs
