import datetime as dt
import json
from decimal import Decimal

import pytest

from lib.jsontext import jsonb_text, parsed_json_bytes, text_encoder

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


@pytest.mark.parametrize("options", OPTIONS)
def test_an_acyclic_encoder_writes_the_standard_text_value_after_value(options: dict) -> None:
    encode, standard = text_encoder(acyclic=True, **options), json.JSONEncoder(**options).encode
    for value in VALUES + VALUES:  # the one encoder kept, for every value in turn
        assert encode(value) == standard(value)


def test_an_acyclic_encoder_keeps_the_default_hook_and_its_errors_and_encodes_on() -> None:
    def hook(value: object) -> object:
        if isinstance(value, Decimal):
            return str(value)
        raise TypeError(f"{type(value).__name__} has no JSON form here")

    encode = text_encoder(default=hook, separators=(",", ":"), acyclic=True)
    value = {"cost": Decimal("1.50"), "rows": [[Decimal("2"), "x"]]}
    assert encode(value) == json.JSONEncoder(default=hook, separators=(",", ":")).encode(value)
    with pytest.raises(TypeError, match="datetime has no JSON form here"):
        encode([[1, {"at": dt.datetime(2026, 1, 1)}]])  # fails inside nested containers
    assert encode(value) == '{"cost":"1.50","rows":[["2","x"]]}'  # nothing left over from the failure


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


_COMPACT = text_encoder(ensure_ascii=False, separators=(",", ":"))
_NESTED: list = []
for _ in range(300):
    _NESTED = [_NESTED]
_BYTES = parsed_json_bytes(_COMPACT)


@pytest.mark.parametrize(
    "value",
    [
        *VALUES[:4],
        {"temperature": 0.1, "top_p": 1e-7, "big": 1e16, "n": -(2**63), "m": 2**64 - 1, "z": -0.0},
        {"text": 'é \u2028 😀 \x7f \x00\x1f "q" \\ </script>', "deep": [[[[{"a": [True, False]}]]]]},
    ],
)
def test_parsed_json_bytes_mean_the_standard_encoders_value(value: object) -> None:
    """orjson's bytes where they parse to what the standard text parses to (its form may differ)."""
    assert json.loads(_BYTES(value)) == json.loads(_COMPACT(value))


@pytest.mark.parametrize(
    "value",
    [
        {"stop": None, "x": 1},  # orjson writes NaN as null: a text with a null is the standard one
        {"temperature": float("nan")},
        [float("inf"), float("-inf")],
        {"n": 2**64},  # beyond 64 bits
        {1: "int key", None: "none key"},
        _NESTED,  # beyond orjson's 254 levels
        {"at": dt.datetime(2026, 1, 1)},
    ],
)
def test_parsed_json_bytes_are_the_standard_text_where_orjson_means_another_value_or_refuses(value: object) -> None:
    try:
        expected = _COMPACT(value).encode()
    except TypeError as error:
        with pytest.raises(TypeError, match=str(error)):
            _BYTES(value)
    else:
        assert _BYTES(value) == expected


def test_parsed_json_bytes_of_a_lone_surrogate_fail_as_the_standard_texts_encoding() -> None:
    with pytest.raises(UnicodeEncodeError):
        _COMPACT("\ud800").encode()
    with pytest.raises(UnicodeEncodeError):
        _BYTES("\ud800")


_CONTEXT_STD = text_encoder(separators=(",", ":"))
_CONTEXT = jsonb_text(_CONTEXT_STD)


class _Text(str):
    pass


class _Count(int):
    pass


JSONB_VALUES = [
    {
        "record": {
            "request_id": "req_0123",
            "endpoint": _Text("chat"),
            "started_at": "2026-12-07T09:58:00.123456+00:00",
            "is_stream": False,
            "api_key_id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "model_id": _Count(12),
            "deployment_id": None,
            "attempts": 0,
        },
        "usage": {"input_tokens": 12, "output_tokens": 2**63 - 1, "estimated": True, "quantity": "1.500"},
        "price_id": None,
    },
    {"usage": {"tool_calls": (("web_search", 2), ("file_search", 1)), "service_tier": "flex"}, "price_id": 7},
    {"text": 'é \u2028 😀 \x7f \x1f "q" \\ </script>', "deep": [[[[{"a": [True, False, -(2**63)]}]]]]},
    {},
]


@pytest.mark.django_db
@pytest.mark.parametrize("value", JSONB_VALUES)
def test_jsonb_text_is_the_standard_texts_jsonb(value: object) -> None:
    """PostgreSQL keeps the same jsonb from either text (orjson's compact, unescaped form)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s::jsonb = %s::jsonb, %s::jsonb::text", [_CONTEXT(value), _CONTEXT_STD(value), _CONTEXT(value)]
        )
        same, text = cursor.fetchone()
    assert same
    assert json.loads(text) == json.loads(_CONTEXT_STD(value))


@pytest.mark.parametrize(
    "value",
    [
        {"n": 2**64},  # beyond 64 bits
        {1: "int key", None: "none key"},
        _NESTED,  # beyond orjson's 254 levels
        {"at": dt.datetime(2026, 1, 1)},
        "\ud800",  # a lone surrogate: the standard text's escape
    ],
)
def test_jsonb_text_is_the_standard_text_or_error_where_orjson_refuses(value: object) -> None:
    try:
        expected = _CONTEXT_STD(value)
    except TypeError as error:
        with pytest.raises(TypeError, match=str(error)):
            _CONTEXT(value)
    else:
        assert _CONTEXT(value) == expected
