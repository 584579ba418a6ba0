"""/v1 views: plain async Django views (no DRF: see docs/PERFORMANCE.md for why), served by
proxy.handler without middleware. Each call: one accounting step to open (preflight + admission),
the upstream call with no transaction or connection held, one accounting step to close."""

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone

from allocations.exceptions import BadRequest, GatewayError, NotFound
from allocations.models import Allocation
from lib import inflight
from lib.api_errors import error_body
from lib.http import request_id_of as request_id_for
from quota import routing
from quota.billing import bill as billing
from quota.exceptions import RateLimited, UpstreamError, UpstreamTimeout
from quota.ledger import threads
from quota.models import Outcome
from quota.pricing import Usage

from . import accounting, failover, meters, observed, options, relay, response_ids, tools, upstream
from .bodies import parse_body, upstream_payload
from .registry import ENDPOINTS

logger = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Strong references: an upstream call finishes even when its request is gone.
_background = inflight.tasks("upstream calls")


def error_response(error: GatewayError, request_id: str) -> HttpResponse:
    body = error_body(
        code=error.code, message=error.message, type_=error.type, request_id=request_id, fields=error.fields
    )
    response = HttpResponse(json.dumps(body), status=error.status, content_type="application/json")
    response["X-Request-Id"] = request_id
    retry_after = getattr(error, "retry_after", None)  # QuotaBusy, TooManyAuthFailures
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


async def settle(call: accounting.Call, *, outcome: str, status: int, usage: Usage, code: str = "", message: str = ""):
    """Exactly once per call, and to the end even if the request task is cancelled meanwhile."""
    usage = billing.billed_usage(facts=options.facts(call.endpoint.name, call.outgoing), usage=usage)
    task = accounting.close_once(
        call, outcome=outcome, status_code=status, usage=usage, error_code=code, error_message=message
    )
    if task is not None:
        observed.settled(call, outcome=outcome, status=status, usage=usage, code=code)
        await asyncio.shield(task)


async def open_call(call: accounting.Call) -> None:
    """The opening accounting step, reported (a refusal raises its GatewayError as before)."""
    try:
        await accounting.open_call(call)
    except GatewayError as error:
        observed.refused(call, error)
        raise
    observed.admitted(call)


# --- views ---------------------------------------------------------------------------------------


async def relay_call(request, endpoint: str):
    spec = ENDPOINTS[endpoint]
    rid = request_id_for(request)
    if request.method != "POST":
        return error_response(BadRequest(f"use POST for /v1/{spec.path}"), rid)
    body, body_error = parse_body(request, spec)
    call = accounting.Call(
        request_id=rid,
        endpoint=spec,
        started_at=timezone.now(),
        authorization=request.META.get("HTTP_AUTHORIZATION", ""),
        body=body,
        body_error=body_error,
        stream=bool(body and body.get("stream") is True and body_error is None),
    )
    try:
        await open_call(call)
    except GatewayError as error:
        return error_response(error, rid)
    response = await _relay_admitted(call)
    if call.removed:
        response[tools.REMOVED_HEADER] = ",".join(call.removed)
    return response


