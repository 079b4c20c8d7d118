"""What the defense's two networks return, checked before their answers are used.

A diffusion model that returns NaN, the wrong shape or a tuple, or a classifier that returns a
dict, would otherwise surface as a raw ``AttributeError`` deep in the loop, or worse as
all-NaN probabilities that are voted over. Each check raises a ``ValueError`` naming the
network, what it returned and what was expected.

Cost: shape and dtype are metadata (free). Finiteness needs a reduction and a host sync, so it
is checked on the first denoiser call of each purification (:class:`CheckedDenoiser`) and once
on the logits of each forward; a NaN that appears in a later denoiser call still reaches the
logits (clamping and the classifier keep it), where it is caught. Nothing is checked while
tracing (compile, export): the exported graphs carry no checks, the engines' outputs are
checked by the same wrapper code that runs them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

EpsFn = Callable[[Tensor, Tensor], Tensor]


def _returned(value: object) -> str:
    """What a network returned, in words: "a tuple of 2 items", "a float64 tensor of shape (4, 3)"."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:6]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def check_finite(value: Tensor, network: str, what: str) -> None:
    """ValueError when ``value`` (a network's output) holds NaN or infinities (checked outside autograd: nothing is
    recorded, so gradient checkpointing recomputes the same graph)."""
    finite = torch.isfinite(value.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{network} returned {bad} NaN or infinite values in its {what} "
                         f"({_returned(value)}): check its weights and its input range")


def check_logits(logits: object, rows: int, *, classes: int | None = None, finite: bool = True) -> Tensor:
    """The classifier's output for ``rows`` images, checked: a (rows, K) floating tensor, K >= 2.

    Args:
        logits: what the classifier returned.
        rows: N, the images it was given.
        classes: K expected (the data's classes), or None to accept any K >= 2.
        finite: also check that every logit is finite (a host sync).

    Raises:
        ValueError: naming what was returned and what was expected.
    """
    expected = f"logits of shape ({rows}, {classes if classes is not None else 'K'})"
    if not isinstance(logits, Tensor):
        hint = " (wrap the model so that forward returns the logits tensor only)" if isinstance(
            logits, (tuple, list, dict)) else ""
        raise ValueError(f"the classifier returned {_returned(logits)}, expected {expected}{hint}")
    if logits.dim() != 2 or logits.shape[0] != rows or not logits.is_floating_point() or logits.shape[1] < 2:
        raise ValueError(f"the classifier returned {_returned(logits)}, expected floating {expected} with K >= 2")
    if classes is not None and logits.shape[1] != classes:
        raise ValueError(f"the classifier returns {logits.shape[1]} logits per image but the data has {classes} "
                         "classes: pass the classifier made for this data (or the right --num-classes)")
    if finite:
        check_finite(logits, "the classifier", "logits")
    return logits


class CheckedDenoiser:
    """``eps_model`` whose outputs are checked: ``eps(x_t, t)`` must be a floating tensor shaped like ``x_t``.

    One per purification: the first call is also checked for finiteness (see the module note).

    Args:
        eps_model: the epsilon model ``eps(x_t (N, C, H, W), t (N,)) -> (N, C, H, W)``.
    """

    def __init__(self, eps_model: EpsFn) -> None:
        self.eps_model = eps_model
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        eps = self.eps_model(x_t, t)
        self.calls += 1
        if not isinstance(eps, Tensor) or eps.shape != x_t.shape or not eps.is_floating_point():
            raise ValueError(f"the diffusion model returned {_returned(eps)} for x_t of shape {tuple(x_t.shape)}, "
                             "expected the predicted noise as a floating tensor of the same shape (a network with "
                             "another output needs an adapter: robustwrap.adapters.as_eps_model)")
        if self.calls == 1:
            check_finite(eps, "the diffusion model", "predicted noise")
        return eps
