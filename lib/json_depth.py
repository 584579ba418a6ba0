"""How deep a JSON request body may nest, for every JSON interface: `/v1` (proxy.bodies) and the
admin and member APIs (DepthLimitedJSONParser).

Python's json module recurses once per level: a body of a few kilobytes of brackets exhausts the
interpreter's recursion limit (RecursionError) while it is parsed, encoded again or walked. A body
deeper than MAX_JSON_DEPTH is a client error (400), whatever reads it.
"""

import io
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

MAX_JSON_DEPTH = 128  # far past any real request (JSON schemas nest a few dozen levels)
TOO_DEEP = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"


def json_depth_fits(raw: bytes, value: Any) -> bool:
    """Whether parsed JSON nests at most MAX_JSON_DEPTH deep, so that encoding it again (and any
    walk over it) stays far from the interpreter's recursion limit. Walked only when the body has
    enough brackets to be that deep, which a typical request does not."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return True
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser with the depth rule: too deep is a ParseError (400 in the API envelope)."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        raw = stream.read()
        try:
            value = super().parse(io.BytesIO(raw), media_type, parser_context)
            fits = json_depth_fits(raw, value)
        except RecursionError:
            fits = False
        if not fits:
            raise ParseError(TOO_DEEP)
        return value


API_PARSERS = [DepthLimitedJSONParser, FormParser, MultiPartParser]  # DRF's defaults, JSON depth-limited