async def _relay_admitted(call: accounting.Call):
    if call.endpoint.name == "responses" and (refused := await _foreign_response_refused(call)) is not None:
        return refused
    payload = upstream_payload(call)
    if call.stream:
        return await _stream(call, payload)
    task = asyncio.ensure_future(_complete(call, payload))
    _background.add(task)
    task.add_done_callback(_background.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # The client went away: the upstream call still completes and is billed (SPEC 4).
        call.client_gone = True
        raise


async def _foreign_response_refused(call: accounting.Call) -> HttpResponse | None:
    """404 for a `previous_response_id` this member did not create through the gateway."""
    member = call.scope.member_id if call.scope else None
    try:
        await response_ids.check((call.body or {}).get("previous_response_id"), member)
    except GatewayError as error:
        await settle(
            call, outcome=Outcome.REJECTED_BAD_REQUEST, status=error.status, usage=Usage(), code=error.code,
            message=error.message,
        )  # fmt: skip
        return error_response(error, call.request_id)
    return None


async def _remember_response(call: accounting.Call, response_id: object) -> None:
    if call.endpoint.name == "responses" and response_id is not None:
        await response_ids.remember(response_id, call.scope.member_id if call.scope else None)


RETRY = object()  # _attempt: this deployment failed in a way the next one may not


async def _open_upstream(call: accounting.Call, payload, rebuild=None):
    """(reply, None) or (None, the error response after settling). Tries the model's deployments
    in routing order (quota.routing): a connect error, a timeout before the answer's head, a 429,
    a 5xx or a 401/403 moves the call to the next one, at most GATEWAY_FAILOVER_ATTEMPTS times;
    `rebuild()` makes the payload again for a deployment with another upstream name."""
    entry = call.entry
    if entry is None:
        raise RuntimeError("upstream call before call_open")  # call_open sets it or raises
    candidates = await routing.plan(entry)
    budget, sent_name = 1 + settings.GATEWAY_FAILOVER_ATTEMPTS, entry.upstream_name
    for index, deployment in enumerate(candidates):
        taken = await routing.limit_take(deployment, tokens=call.estimate.input_tokens + call.estimate.output_tokens)
        if taken is False:
            continue
        if not isinstance(taken, bool):
            call.extra["deployment_ticket"] = taken
        call.entry = routing.routed(entry, deployment)
        # Bytes are sent again as they are; a streamed upload (an iterator) is spent by its attempt.
        moved = call.entry.upstream_name != sent_name or (call.attempts and not isinstance(payload, bytes))
        if rebuild is not None and moved:
            payload, sent_name = rebuild(), call.entry.upstream_name
        budget -= 1
        call.attempts += 1
        last = budget == 0 or index == len(candidates) - 1
        result = await _attempt(call, payload, last=last)
        if result is not RETRY:
            return result
        if budget == 0:
            break
    error: GatewayError = RateLimited("every deployment of this model is at its rate limit", retry_after=1)
    outcome = Outcome.REJECTED_RATE_LIMITED
    if call.attempts:  # the deployments left after a failed attempt were all at their limits
        error, outcome = UpstreamError("no deployment of this model could serve the call"), Outcome.UPSTREAM_ERROR
    await settle(call, outcome=outcome, status=error.status, usage=Usage(), code=error.code, message=error.message)
    return None, error_response(error, call.request_id)


async def _attempt(call: accounting.Call, payload, *, last: bool):
    entry = call.entry
    if entry is None:
        raise RuntimeError("upstream attempt before routing")  # _open_upstream sets it
    observed.upstream_sent(call)
    try:
        reply = await upstream.send(
            entry=entry,
            endpoint=call.endpoint,
            body=call.extra["upstream_body"],
            payload=payload,
            request_id=call.request_id,
            headers=call.extra.get("upstream_headers"),  # multipart uploads
        )
    except GatewayError as error:
        await failover.attempt_failed(call, reason=error.code, retry_after=None)
        if not last:
            return RETRY
        await settle(
            call,
            outcome=Outcome.UPSTREAM_ERROR,
            status=error.status,
            usage=Usage(),
            code=error.code,
            message=error.message,
        )
        return None, error_response(error, call.request_id)
    if reply.status < 300:
        return reply, None
    if failover.moves(reply.status):
        await failover.attempt_failed(call, reason=str(reply.status), retry_after=reply.retry_after)
        if not last:
            reply.close()
            return RETRY
    return await _upstream_refused(call, reply)


async def _upstream_refused(call: accounting.Call, reply):
    """The last attempt's non-2xx answer: a 5xx (or 3xx) as 502, a 4xx relayed."""
    try:
        raw = await reply.read()
    except Exception:  # noqa: BLE001 - a broken error body is still an upstream error
        raw = b""
    finally:
        reply.close()
    code, message = upstream.upstream_error_detail(raw, reply.secrets)
    if reply.status >= 500 or reply.status < 400:  # a 3xx: redirects are not followed
        failure = UpstreamError(f"the upstream failed with status {reply.status}: {message}")
        await settle(
            call, outcome=Outcome.UPSTREAM_ERROR, status=502, usage=Usage(), code=failure.code, message=failure.message
        )
        return None, error_response(failure, call.request_id)
    # Upstream 4xx: relayed with its status and (redacted) error body.
    await settle(
        call,
        outcome=Outcome.UPSTREAM_ERROR,
        status=reply.status,
        usage=Usage(),
        code=code or "upstream_error",
        message=message,
    )
    body = upstream.redact(raw.decode("utf-8", "replace"), reply.secrets).encode() if reply.secrets else raw
    return None, _response(body, reply.status, reply.content_type, call.request_id)


def _response(body: bytes, status: int, content_type: str, request_id: str) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=content_type)
    response["Content-Length"] = str(len(body))
    response["X-Request-Id"] = request_id
    return response


