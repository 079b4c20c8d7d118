"""What attacks, evaluations, sanity checks and the tuner attack and score: a :class:`Defense`.

Two implementations: :class:`robustwrap.RobustWrapper` (the defense: S stochastic purifications,
voted) and :class:`BareClassifier` (the classifier alone, the no-defense baseline: one
deterministic vote of its own logits). Code that takes a Defense does not ask which one it has:
the two differ in what they compute (``purify``, ``vote_logits``, ``scores``, ``decide``) and in
one property, ``deterministic``. A deterministic model draws no noise, so one copy is every copy:
attacks need no EOT, AutoAttack runs its standard version, and there is no purification to
differentiate through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import PurifyConfig
    from .noise import Noise


@runtime_checkable
class Defense(Protocol):
    """A classifier as attacked and scored: images (B, C, H, W) in [0, 1] to K classes.

    Both implementations are ``nn.Module`` s.

    Attributes:
        config: the purification's settings (None: no purification).
        deterministic: True when no call draws noise (the bare classifier).
        channels: the channels the inputs must have (None: any).
        image_size: (H, W) the inputs must have (None: any).
        classifier: the classifier network.
        eps_model: the diffusion model (None: none).
    """

    config: "PurifyConfig | None"
    deterministic: bool
    channels: int | None
    image_size: tuple[int, int] | None
    classifier: nn.Module
    eps_model: nn.Module | None

    def classify(self, x: Tensor) -> Tensor:
        """(B, K) logits of the bare classifier."""
        ...

    def purify(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        """(B, C, H, W) in [0, 1]: one purification per image."""
        ...

    def vote_logits(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        """(S, B, K) classifier logits of each of the S votes."""
        ...

    def scores(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        """(B, K) what an attack differentiates (logits-like)."""
        ...

    def decide(self, vote_logits: Tensor) -> Tensor:
        """(B,) int64 labels from (S, B, K) vote logits, by the decision rule."""
        ...

    def predict(self, x: Tensor, *, noise: "Noise | None" = None) -> Tensor:
        """(B,) int64 labels, without gradient."""
        ...

    def with_votes(self, votes: int) -> "Defense":
        """The same defense purifying ``votes`` copies per image in one pass."""
        ...

    def with_config(self, config: "PurifyConfig") -> "Defense":
        """The same networks under another configuration (a cheaper surrogate)."""
        ...

    def mask(self, x: Tensor) -> Tensor | None:
        """(B, 1, Hd, Wd) the binary mask the defense would use (None: no mask)."""
        ...

    def double(self) -> "Defense":
        """Itself with every parameter in float64 (an ``nn.Module``'s; the gradient check copies one)."""
        ...

    @property
    def calls_per_image(self) -> int:
        """Denoiser calls one decision costs per image (0: none)."""
        ...


class BareClassifier(nn.Module):
    """The classifier of a wrapper alone, with its normalisation and input checks: the no-defense baseline.

    One deterministic vote: ``vote_logits`` is the classifier's logits (1, B, K), ``scores`` the
    logits themselves, ``decide`` their argmax; ``purify`` is the identity. Noise and masks are
    accepted, so that every Defense is called alike, and ignored.

    Args:
        wrapper: a :class:`robustwrap.RobustWrapper` (its ``classify``, ``channels``, ``image_size``).
    """

    config = None
    deterministic = True
    eps_model = None

    def __init__(self, wrapper: nn.Module) -> None:
        super().__init__()
        if isinstance(wrapper, BareClassifier):
            raise TypeError("BareClassifier takes a RobustWrapper; use bare(defense) for either kind")
        self.wrapper = wrapper

    @property
    def classifier(self) -> nn.Module:
        return self.wrapper.classifier

    @property
    def channels(self) -> int | None:
        return self.wrapper.channels

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.wrapper.image_size

    @property
    def calls_per_image(self) -> int:
        return 0

    def classify(self, x: Tensor) -> Tensor:
        return self.wrapper.classify(x)

    def forward(self, x: Tensor, *, noise: "Noise | None" = None) -> Tensor:
        """(B, K) class probabilities."""
        return self.classify(x).softmax(dim=1)

    def purify(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        return x

    def vote_logits(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        return self.classify(x).unsqueeze(0)

    def scores(self, x: Tensor, *, noise: "Noise | None" = None, mask: Tensor | None = None) -> Tensor:
        return self.classify(x)

    def decide(self, vote_logits: Tensor) -> Tensor:
        return vote_logits[0].argmax(dim=1)

    @torch.no_grad()
    def predict(self, x: Tensor, *, noise: "Noise | None" = None) -> Tensor:
        return self.classify(x).argmax(dim=1)

    def mask(self, x: Tensor) -> None:
        """None: the bare classifier has no mask."""
        return None

    def with_votes(self, votes: int) -> "BareClassifier":
        return self

    def with_config(self, config: "PurifyConfig") -> "BareClassifier":
        """Itself: the bare classifier has no purification to configure."""
        return self


def bare(defense: Defense) -> BareClassifier:
    """The bare classifier of ``defense`` (itself when it is one)."""
    return defense if isinstance(defense, BareClassifier) else BareClassifier(defense)
