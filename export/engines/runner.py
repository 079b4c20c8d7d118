"""What every engine module shares: the runner protocol and the one output conversion."""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

from torch import Tensor


def like_caller(outputs: Sequence[Tensor], like: Tensor) -> list[Tensor]:
    """Outputs on ``like``'s device; float outputs in its dtype, integer outputs keep theirs."""
    return [o.to(like.device, like.dtype) if o.is_floating_point() else o.to(like.device) for o in outputs]


class Runner(Protocol):
    """One compiled graph: ``runner({name: tensor}) -> [outputs in the graph's order]``."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]: ...