async def _complete(call: accounting.Call, payload: bytes) -> HttpResponse:
    try:
        reply, failed = await _open_upstream(call, payload, functools.partial(upstream_payload, call))
        if failed is not None:
            return failed
        try:
            body = await reply.read()
        finally:
            reply.close()
        return await _finish_json(call, reply, body)
    except Exception as exc:  # noqa: BLE001 - every failure settles the call once, answered in the envelope
        error = _transport_error(exc)
        await settle(
            call, outcome=error[0], status=error[1].status, usage=Usage(), code=error[1].code, message=error[1].message
        )
        return error_response(error[1], call.request_id)


def _transport_error(exc: BaseException) -> tuple[str, GatewayError]:
    if isinstance(exc, TimeoutError):
        return Outcome.UPSTREAM_ERROR, UpstreamTimeout("the upstream stopped answering")
    if isinstance(exc, GatewayError):
        return Outcome.UPSTREAM_ERROR, exc
    if type(exc).__module__.startswith("aiohttp"):
        return Outcome.UPSTREAM_ERROR, UpstreamError(f"the upstream connection failed ({type(exc).__name__})")
    return Outcome.GATEWAY_ERROR, GatewayError("the gateway failed to complete the call")


async def _finish_json(call: accounting.Call, reply, body: bytes) -> HttpResponse:
    endpoint = call.endpoint
    whole = options.answer_read_whole(endpoint.name, call.outgoing, call.price)
    answer = meters.read_answer(body, answer_meter=endpoint.answer_meter if whole else None, usage_meter=endpoint.meter)
    outcome = Outcome.CLIENT_CANCELLED if call.client_gone else Outcome.SUCCESS
    if endpoint.name == "responses":  # before the answer: its id may be continued at once
        await _remember_response(call, answer.id)
    if answer.usage is not None:
        await settle(call, outcome=outcome, status=reply.status, usage=answer.usage)
        return _response(body, reply.status, reply.content_type, call.request_id)
    if not answer.is_json:
        error = UpstreamError("the upstream answered with a body that is not JSON")
        usage = Usage(input_tokens=call.prompt_tokens, estimated=True)
        await settle(
            call, outcome=Outcome.UPSTREAM_ERROR, status=502, usage=usage, code=error.code, message=error.message
        )
        return error_response(error, call.request_id)
    # Valid answer without usage (some OpenAI-compatible servers): billed on an estimate.
    usage = dataclasses.replace(
        answer.extras, input_tokens=call.prompt_tokens, output_tokens=meters.tokens_for_text(len(body)), estimated=True
    )
    await settle(call, outcome=outcome, status=reply.status, usage=usage)
    return _response(body, reply.status, reply.content_type, call.request_id)


async def _stream(call: accounting.Call, payload: bytes):
    try:
        reply, failed = await _open_upstream(call, payload, functools.partial(upstream_payload, call))
    except asyncio.CancelledError:
        await settle(call, outcome=Outcome.CLIENT_CANCELLED, status=499, usage=Usage())
        raise
    except Exception as exc:  # noqa: BLE001 - every failure to reach upstream settles the call once
        outcome, error = _transport_error(exc)
        await settle(call, outcome=outcome, status=error.status, usage=Usage(), code=error.code, message=error.message)
        return error_response(error, call.request_id)
    if failed is not None:
        return failed
    if not reply.is_event_stream:  # the upstream ignored `stream`: relay its JSON answer
        try:
            body = await reply.read()
        finally:
            reply.close()
        return await _finish_json(call, reply, body)
    response = StreamingHttpResponse(_events(call, reply), status=reply.status, content_type=reply.content_type)
    for name, value in SSE_HEADERS.items():
        response[name] = value
    response["X-Request-Id"] = call.request_id
    return response


async def _events(call: accounting.Call, reply):
    stream_meter = call.endpoint.stream_meter
    if stream_meter is None:
        raise RuntimeError("stream on an endpoint without a stream meter")  # parse_body refuses it
    meter = stream_meter(call.prompt_tokens)
    responses = call.endpoint.name == "responses"
    handler = (
        relay.ResponsesRelay(meter)
        if responses
        else relay.ChatRelay(meter, strip_usage=call.extra.get("strip_usage", False))
    )
    splitter = relay.EventSplitter()
    outcome, code, message = Outcome.SUCCESS, "", ""
    drain = False
    try:
        async for chunk in reply.chunks():
            out = [e + b"\n\n" for e in map(handler.event, splitter.feed(chunk)) if e is not None]
            if out:
                yield b"".join(out)
        rest = splitter.rest()
        if rest and (tail := handler.event(rest)) is not None:
            yield tail + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        outcome = Outcome.CLIENT_CANCELLED
        # A background response goes on upstream when its client leaves (and is billed): it is
        # read to its end, off this request, and billed from the usage it reports.
        drain = responses and (call.body or {}).get("background") not in (None, False)
        raise
    except Exception as exc:  # noqa: BLE001 - any upstream failure mid-stream ends the stream
        _, error = _transport_error(exc)
        outcome, code, message = Outcome.UPSTREAM_ERROR, error.code, f"the upstream failed mid-stream: {error.message}"
        body = error_body(code=error.code, message=message, type_=error.type, request_id=call.request_id)
        yield relay.error_event(responses=responses, body=body)
    finally:
        if drain:
            task = asyncio.ensure_future(_drain(call, reply, handler, splitter))
            _background.add(task)
            task.add_done_callback(_background.discard)
        else:
            await _stream_end(call, reply, handler, outcome=outcome, code=code, message=message)


