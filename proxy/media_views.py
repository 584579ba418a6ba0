"""/v1 endpoints whose answer is not metered by a `usage` object: images, speech,
transcription, moderation, rerank, OCR. They share proxy.views' preflight, accounting steps,
upstream adapters and error handling; only the request body (JSON, or a spooled multipart form:
proxy.multipart) and the answer (metered whole by the endpoint's response meter, or audio relayed
chunk by chunk as it arrives) differ. Which endpoint does what is data: proxy.registry.
"""

import asyncio
import dataclasses
import tempfile
from collections.abc import Callable

from django.http import StreamingHttpResponse
from django.utils import timezone

from allocations.exceptions import BadRequest, GatewayError
from quota.exceptions import RequestTooLarge, UpstreamError
from quota.models import Outcome
from quota.pricing import Usage

from . import (
    accounting,
    bodies,
    multipart,
    simulated_media,  # noqa: F401 - registers the simulated provider's media answers
    transcripts,
    views,
)
from .registry import BODY_MULTIPART, ENDPOINTS, RESPONSE_BINARY, Endpoint

# Field shapes the meters rely on (everything else is the upstream's business and passes through).
SHAPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "prompt": (str, "a string"),
    "input": ((str, list), "a string or a list"),
    "query": (str, "a string"),
    "documents": (list, "a list"),
    "document": (dict, "an object"),
}


def check_fields(endpoint: Endpoint, body: dict) -> GatewayError | None:
    for name in endpoint.required:
        expected = SHAPES.get(name)
        if expected and not isinstance(body.get(name), expected[0]):
            return BadRequest(f"{name} must be {expected[1]}", fields={name: [f"Must be {expected[1]}."]})
    if endpoint.name == "audio.speech" and not isinstance(body.get("input"), str):
        return BadRequest("input must be a string", fields={"input": ["Must be a string."]})
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        return BadRequest("n must be a positive integer", fields={"n": ["Must be a positive integer."]})
    return None


async def read_form(request, endpoint: Endpoint):
    """(request dict, error, form): the spooled multipart body, parsed off the event loop."""
    if getattr(request, "gateway_body_too_large", False):
        return None, RequestTooLarge("the request body is larger than the gateway's limit"), None
    spool = getattr(request, "gateway_upload", None)
    if spool is None:  # served without proxy.handler (Django's test client): the buffered body
        spool = tempfile.SpooledTemporaryFile(max_size=multipart.SPOOL_MEMORY)  # noqa: SIM115
        spool.write(request.body)
    try:
        form = await asyncio.to_thread(multipart.parse_form, spool, request.headers.get("Content-Type", ""))
    except ValueError as exc:
        spool.close()
        return None, BadRequest(str(exc)), None
    body, error = await asyncio.to_thread(
        multipart.request_of, form, endpoint.required, endpoint.files, audio=endpoint.audio
    )
    return body, error, form


def upstream_payload(call: accounting.Call, form: multipart.Form | None):
    if form is None:
        return bodies.upstream_payload(call)
    body, entry = call.body, call.entry
    if body is None or entry is None:
        raise RuntimeError("upstream_payload before call_open")  # call_open sets both or raises
    fields = {"model": entry.upstream_name}
    asked = body.get("response_format")
    upstream_format = transcripts.upstream_format(asked, call.price) if call.endpoint.audio else None
    if upstream_format is not None:
        fields["response_format"], call.extra["client_format"] = upstream_format, asked or "json"
    call.extra["upstream_body"] = {**body, **fields}
    payload, length = form.encode(fields, append=("response_format",))
    call.extra["upstream_headers"] = {
        "Content-Type": f"multipart/form-data; boundary={form.boundary.decode('latin1')}",
        "Content-Length": str(length),
    }
    return payload


