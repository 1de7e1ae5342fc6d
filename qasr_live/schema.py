"""Values checked against type annotations: the one validator behind config.yaml and the event protocol.

An annotation here is ``str``, ``int``, ``float``, ``bool``, a ``StrEnum`` class, ``Literal["a", "b", ...]``,
``X | None``, ``list[X]`` or ``dict[str, X]``, nested freely; any of them may be wrapped in ``Annotated[X, ...]``
with :class:`Rules` (bounds, allowed choices, non-empty) among the metadata. Other metadata (an event field's
description) is left to the caller.

* :func:`check` validates one value and returns it normalised: an integer given for a ``float`` becomes a float, a
  string given for an enum becomes its member, a case-insensitive choice takes its canonical spelling. A value that
  does not fit raises :class:`~qasr_live.errors.InvalidValue` with ``path`` (where inside the value: ``""``,
  ``[2]``, ``['final_ms']``) and ``problem``, worded for someone who wrote YAML or JSON:
  ``expected an integer, got a string ('lots')``, ``100 is below the minimum 512``,
  ``'fp16' is not allowed; choose one of: auto, fp32, int8, int4``. config.py and events.py put their own
  location in front (``config.yaml:7: engine.n_ctx: ...``, ``partial.rev: ...``) and raise their own error.
* :func:`json_schema` is the JSON Schema (draft 2020-12) of an annotation, rules included.

Booleans are never numbers here (``true`` is not the integer 1), and a float must be finite.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from qasr_live.errors import InvalidValue

__all__ = ["Rules", "check", "describe", "json_schema", "optional_inner", "show"]

_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
_SHOW_MAX = 40  # longer values are cut in messages: a client must not get its megabyte string echoed back


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """What a type cannot say about the values it allows; every rule is optional.

    ``choices``: the only values allowed; ``case_insensitive``: string choices match in any case and the value
    takes the spelling in ``choices``; ``minimum``/``maximum``: inclusive bounds of a number; ``non_empty``: a
    string must not be empty.
    """

    choices: tuple[Any, ...] | None = None
    case_insensitive: bool = False
    minimum: float | None = None
    maximum: float | None = None
    non_empty: bool = False


def check(annotation: Any, value: Any, rules: Rules | None = None) -> Any:
    """``value`` validated against ``annotation`` (and ``rules``, which apply to the value itself, as if they
    were in its ``Annotated`` metadata) and normalised; raises ``InvalidValue``."""
    return _check(annotation, value, () if rules is None else (rules,), "")


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of ``annotation``; ``TypeError`` for an annotation this module does not support."""
    return _schema(annotation, ())


def optional_inner(annotation: Any) -> Any:
    """``X`` for ``X | None`` (or ``Optional[X]``), else ``None``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def show(value: Any) -> str:
    """A value as the user would write it: ``null``, ``true``, ``12``, ``'text'`` (long ones cut)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        value = value.value
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def describe(value: Any) -> str:
    """What kind of value the user gave, for a wrong-type message: ``a string ('lots')``, ``a list``."""
    for typ, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, typ):
            return f"{name} ({show(value)})"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------- checking


def _unpack(annotation: Any) -> tuple[Any, tuple[Rules, ...]]:
    """``(type, rules)`` of ``Annotated[type, ...]``; a plain annotation has no rules."""
    if typing.get_origin(annotation) is Annotated:
        return annotation.__origin__, tuple(m for m in annotation.__metadata__ if isinstance(m, Rules))
    return annotation, ()