async def _stream_end(call: accounting.Call, reply, handler, *, outcome: str, code: str, message: str) -> None:
    """A relayed stream's settlement: from the usage it reported, else an estimate (SPEC 4)."""
    reply.close()
    meter = handler.meter
    usage = meter.result()
    if outcome == Outcome.SUCCESS and meter.usage is None:
        outcome, code = Outcome.UPSTREAM_ERROR, "upstream_error"
        message = "malformed event stream from the upstream" if meter.malformed else "the stream ended without usage"
    elif outcome == Outcome.SUCCESS and getattr(handler, "failed", False):
        outcome, code, message = Outcome.UPSTREAM_ERROR, "upstream_error", "the upstream reported response.failed"
    status = 499 if outcome == Outcome.CLIENT_CANCELLED else 200
    await settle(call, outcome=outcome, status=status, usage=usage, code=code, message=message)
    await _remember_response(call, getattr(handler, "response_id", None))


async def _drain(call: accounting.Call, reply, handler, splitter: relay.EventSplitter) -> None:
    """A background stream whose client left: the rest of its events are read (nobody receives
    them) so that it is billed from the usage of its `response.completed`, as `client_cancelled`."""
    try:
        async for chunk in reply.chunks():
            for event in splitter.feed(chunk):
                handler.event(event)
        if rest := splitter.rest():
            handler.event(rest)
    except Exception:  # noqa: BLE001 - billed from what the upstream reported, else estimated
        logger.warning("the background stream of %s failed while it was read to its end", call.request_id)
    finally:
        await _stream_end(call, reply, handler, outcome=Outcome.CLIENT_CANCELLED, code="", message="")


# --- models --------------------------------------------------------------------------------------


def _model_object(entry) -> dict:
    return {"id": entry.model_slug, "object": "model", "created": 0, "owned_by": "organization"}


async def _active_models(request):
    rid = request_id_for(request)
    try:
        scope = await threads.run(accounting.models_for, authorization=request.headers.get("Authorization", ""))
    except GatewayError as error:
        return rid, None, error_response(error, rid)
    active = [
        a for a in scope.allocations if a.model_active and a.status == Allocation.Status.ACTIVE and a.forbidden is None
    ]
    return rid, active, None


async def models_list(request):
    rid, active, failed = await _active_models(request)
    if failed is not None:
        return failed
    body = json.dumps({"object": "list", "data": [_model_object(a) for a in active]}).encode()
    return _response(body, 200, "application/json", rid)


async def models_retrieve(request, model_id: str):
    rid, active, failed = await _active_models(request)
    if failed is not None:
        return failed
    for entry in active:
        if model_id in (entry.model_slug, entry.model_slug.rsplit("/", 1)[-1]):
            return _response(json.dumps(_model_object(entry)).encode(), 200, "application/json", rid)
    return error_response(NotFound(f"model '{model_id}' is not available to this key"), rid)


async def not_found(request, rest: str = ""):
    return error_response(NotFound(f"no such endpoint: {request.path}"), request_id_for(request))


def refused_from_head(*, path: str, request_id: str, authorization: str, error: GatewayError) -> bool:
    """A /v1 call the server refused from its request's head for its body (gateway_project.edge),
    recorded as the preflight records it, in the background (a draining server waits for it).
    False when the path is no endpoint (nothing to record: the door's metrics count it)."""
    endpoint = ENDPOINTS.get(path.removeprefix("/v1/").rstrip("/").replace("/", "."))
    if endpoint is None:
        return False
    call = accounting.Call(
        request_id=request_id,
        endpoint=endpoint,
        started_at=timezone.now(),
        authorization=authorization,
        body_error=error,
    )
    task = asyncio.ensure_future(_open_refused(call))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return True


async def _open_refused(call: accounting.Call) -> None:
    with contextlib.suppress(GatewayError):
        await open_call(call)
