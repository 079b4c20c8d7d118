"""What an attack's own options are: a frozen dataclass of declared settings (:mod:`robustwrap.schema`).

Each registered attack (:mod:`robustwrap.attacks.registry`) names its options class; the
evaluation's :class:`~robustwrap.evaluation.EvalConfig` carries the instances it was given
(the defaults otherwise), the CLI makes one flag per field from the declarations, and the
budget sentence and the report read :meth:`AttackOptions.describe` and :meth:`AttackOptions.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import check, check_types, to_dict


@dataclass(frozen=True)
class AttackOptions:
    """The base of every attack's options: checked against their declarations when made."""

    def __post_init__(self) -> None:
        check_types(self, type(self).__name__)  # and numpy numbers become plain ones (results headers are JSON)
        check(self, type(self).__name__)

    def describe(self) -> str:
        """The phrase these options add to the budget sentence ("" when they add nothing)."""
        return ""

    def to_dict(self) -> dict[str, object]:
        """The options by name, as JSON values (what the results header and the report record)."""
        return to_dict(self)


@dataclass(frozen=True)
class NoOptions(AttackOptions):
    """An attack with no options of its own."""