def _choices(tp: Any) -> tuple[str, ...] | None:
    """The allowed strings of a ``StrEnum`` class or a ``Literal``; ``None`` for any other type."""
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        return tuple(member.value for member in tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


def _expected(tp: Any) -> str:
    if (allowed := _choices(tp)) is not None:
        return f"one of: {', '.join(allowed)}"
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    raise TypeError(f"unsupported annotation {tp!r}")


def _check(annotation: Any, value: Any, outer: tuple[Rules, ...], path: str) -> Any:
    tp, rules = _unpack(annotation)
    rules = outer + rules
    inner = optional_inner(tp)
    optional = inner is not None
    if optional:
        if value is None:
            return None
        tp, more = _unpack(inner)
        rules += more
    elif value is None:
        raise InvalidValue(path, f"null is not allowed; expected {_expected(tp)}")
    value = _check_type(tp, value, optional, path)
    for rule in rules:
        value = _apply(rule, value, optional, path)
    return value


def _check_type(tp: Any, value: Any, optional: bool, path: str) -> Any:
    or_null = ", or null" if optional else ""
    if (allowed := _choices(tp)) is not None:
        if isinstance(value, str) and value in allowed:
            return tp(value) if isinstance(tp, type) else value
        raise InvalidValue(path, f"{show(value)} is not allowed; choose one of: {', '.join(allowed)}{or_null}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            raise InvalidValue(path, f"expected a list{' or null' if optional else ''}, got {describe(value)}")
        return [_check(args[0], item, (), f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"unsupported annotation {tp!r}: mapping keys must be str")
        if not isinstance(value, Mapping):
            raise InvalidValue(path, f"expected a mapping{' or null' if optional else ''}, got {describe(value)}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(path, f"keys must be strings, got {describe(key)}")
            out[key] = _check(args[1], item, (), f"{path}[{key!r}]")
        return out
    if tp not in _TYPE_NAMES:
        raise TypeError(f"unsupported annotation {tp!r}")
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        expected = _TYPE_NAMES[tp] + (" or null" if optional else "")
        hint = "; quote it to make it a string" if tp is str and isinstance(value, int | float) else ""
        raise InvalidValue(path, f"expected {expected}, got {describe(value)}{hint}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise InvalidValue(path, f"{show(value)} is not a finite number")
    return value


def _apply(rules: Rules, value: Any, optional: bool, path: str) -> Any:
    if rules.minimum is not None and value < rules.minimum:
        raise InvalidValue(path, f"{show(value)} is below the minimum {_number(rules.minimum)}")
    if rules.maximum is not None and value > rules.maximum:
        raise InvalidValue(path, f"{show(value)} is above the maximum {_number(rules.maximum)}")
    if rules.non_empty and value == "":
        raise InvalidValue(path, "must not be empty")
    if rules.choices is not None:
        if rules.case_insensitive and isinstance(value, str):
            canonical = {str(c).casefold(): c for c in rules.choices}
            match = canonical.get(value.strip().casefold())
        else:
            match = value if value in rules.choices else None
        if match is None:
            allowed = ", ".join(c if isinstance(c, str) else show(c) for c in rules.choices)
            if optional:
                allowed += ", or null"
            raise InvalidValue(path, f"{show(value)} is not allowed; choose one of: {allowed}")
        value = match
    return value


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


# ---------------------------------------------------------------------------------------------- JSON Schema


def _schema(annotation: Any, outer: tuple[Rules, ...]) -> dict[str, Any]:
    tp, rules = _unpack(annotation)
    rules = outer + rules
    inner = optional_inner(tp)
    if inner is not None:
        return {"anyOf": [_schema(inner, rules), {"type": "null"}]}
    out = _type_schema(tp)
    for rule in rules:
        if rule.minimum is not None:
            out["minimum"] = rule.minimum
        if rule.maximum is not None:
            out["maximum"] = rule.maximum
        if rule.non_empty:
            out["minLength"] = 1
        if rule.choices is not None and not rule.case_insensitive:  # JSON Schema has no case-insensitive enum
            out["enum"] = list(rule.choices)
    return out


def _type_schema(tp: Any) -> dict[str, Any]:
    if (allowed := _choices(tp)) is not None:
        return {"type": "string", "enum": list(allowed)}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return {"type": "array", "items": _schema(args[0], ())}
    if origin is dict and args[0] is str:
        return {"type": "object", "additionalProperties": _schema(args[1], ())}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"unsupported annotation {tp!r}")
