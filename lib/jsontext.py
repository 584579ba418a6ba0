"""JSON text as `json.JSONEncoder(...).encode` writes it, from the C encoder called directly.

`JSONEncoder.encode` runs two Python frames per value (`encode`, `iterencode`, which also defines a
float formatter the C encoder never uses) before the C encoder makes the text: ~4 k instructions
of a ~20 k encoding of a small request body on CPython 3.11. The encoder here makes the same C
encoder, with the same arguments (a fresh circular-reference table per value included), and joins
its pieces as `encode` does. Without the C accelerator it is `JSONEncoder.encode` itself."""

import json
from collections.abc import Callable
from json import encoder as _std
from typing import Any

import orjson


def text_encoder(
    *,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
    default: Callable | None = None,
    acyclic: bool = False,
) -> Callable[[Any], str]:
    """`json.JSONEncoder(ensure_ascii=…, separators=…, default=…).encode`, the same text and errors.

    `acyclic`: for values that cannot hold themselves (what a JSON decoder made, rows the caller
    builds): one C encoder made once and kept, without the table of containers being written that
    finds a cycle (made per value, and an entry added and removed per container). The same text; a
    value that did hold itself would end in RecursionError rather than ValueError."""
    reference = json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators, default=default)
    make = getattr(_std, "c_make_encoder", None)  # None without the accelerator (not in typeshed)
    if make is None:
        return reference.encode
    strings = getattr(_std, "c_encode_basestring_ascii" if ensure_ascii else "c_encode_basestring")
    hook = reference.default
    item, key = separators
    if acyclic:
        kept = make(None, hook, strings, None, key, item, False, False, True)

        def encode_acyclic(value: Any, _join: Callable = "".join) -> str:
            return _join(kept(value, 0))

        return encode_acyclic

    def encode(value: Any, _join: Callable = "".join) -> str:
        return _join(make({}, hook, strings, None, key, item, False, False, True)(value, 0))

    return encode


def parsed_json_bytes(fallback: Callable[[Any], str]) -> Callable[[Any], bytes]:
    """JSON bytes for a reader that parses them (an upstream's request body) of a value made of the
    JSON types (as the standard decoder makes them): orjson's where its text means the same value as
    `fallback`'s (~10 times faster), else `fallback`'s text in UTF-8.

    orjson's text may differ from the standard encoder's in form only (a float in its shortest form
    either way, written otherwise: `1e16`, not `1e+16`; the same escapes or fewer), but it writes
    NaN and the infinities as `null` where the standard encoder writes `NaN` and `Infinity` (which
    the standard decoder accepts from a client): a text with a `null` in it is made by `fallback`.
    What orjson refuses (an integer beyond 64 bits, a key not a string, a lone surrogate, nesting
    beyond 254 levels), and a subclass, a time or a dataclass (passed through to no default), is
    made by `fallback` too, with its text or its error."""
    dumps, refused = orjson.dumps, orjson.JSONEncodeError
    passed = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

    def encode(value: Any) -> bytes:
        try:
            text = dumps(value, option=passed)
        except refused:
            return fallback(value).encode()
        # `find`, not `in`: `bytes in bytes` makes and drops a TypeError (its operand tried as an int)
        return text if text.find(b"null") < 0 else fallback(value).encode()

    return encode


def jsonb_text(fallback: Callable[[Any], str]) -> Callable[[Any], str]:
    """JSON text that PostgreSQL reads as jsonb, of a value made of str, int, bool, None, dicts with
    str keys, lists and tuples, and no float (a reservation's context: ids, text, flags and counts,
    a quantity as text): orjson's (~10 times faster), else `fallback`'s text or error.

    jsonb keeps a value, not its text: orjson's compact form and its raw UTF-8 where `fallback`
    writes `\\uXXXX` escapes give the same jsonb. Subclasses of str, int, dict and list are written
    by value, as the standard encoder writes them. A float is not meant for it: orjson writes NaN
    and the infinities as `null`, which `fallback` writes as text that jsonb refuses. What orjson
    refuses (an integer beyond 64 bits, a key not a string, a lone surrogate, nesting beyond 254
    levels), and a time or a dataclass, is `fallback`'s, with its text or its error."""
    dumps, refused = orjson.dumps, orjson.JSONEncodeError
    passed = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

    def encode(value: Any) -> str:
        try:
            return dumps(value, option=passed).decode()
        except refused:
            return fallback(value)

    return encode
