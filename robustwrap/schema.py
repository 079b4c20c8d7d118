"""Settings whose constraints are declared beside their fields, one check, strict dicts in and out.

A settings class is a frozen dataclass whose fields are :func:`setting` s: the default, the
bounds (``ge``, ``gt``, ``le``, ``lt``) and one line of help. The field's annotation is its
type: ``int``, ``float``, ``bool``, ``str``, a ``Literal[...]`` of strings, or any of those
``| None``. :func:`problems` checks an instance against all of it, :func:`check` raises with
every problem at once, and :func:`from_dict` builds an instance from JSON values strictly
(unknown names and wrong types are refused, naming the file and the field; nothing is coerced).

Example:
    >>> @dataclass(frozen=True)
    ... class Options:
    ...     samples: int = setting(10, ge=1, help="purifications per step")
    ...     def __post_init__(self) -> None:
    ...         check(self, "Options")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")
BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def setting(default: Any, *, help: str = "", ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, why: str = "") -> Any:
    """A dataclass field with its default, its bounds, one line of help and why the bounds are what they
    are (read by :func:`problems`, which quotes ``why`` when a value breaks them, and by the CLI, which
    makes each option's flag and help from them)."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds, "why": why})


def help_of(field: dataclasses.Field) -> str:
    """The help line a :func:`setting` declared ("" for a plain field)."""
    return field.metadata.get("help", "")


def bounds_of(field: dataclasses.Field) -> dict[str, float]:
    """The bounds a :func:`setting` declared, e.g. ``{"ge": 1}``."""
    return dict(field.metadata.get("bounds", {}))


def type_problems(values: dict[str, object], *, ints: tuple[str, ...] = (), floats: tuple[str, ...] = (),
                  bools: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with the types of named values, one phrase per field (empty: nothing).

    ``ints`` must be whole numbers (never a bool, a float such as 2.5 or a string), ``floats``
    finite real numbers (ints are fine; NaN, infinities, bools and strings are not), ``bools``
    real booleans (never the string "no" or 0). A name in ``optional`` may also be None.
    """
    problems = []
    for name, value in values.items():
        if value is None and name in optional:
            continue
        if name in ints and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            problems.append(f"{name} must be an int (a whole number), got {value!r}")
        elif name in floats and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            problems.append(f"{name} must be a number, got {value!r}")
        elif name in floats and not math.isfinite(value):
            problems.append(f"{name} must be a finite number, got {value!r}")
        elif name in bools and not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {value!r}")
    return problems


def range_words(bounds: dict[str, float]) -> str:
    """'in [0, 1]', 'in (0, 8]', '>= 1': the bounds as the messages say them."""
    low = next(((rule, bounds[rule]) for rule in ("ge", "gt") if rule in bounds), None)
    high = next(((rule, bounds[rule]) for rule in ("le", "lt") if rule in bounds), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    rule, bound = low or high
    return f"{BOUNDS[rule][0]} {bound:g}"


@functools.cache
def field_types(cls: type) -> dict[str, tuple[object, bool]]:
    """Each field's declared type without ``| None``, and whether None is allowed."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        kind, optional = hints[field.name], False
        if get_origin(kind) in (Union, types.UnionType):
            args = [a for a in get_args(kind) if a is not type(None)]
            optional, kind = len(args) < len(get_args(kind)), args[0] if len(args) == 1 else kind
        out[field.name] = (kind, optional)
    return out


def value_problem(name: str, value: object, kind: object) -> str | None:
    """What is wrong with one value of a declared type (None: nothing): int, float, bool, str, a ``Literal``
    of strings, or a JSON ``list`` / ``dict``; the one type check of settings and of file readers."""
    if get_origin(kind) is Literal:
        allowed = get_args(kind)
        return None if value in allowed and isinstance(value, str) else f"{name} must be one of {allowed}, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"{name} must be a string, got {value!r}"
    if kind in (list, dict):
        return None if isinstance(value, kind) else \
            f"{name} must be {'a list' if kind is list else 'an object'}, got {value!r}"
    groups = {int: "ints", float: "floats", bool: "bools"}
    if kind in groups:
        found = type_problems({name: value}, **{groups[kind]: (name,)})
        return found[0] if found else None
    return None  # other types (tuples, nested settings) are their owner's to check


def type_problems_of(cls: type, values: dict[str, object]) -> list[str]:
    """What is wrong with the types of ``values`` (field name -> value) for the settings class ``cls``;
    a str field must be a string, a ``Literal`` one is checked against its choices by :func:`problems`."""
    types = field_types(cls)
    found = []
    for name, value in values.items():
        kind, optional = types[name]
        if value is None and optional:
            continue
        if get_origin(kind) is Literal:
            kind = str
        problem = value_problem(name, value, kind)
        if problem:
            found.append(problem)
    return found


def problems(obj: object) -> list[str]:
    """Every way ``obj`` (a dataclass of :func:`setting` fields) breaks its declared types; when the types
    are right, every way it breaks its choices and bounds (the bounds need numbers)."""
    fields = dataclasses.fields(obj)
    found = type_problems_of(type(obj), {f.name: getattr(obj, f.name) for f in fields})
    if found:
        return found
    types = field_types(type(obj))
    for field in fields:
        kind, optional = types[field.name]
        value = getattr(obj, field.name)
        if value is None and optional:
            continue
        problem = value_problem(field.name, value, kind)
        bounds = bounds_of(field)
        if problem is None and kind in (int, float) and bounds and not all(BOUNDS[rule][1](value, bound)
                                                                          for rule, bound in bounds.items()):
            why = field.metadata.get("why")
            problem = f"{field.name} must be {range_words(bounds)}{f' ({why})' if why else ''}, got {value!r}"
        if problem:
            found.append(problem)
    return found


def normalize(obj: object) -> None:
    """Store every int and float field of the frozen dataclass ``obj`` as a plain int / float (numpy scalars,
    ints given for floats); call once its types are checked."""
    for name, (kind, _) in field_types(type(obj)).items():
        value = getattr(obj, name)
        if kind in (int, float) and value is not None:
            object.__setattr__(obj, name, kind(value))


def check_types(obj: object, what: str) -> None:
    """Raise ``ValueError("invalid <what>: ...")`` when a field of ``obj`` has the wrong type, else store its numbers
    as plain ints and floats (:func:`normalize`): what checks of relations between fields need first."""
    found = type_problems_of(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if found:
        raise ValueError(f"invalid {what}: " + "; ".join(found))
    normalize(obj)


def check(obj: object, what: str) -> None:
    """Raise ``ValueError("invalid <what>: ...")`` naming every problem of ``obj`` (:func:`problems`)."""
    found = problems(obj)
    if found:
        raise ValueError(f"invalid {what}: " + "; ".join(found))


def to_dict(obj: object) -> dict[str, object]:
    """The fields by name, as JSON values."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], values: object, source: str) -> T:
    """An instance of ``cls`` from JSON values: unknown names and wrong types are refused.

    Raises:
        ValueError: naming ``source`` and the unknown fields, a field of the wrong type or a bad value.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a table of {cls.__name__} fields, got {values!r}")
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    found = type_problems_of(cls, values)
    if found:
        raise ValueError(f"{source}: " + "; ".join(found))
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from error
