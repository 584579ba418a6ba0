"""A /v1 request's JSON body: parsed and checked (SPEC 3 step 2, with the cost-bearing options the
body alone refuses: proxy.options), and the body sent upstream."""

import json

from allocations.exceptions import BadRequest, GatewayError
from quota.exceptions import RequestTooLarge

from . import accounting, options
from .registry import Endpoint

MAX_JSON_DEPTH = 128  # far past any real request (JSON schemas nest a few dozen levels)


def parse_body(request, endpoint: Endpoint) -> tuple[dict | None, GatewayError | None]:
    if getattr(request, "gateway_body_too_large", False):
        return None, RequestTooLarge("the request body is larger than the gateway's limit")
    try:
        body = json.loads(request.body)
        too_deep = not json_depth_fits(request.body, body)
    except (ValueError, UnicodeDecodeError):
        return None, BadRequest("the request body is not valid JSON")
    except RecursionError:
        too_deep = True
    if too_deep:
        return None, BadRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict):
        return None, BadRequest("the request body must be a JSON object")
    missing = [name for name in endpoint.required if body.get(name) is None]
    if missing:
        return body, BadRequest(
            f"missing required field(s): {', '.join(missing)}", fields={n: ["This field is required."] for n in missing}
        )
    if not isinstance(body["model"], str):
        return body, BadRequest("model must be a string", fields={"model": ["Must be a string."]})
    if (option_error := options.body_error(endpoint.name, body)) is not None:
        return body, option_error
    stream = body.get("stream", False)
    if stream not in (True, False, None) or (stream and endpoint.stream_meter is None):
        return body, BadRequest("stream is not supported here" if stream else "stream must be a boolean")
    return body, None


def json_depth_fits(raw: bytes, value) -> bool:
    """Whether parsed JSON nests at most MAX_JSON_DEPTH deep, so that encoding it again (and any
    walk over it) stays far from the interpreter's recursion limit. Walked only when the body has
    enough brackets to be that deep, which a typical request does not."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return True
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def upstream_payload(call: accounting.Call) -> bytes:
    request, entry = call.outgoing, call.entry
    if request is None or entry is None:
        raise RuntimeError("upstream_payload before call_open")  # call_open sets both or raises
    body = {**request, "model": entry.upstream_name}
    if call.stream and call.endpoint.force_stream_usage:
        options = request.get("stream_options")
        options = options if isinstance(options, dict) else {}
        call.extra["strip_usage"] = options.get("include_usage") is not True
        body["stream_options"] = {**options, "include_usage": True}
    call.extra["upstream_body"] = body
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
