"""A /v1 request's JSON body: parsed and checked (SPEC 3 step 2, with the cost-bearing options the
body alone refuses: proxy.options), and the body sent upstream."""

import json

from allocations.exceptions import BadRequest, GatewayError
from lib.json_depth import MAX_JSON_DEPTH as MAX_JSON_DEPTH  # the rule's one definition
from lib.json_depth import TOO_DEEP, json_depth_fits
from quota.exceptions import RequestTooLarge

from . import accounting, options
from .registry import Endpoint


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
        return None, BadRequest(TOO_DEEP)
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
