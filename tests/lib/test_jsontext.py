import datetime as dt
import json
from decimal import Decimal

import pytest

from lib.jsontext import text_encoder

VALUES = [
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 'héllo \u2028 "q" \\ \n\t'}]},
    [1, 2.5, -0.0, 1e300, True, False, None, "", [], {}],
    "a top-level string: é",
    42,
    float("nan"),
    [float("inf"), float("-inf")],
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    {"nested": {"deep": [[[{"x": "\x00\x1f"}]]]}},
    "\ud800",  # a lone surrogate
]
OPTIONS = [
    {},
    {"ensure_ascii": False},
    {"separators": (",", ":")},
    {"ensure_ascii": False, "separators": (",", ":")},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("value", VALUES)
def test_the_text_of_the_standard_encoder(options: dict, value: object) -> None:
    assert text_encoder(**options)(value) == json.JSONEncoder(**options).encode(value)


def test_the_default_hook_and_its_errors() -> None:
    def hook(value: object) -> object:
        if isinstance(value, Decimal):
            return str(value)
        raise TypeError(f"{type(value).__name__} has no JSON form here")

    ours, standard = text_encoder(default=hook), json.JSONEncoder(default=hook).encode
    value = {"cost": Decimal("1.50"), "n": [Decimal("2")]}
    assert ours(value) == standard(value)
    with pytest.raises(TypeError, match="datetime has no JSON form here"):
        ours({"at": dt.datetime(2026, 1, 1)})
    with pytest.raises(TypeError, match="Object of type datetime is not JSON serializable"):
        text_encoder()({"at": dt.datetime(2026, 1, 1)})


def test_a_circular_value_is_refused_and_the_next_one_encoded() -> None:
    encode = text_encoder()
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference detected"):
        encode(loop)
    shared = [1]
    assert encode([shared, shared]) == "[[1], [1]]"  # a value seen twice is not a cycle
