"""A /v1 request's body, both ways: the endpoint's body reader (SPEC 3 step 2: a JSON object with
its required fields, the cost-bearing options the body alone refuses (quota.options), or a spooled
multipart form: proxy.multipart) and its upstream builder (the body sent, with the deployment's
model name). Which endpoint uses which is declared in proxy.registry.
"""

import asyncio
import json
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest

from allocations.exceptions import BadRequest, GatewayError
from lib.frozen import quick_init
from lib.json_depth import MAX_JSON_DEPTH as MAX_JSON_DEPTH  # the rule's one definition
from lib.json_depth import TOO_DEEP, json_depth_fits
from lib.jsontext import parsed_json_bytes, text_encoder
from quota import options
from quota.exceptions import RequestTooLarge

from . import multipart, transcripts

# json.dumps(value, ensure_ascii=False, separators=(",", ":")) without an encoder made per call
# (dumps reuses its own only with every option at its default), from the C encoder: the same text.
encode_compact = text_encoder(ensure_ascii=False, separators=(",", ":"))
# The upstream body: the upstream parses it, so orjson's bytes where they mean the same request.
upstream_bytes = parsed_json_bytes(encode_compact)

if TYPE_CHECKING:
    from allocations.access import ScopedAllocation

    from .accounting import Call
    from .registry import Endpoint


@quick_init
@dataclass(frozen=True)
class Read:
    """What a body reader found: the request as a dict, a refusal, and a spooled upload."""

    body: dict | None
    error: GatewayError | None = None
    form: multipart.Form | None = None


@quick_init
@dataclass(frozen=True)
class Outgoing:
    """The upstream request as built for one deployment."""

    body: dict  # the request as sent (the simulated provider and the meters read it)
    payload: Any  # bytes, or an async iterator of a multipart upload
    headers: dict[str, str] | None = None  # a multipart upload's Content-Type and -Length
    strip_usage: bool = False  # chat streams: the forced usage chunk is not the client's
    client_format: str | None = None  # transcriptions: the format the client asked for, converted back


# --- readers ---------------------------------------------------------------------------------


def parse_body(request: HttpRequest, endpoint: "Endpoint") -> tuple[dict | None, GatewayError | None]:
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


async def read_json(request: HttpRequest, endpoint: "Endpoint") -> Read:
    """Chat, Responses, embeddings: the JSON body."""
    body, error = parse_body(request, endpoint)
    return Read(body, error)


# Field shapes the media meters rely on (everything else is the upstream's business and passes through).
SHAPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "prompt": (str, "a string"),
    "input": ((str, list), "a string or a list"),
    "query": (str, "a string"),
    "documents": (list, "a list"),
    "document": (dict, "an object"),
}


def check_fields(endpoint: "Endpoint", body: dict) -> GatewayError | None:
    for name in endpoint.required:
        expected = SHAPES.get(name)
        if expected and not isinstance(body.get(name), expected[0]):
            return BadRequest(f"{name} must be {expected[1]}", fields={name: [f"Must be {expected[1]}."]})
    if endpoint.text_input and not isinstance(body.get("input"), str):
        return BadRequest("input must be a string", fields={"input": ["Must be a string."]})
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        return BadRequest("n must be a positive integer", fields={"n": ["Must be a positive integer."]})
    return None


async def read_media_json(request: HttpRequest, endpoint: "Endpoint") -> Read:
    """Images, speech, moderation, rerank, OCR: the JSON body, with the shapes their meters read."""
    body, error = parse_body(request, endpoint)
    if error is None and body is not None:
        error = check_fields(endpoint, body)
    return Read(body, error)


async def read_form(request: HttpRequest, endpoint: "Endpoint") -> Read:
    """Image edits, transcriptions: the spooled multipart body, parsed off the event loop."""
    if getattr(request, "gateway_body_too_large", False):
        return Read(None, RequestTooLarge("the request body is larger than the gateway's limit"))
    spool = getattr(request, "gateway_upload", None)
    if spool is None:  # served without proxy.handler (Django's test client): the buffered body
        spool = tempfile.SpooledTemporaryFile(max_size=multipart.SPOOL_MEMORY)  # noqa: SIM115
        spool.write(request.body)
    try:
        form = await asyncio.to_thread(multipart.parse_form, spool, request.headers.get("Content-Type", ""))
    except ValueError as exc:
        spool.close()
        return Read(None, BadRequest(str(exc)))
    body, error = await asyncio.to_thread(
        multipart.request_of, form, endpoint.required, endpoint.files, audio=endpoint.audio
    )
    return Read(body, error, form)


# --- builders --------------------------------------------------------------------------------


def build_json(call: "Call") -> Outgoing:
    """The client's body (less what admission removed) with the deployment's model name; a chat
    stream asks for its usage chunk."""
    request, entry = call.outgoing, call.entry
    if request is None or entry is None:
        raise RuntimeError("upstream body before admission")  # admission sets both or refuses
    return json_outgoing(request, entry, stream=call.stream, endpoint=call.endpoint)


def json_outgoing(request: dict, entry: "ScopedAllocation", *, stream: bool, endpoint: "Endpoint") -> Outgoing:
    """build_json's request from its parts: a function of them alone (proxy.views builds it ahead,
    while the admission is decided)."""
    body = {**request, "model": entry.upstream_name}
    strip_usage = False
    if stream and endpoint.force_stream_usage:
        stream_options = request.get("stream_options")
        stream_options = stream_options if isinstance(stream_options, dict) else {}
        strip_usage = stream_options.get("include_usage") is not True
        body["stream_options"] = {**stream_options, "include_usage": True}
    return Outgoing(body, upstream_bytes(body), strip_usage=strip_usage)


def build_form(call: "Call") -> Outgoing:
    """The spooled upload re-encoded with the deployment's model name (and, for audio billed by
    its duration, a response format that reports it: proxy.transcripts)."""
    body, entry, form = call.plan.body, call.entry, call.form
    if body is None or entry is None or form is None:
        raise RuntimeError("upstream form before admission")  # admission sets them or refuses
    fields = {"model": entry.upstream_name}
    asked = body.get("response_format")
    upstream_format = transcripts.upstream_format(asked, call.price) if call.endpoint.audio else None
    client_format = None
    if upstream_format is not None:
        fields["response_format"], client_format = upstream_format, asked or "json"
    payload, length = form.encode(fields, append=("response_format",))
    headers = {
        "Content-Type": f"multipart/form-data; boundary={form.boundary.decode('latin1')}",
        "Content-Length": str(length),
    }
    return Outgoing({**body, **fields}, payload, headers, client_format=client_format)
