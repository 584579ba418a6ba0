"""The two log formatters' exact text for a call line: what a log shipper or a terminal reads."""

import json
import logging
import uuid
from decimal import Decimal

from ops.logs import JsonFormatter, TextFormatter

FIELDS = {
    "request_id": "rid-1",
    "allocation_id": None,
    "status": 200,
    "stream": False,
    "cached_tokens": 0,
    "unit": "",
    "cost_usd": Decimal("0.000012345"),  # not JSON: written as its str
    "key": uuid.UUID(int=7),
    "gateway_ms": 0.8,
    "upstream_ms": 12.0,
}


def record(fields=None, exc_info=None):
    made = logging.LogRecord("gateway.calls", logging.INFO, "", 0, "call", (), exc_info)
    made.created, made.msecs = 1_765_000_000.25, 250.0
    if fields is not None:
        made.gateway_fields = fields
    return made


def test_the_json_line_is_compact_with_every_field_and_str_for_the_rest():
    expected = {"time": "2025-12-06T05:46:40.250+00:00", "level": "info", "logger": "gateway.calls", "message": "call"}
    line = JsonFormatter().format(record(FIELDS))
    assert line == json.dumps({**expected, **FIELDS}, default=str, separators=(",", ":"))
    assert '"cost_usd":"0.000012345"' in line and '"allocation_id":null' in line and ", " not in line
    assert JsonFormatter().format(record()) == json.dumps(expected, separators=(",", ":"))


def test_the_json_line_carries_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = json.loads(JsonFormatter().format(record(exc_info=sys.exc_info())))
    assert line["exception"].startswith("Traceback") and "ValueError: boom" in line["exception"]


def test_the_text_line_leaves_out_empty_fields_in_their_order():
    text = TextFormatter().format(record(FIELDS))
    assert text == (
        "call request_id=rid-1 status=200 stream=False cached_tokens=0 cost_usd=0.000012345 "
        "key=00000000-0000-0000-0000-000000000007 gateway_ms=0.8 upstream_ms=12.0"
    )
    assert TextFormatter().format(record()) == "call"