async def relay_media(request, endpoint: str):
    spec = ENDPOINTS[endpoint]
    rid = views.request_id_for(request)
    if request.method != "POST":
        if getattr(request, "gateway_upload", None) is not None:
            request.gateway_upload.close()
        return views.error_response(BadRequest(f"use POST for /v1/{spec.path}"), rid)
    form = None
    try:
        if spec.body == BODY_MULTIPART:
            body, body_error, form = await read_form(request, spec)
        else:
            body, body_error = bodies.parse_body(request, spec)
            if body_error is None and body is not None:
                body_error = check_fields(spec, body)
        call = accounting.Call(
            request_id=rid,
            endpoint=spec,
            started_at=timezone.now(),
            authorization=request.headers.get("Authorization", ""),
            body=body,
            body_error=body_error,
        )
        try:
            await views.open_call(call)
        except GatewayError as error:
            return views.error_response(error, rid)
        task = asyncio.ensure_future(_complete(call, upstream_payload(call, form), form))
        form = None  # the task closes it
    finally:
        if form is not None:
            form.close()
    views._background.add(task)
    task.add_done_callback(views._background.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        call.client_gone = True  # completed upstream and billed all the same (SPEC 4)
        raise


async def _complete(call: accounting.Call, payload, form: multipart.Form | None):
    try:
        reply, failed = await views._open_upstream(call, payload, lambda: upstream_payload(call, form))
        if failed is not None:
            return failed
        if call.endpoint.response == RESPONSE_BINARY:
            return _binary(call, reply)
        try:
            raw = await reply.read()
        finally:
            reply.close()
        return await _finish(call, reply, raw)
    except Exception as exc:  # noqa: BLE001 - every failure settles the call once
        outcome, error = views._transport_error(exc)
        await views.settle(
            call, outcome=outcome, status=error.status, usage=Usage(), code=error.code, message=error.message
        )
        return views.error_response(error, call.request_id)
    finally:
        if form is not None:
            form.close()


def _metering(call: accounting.Call) -> tuple[Callable[[dict, bytes], Usage], dict]:
    meter, body = call.endpoint.response_meter, call.body
    if meter is None or body is None:  # the registry gives media endpoints a meter; call_open a body
        raise RuntimeError(f"{call.endpoint.name}: no response meter or request body to meter")
    return meter, body


async def _finish(call: accounting.Call, reply, raw: bytes):
    meter, body = _metering(call)
    try:
        usage = meter(body, raw)
    except ValueError as exc:
        # The upstream may well have charged: bill the reservation's estimate, flagged as such.
        error = UpstreamError(f"the upstream answered with a body the gateway cannot meter ({exc})")
        usage = dataclasses.replace(call.endpoint.estimate(body), estimated=True)
        await views.settle(
            call, outcome=Outcome.UPSTREAM_ERROR, status=502, usage=usage, code=error.code, message=error.message
        )
        return views.error_response(error, call.request_id)
    outcome = Outcome.CLIENT_CANCELLED if call.client_gone else Outcome.SUCCESS
    await views.settle(call, outcome=outcome, status=reply.status, usage=usage)
    content_type = reply.content_type
    if "client_format" in call.extra and 200 <= reply.status < 300:
        converted = transcripts.for_client(call.extra["client_format"], raw)
        if converted is not None:
            raw, content_type = converted
    return views._response(raw, reply.status, content_type, call.request_id)


def _binary(call: accounting.Call, reply) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_chunks(call, reply), status=reply.status, content_type=reply.content_type)
    response["X-Request-Id"] = call.request_id
    return response


async def _chunks(call: accounting.Call, reply):
    """Audio relayed as it arrives; billed by the request (characters) however the relay ends."""
    meter, body = _metering(call)
    usage = meter(body, b"")
    outcome, status, code, message = Outcome.SUCCESS, reply.status, "", ""
    try:
        async for chunk in reply.chunks():
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        outcome, status = Outcome.CLIENT_CANCELLED, 499
        raise
    except Exception as exc:  # noqa: BLE001 - the client already has the headers: end the body
        _, error = views._transport_error(exc)
        outcome, code, message = Outcome.UPSTREAM_ERROR, error.code, f"the upstream failed mid-body: {error.message}"
    finally:
        reply.close()
        await views.settle(call, outcome=outcome, status=status, usage=usage, code=code, message=message)
