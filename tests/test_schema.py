"""The one annotation validator (config.yaml and the event protocol): types, rules, paths, JSON Schema."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import pytest

from qasr_live.errors import InvalidValue, QasrError
from qasr_live.schema import Rules, check, json_schema


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"


Small = Annotated[int, Rules(minimum=0, maximum=9)]


def _problem(annotation, value, rules: Rules | None = None) -> str:
    with pytest.raises(InvalidValue) as info:
        check(annotation, value, rules)
    assert isinstance(info.value, QasrError)
    return str(info.value)


def test_values_are_normalised() -> None:
    assert check(float, 3) == 3.0 and isinstance(check(float, 3), float)
    assert check(Colour, "red") is Colour.RED
    assert check(Literal["a", "b"], "b") == "b"
    assert check(str | None, None) is None
    assert check(list[Colour], ["green"]) == [Colour.GREEN]
    assert check(str, "english", Rules(choices=("English",), case_insensitive=True)) == "English"


def test_problems_name_the_value_and_what_is_allowed() -> None:
    assert _problem(int, "lots") == "expected an integer, got a string ('lots')"
    assert _problem(int, True) == "expected an integer, got a boolean (true)"
    assert _problem(str, 5) == "expected a string, got an integer (5); quote it to make it a string"
    assert _problem(float, float("nan")) == "nan is not a finite number"
    assert _problem(int, None) == "null is not allowed; expected an integer"
    assert _problem(Colour | None, "blue") == "'blue' is not allowed; choose one of: red, green, or null"
    assert _problem(Small, 10) == "10 is above the maximum 9"
    assert _problem(str, "", Rules(non_empty=True)) == "must not be empty"
    assert _problem(int, "x" * 100) == "expected an integer, got a string ('" + "x" * 36 + "...)"  # cut


def test_paths_point_inside_lists_and_mappings() -> None:
    assert _problem(list[Small], [1, -1]) == "[1]: -1 is below the minimum 0"
    assert _problem(dict[str, float], {"a": 1, "b": "x"}) == "['b']: expected a number, got a string ('x')"
    with pytest.raises(InvalidValue) as info:
        check(dict[str, list[int]], {"k": [0, "1"]})
    assert (info.value.path, info.value.problem) == ("['k'][1]", "expected an integer, got a string ('1')")


def test_json_schema_carries_the_rules() -> None:
    assert json_schema(Small | None) == {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]}
    assert json_schema(list[Colour]) == {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}}
    assert json_schema(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}
    with pytest.raises(TypeError):
        json_schema(set[int])
