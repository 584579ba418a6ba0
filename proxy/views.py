"""/v1 views: plain async Django views (no DRF: see docs/PERFORMANCE.md for why), served by
proxy.handler without middleware. One relay view for every endpoint: the endpoint's body reader
(proxy.registry's hooks) → the call's plan → admission (quota.admission, through
proxy.accounting) → the upstream attempts with no transaction or connection held (proxy.failover)
→ the answer relayed (whole and metered by the endpoint's answer meter, a stream of events through
proxy.relay, or audio chunks) → the one settlement."""

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from allocations.exceptions import BadRequest, GatewayError, NotFound, Unauthorized
from allocations.models import Allocation
from lib import inflight
from lib.api_errors import error_body
from lib.asgi import PartWriter, Whole, header_value
from lib.conf import now
from lib.http import request_id_of as request_id_for
from lib.http import sent_header
from quota import admission
from quota.admission import Plan
from quota.ledger import threads
from quota.models import Outcome
from quota.pricing import Usage
from quota.tools import REMOVED_HEADER

from . import accounting, gate, relay, response_ids, unsupported
from . import simulated_media as simulated_media  # registers the simulated provider's media answers
from .accounting import Call, settle
from .answers import Answer
from .bodies import Read, build_json, json_outgoing
from .failover import Failed, open_upstream, transport_error
from .registry import ENDPOINTS, RESPONSE_BINARY, Endpoint

logger = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MALFORMED_STREAM = "malformed event stream from the upstream"
# Strong references: an upstream call finishes even when its request is gone.
_background = inflight.tasks("upstream calls")


# /v1's whole answers are lib.asgi.Whole: the handler sends them as ASGI messages, the bytes an
# HttpResponse with the same content and headers would send. A request id is safe ASCII
# (lib.http.request_id_from), so it goes in as it is.


def error_response(error: GatewayError, request_id: str) -> Whole:
    body = error_body(
        code=error.code, message=error.message, type_=error.type, request_id=request_id, fields=error.fields
    )
    headers = {"content-type": _JSON, "x-request-id": ("X-Request-Id", request_id)}
    retry_after = getattr(error, "retry_after", None)  # QuotaBusy, TooManyAuthFailures
    if retry_after is not None:
        headers["retry-after"] = ("Retry-After", header_value(str(retry_after)))
    return Whole(json.dumps(body).encode(), error.status, headers)


def _response(body: bytes, status: int, content_type: str, request_id: str) -> Whole:
    kind = _JSON if content_type == "application/json" else ("Content-Type", header_value(content_type))
    headers = {
        "content-type": kind,
        "content-length": ("Content-Length", str(len(body))),
        "x-request-id": ("X-Request-Id", request_id),
    }
    return Whole(body, status, headers)


_JSON = ("Content-Type", "application/json")
Answered: TypeAlias = HttpResponseBase | Whole  # streams and audio stay Django's responses


def _keep(task: asyncio.Future) -> asyncio.Future:
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# --- the relay view ---------------------------------------------------------------------------


async def relay_call(request: HttpRequest, endpoint: str) -> Answered:
    spec = ENDPOINTS[endpoint]
    rid = request_id_for(request)
    if request.method != "POST":
        if (upload := getattr(request, "gateway_upload", None)) is not None:
            upload.close()
        return error_response(BadRequest(f"use POST for /v1/{spec.path}"), rid)
    read = await spec.reader(request, spec)
    # = request.headers["Authorization"], without building every header's mapping
    authorization = sent_header(request, "HTTP_AUTHORIZATION")
    plan = plan_of(spec, read, rid, authorization, passed=getattr(request, "gateway_passed", None))
    call = Call(plan, spec, form=read.form)
    if plan.stream:
        try:
            await accounting.open_call(call, early=_build_ahead(call))
        except GatewayError as error:
            _close_form(call)
            return error_response(error, rid)
        response = await _relay_stream(call)
    else:
        response = await _whole(call)
    if call.admitted is not None and call.admitted.removed:
        response[REMOVED_HEADER] = ",".join(call.admitted.removed)
    if call.dropped:
        response[unsupported.DROPPED_HEADER] = ",".join(call.dropped)
    return response


def plan_of(
    endpoint: Endpoint, read: Read, request_id: str, authorization: str, passed: tuple[str, str] | None = None
) -> Plan:
    """The call as quota.admission judges it: who (the bearer), which model and endpoint, and
    what the request would use; a body the reader refused is the plan's refusal. `passed`: the
    edge's verdict on the bearer (proxy.gate.PASSED), whose digest the plan carries."""
    body, error = read.body, read.error
    stream = bool(body and body.get("stream") is True and error is None)
    plaintext = accounting.plaintext_of(authorization)
    if not plaintext:
        error = Unauthorized("missing or malformed bearer key: send 'Authorization: Bearer <key>'")
    elif error is None and body is None:  # a reader pairs a missing body with its error
        error = BadRequest("the request body must be a JSON object")
    model = body.get("model") if body is not None else None
    return Plan(
        request_id=request_id,
        endpoint=endpoint.name,
        surface=f"/v1/{endpoint.path}",
        kinds=endpoint.kinds,
        plaintext=plaintext,
        key_digest=gate.digest_carried(plaintext, passed),
        model=model if isinstance(model, str) else "",
        started_at=now(),
        stream=stream,
        estimate=endpoint.estimate(body) if body is not None and error is None else Usage(),
        body=body if error is None else None,
        refusal=error,
    )


def _close_form(call: Call) -> None:
    if call.form is not None:
        call.form.close()


def _build(call: Call) -> None:
    ahead, call.ahead = call.ahead, None
    if ahead is not None and ahead[0] is call.entry and ahead[1] is call.outgoing:
        call.sent = ahead[2]  # built while the admission was decided, from what it admitted
        return
    try:
        call.sent = call.endpoint.builder(call)
    except BaseException:
        _close_form(call)
        raise


def _build_ahead(call: Call) -> "admission.Early | None":
    """For a JSON call, the future its admission answers early (quota.admission.admit's `early`)
    with the allocation and body the call goes upstream with if admitted as it stands: its
    upstream request is then built while the admission statement is in the database, and kept on
    the call for `_build`, which uses it only when the call was admitted with that very allocation
    and body. Nothing leaves the process and nothing is opened: a refused call drops it."""
    if call.form is not None or call.endpoint.builder is not build_json:
        return None
    early = asyncio.get_running_loop().create_future()
    early.add_done_callback(functools.partial(_built_ahead, call))
    return early


def _built_ahead(call: Call, early: asyncio.Future) -> None:
    entry, body = early.result()
    if body is None or call.admitted is not None:
        return
    try:
        call.ahead = (entry, body, json_outgoing(body, entry, stream=call.stream, endpoint=call.endpoint))
    except Exception:  # noqa: BLE001 - built again after the admission, where its error is the call's
        call.ahead = None


async def _relay_stream(call: Call) -> Answered:
    if call.endpoint.response_ids and (refused := await _foreign_response_refused(call)) is not None:
        return refused
    _build(call)
    return await _stream(call)


async def _whole(call: Call) -> Answered:
    """A call answered whole: admitted, sent upstream and settled in one task the request cannot
    cancel (and the drain waits for), so neither the admission nor the upstream call needs a
    task and a shield of its own. The request waits for a future the task answers as its last
    step, not for the task itself: cancelling the request cancels only that future, as a shield
    would, and the answer reaches the request a turn of the loop sooner than through one."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    # A Task made with its name (= ensure_future, less its checks): the loop's create_task formats
    # a default name ("Task-N", printf-style) before it sets the one given.
    _keep(asyncio.Task(_whole_call(call, answered), loop=loop, name="whole call"))
    try:
        response = await answered
    except asyncio.CancelledError:
        # The client went away: the admission ends (settled as client_cancelled if it admitted);
        # an upstream call under way still completes and is billed (SPEC 4).
        call.client_gone = True
        raise
    if call.rate_headers is not None:  # the admission ran in the task: its headers go to this request
        accounting.RATE_HEADERS.set(call.rate_headers)
    return response


async def _whole_call(call: Call, answered: asyncio.Future) -> None:
    """`_whole`'s task: the call to its end, its answer (or error) handed to `answered` unless the
    request has gone (then, as under a shield, nobody reads it)."""
    try:
        response = await _whole_answer(call)
    except Exception as exc:  # the request has it, or has gone: the task ends without an error of its own
        if not answered.done():
            answered.set_exception(exc)
        else:
            logger.error("the whole call %s failed after its client left", call.request_id, exc_info=exc)
        return
    except BaseException as exc:  # cancelled, or the process is leaving
        if not answered.done():
            if isinstance(exc, asyncio.CancelledError):
                answered.cancel()
            else:
                answered.set_exception(exc)
        raise
    if not answered.done():
        answered.set_result(response)


async def _whole_answer(call: Call) -> Answered:
    try:
        if not await accounting.open_call(call, detached=True, early=_build_ahead(call)):
            _close_form(call)
            return HttpResponse(status=499)  # the client left during admission: nobody reads this
    except GatewayError as error:
        _close_form(call)
        return error_response(error, call.request_id)
    if call.endpoint.response_ids and (refused := await _foreign_response_refused(call)) is not None:
        return refused
    _build(call)
    return await _complete(call)


async def _foreign_response_refused(call: Call) -> Whole | None:
    """404 for a `previous_response_id` this member did not create through the gateway."""
    try:
        await response_ids.check((call.plan.body or {}).get("previous_response_id"), call.member_id)
    except GatewayError as error:
        await settle(
            call, outcome=Outcome.REJECTED_BAD_REQUEST, status=error.status, usage=Usage(), code=error.code,
            message=error.message,
        )  # fmt: skip
        return error_response(error, call.request_id)
    return None


async def _failed(call: Call, failed: Failed) -> Whole:
    await settle(
        call, outcome=failed.outcome, status=failed.status, usage=Usage(), code=failed.code, message=failed.message
    )
    if failed.body is not None:
        return _response(failed.body, failed.status, failed.content_type, call.request_id)
    return error_response(failed.error, call.request_id)


async def _complete(call: Call) -> Answered:
    try:
        reply = await open_upstream(call)
        if isinstance(reply, Failed):
            return await _failed(call, reply)
        if call.endpoint.response == RESPONSE_BINARY:
            return _binary(call, reply)
        try:
            raw = await reply.read()
        finally:
            reply.close()
        return await _answer(call, reply, raw, detached=True)
    except Exception as exc:  # noqa: BLE001 - every failure settles the call once, answered in the envelope
        outcome, error = transport_error(exc)
        await settle(call, outcome=outcome, status=error.status, usage=Usage(), code=error.code, message=error.message)
        return error_response(error, call.request_id)
    finally:
        if call.form is not None:
            call.form.close()


async def _answer(call: Call, reply: Any, raw: bytes, *, detached: bool = False) -> Whole:
    """A whole answer, metered by the endpoint's answer meter, settled, then answered. `detached`:
    called from the upstream call's own task (`_complete`), which settles in place."""
    answer: Answer = call.endpoint.answer(call, reply.status, reply.content_type, raw)
    if call.endpoint.response_ids:  # before the answer: its id may be continued at once
        await _remember_response(call, answer.response_id)
    error = answer.error
    code, message = (error.code, error.message) if error is not None else ("", "")
    await settle(
        call,
        outcome=answer.outcome,
        status=answer.status,
        usage=answer.usage,
        code=code,
        message=message,
        detached=detached,
    )
    if error is not None:
        return error_response(error, call.request_id)
    return _response(answer.body, answer.status, answer.content_type, call.request_id)


async def _remember_response(call: Call, response_id: object) -> None:
    if response_id is not None:
        await response_ids.remember(response_id, call.member_id)


# --- streams ---------------------------------------------------------------------------------


async def _stream(call: Call) -> Answered:
    try:
        reply = await open_upstream(call)
    except asyncio.CancelledError:
        await settle(call, outcome=Outcome.CLIENT_CANCELLED, status=499, usage=Usage())
        raise
    except Exception as exc:  # noqa: BLE001 - every failure to reach upstream settles the call once
        outcome, error = transport_error(exc)
        await settle(call, outcome=outcome, status=error.status, usage=Usage(), code=error.code, message=error.message)
        return error_response(error, call.request_id)
    if isinstance(reply, Failed):
        return await _failed(call, reply)
    if not reply.is_event_stream:  # the upstream ignored `stream`: relay its JSON answer
        try:
            raw = await reply.read()
        finally:
            reply.close()
        return await _answer(call, reply, raw)
    response = relay.EventStream(
        lambda stream: _events(call, reply, stream), status=reply.status, content_type=reply.content_type
    )
    for name, value in SSE_HEADERS.items():
        response[name] = value
    response["X-Request-Id"] = call.request_id
    return response


async def _events(call: Call, reply: Any, stream: relay.EventStream) -> AsyncIterator[bytes]:
    stream_meter, stream_relay = call.endpoint.stream_meter, call.endpoint.stream_relay
    if stream_meter is None or stream_relay is None:
        raise RuntimeError("stream on an endpoint without a stream meter")  # the body reader refuses it
    meter = stream_meter(call.plan.estimate.input_tokens)
    handler = stream_relay(meter, call.sent.strip_usage if call.sent is not None else False)
    responses = call.endpoint.response_ids
    outcome, code, message = Outcome.SUCCESS, "", ""
    drain = False
    write: PartWriter | None = None  # the server's, once the first part (and the headers) went
    try:
        async for chunk in reply.chunks():
            if relayed := handler.feed(chunk):
                call.relayed()
                if write is None or not write(relayed):
                    yield relayed  # as an ASGI message: the first part, or one the writer refused
                    write = stream.writer
        if tail := handler.rest():
            call.relayed()
            yield tail
    except (asyncio.CancelledError, GeneratorExit):
        outcome = Outcome.CLIENT_CANCELLED
        # A background response goes on upstream when its client leaves (and is billed): it is
        # read to its end, off this request, and billed from the usage it reports.
        drain = responses and (call.plan.body or {}).get("background") not in (None, False)
        if not drain and handler.meter.usage is None and handler.meter.broken():
            # The client left a stream the upstream had already broken (likely because of it):
            # the call is the upstream's failure, whichever of the two was noticed first.
            outcome, code, message = Outcome.UPSTREAM_ERROR, "upstream_error", MALFORMED_STREAM
        raise
    except Exception as exc:  # noqa: BLE001 - any upstream failure mid-stream ends the stream
        _, error = transport_error(exc)
        outcome, code, message = Outcome.UPSTREAM_ERROR, error.code, f"the upstream failed mid-stream: {error.message}"
        body = error_body(code=error.code, message=message, type_=error.type, request_id=call.request_id)
        yield handler.held() + relay.error_event(responses=responses, body=body)
    finally:
        if drain:
            _keep(asyncio.ensure_future(_drain(call, reply, handler)))
        else:
            await _stream_end(call, reply, handler, outcome=outcome, code=code, message=message)
    if done := handler.held():  # the stream's [DONE], once its call is settled
        yield done


async def _stream_end(call: Call, reply: Any, handler: Any, *, outcome: str, code: str, message: str) -> None:
    """A relayed stream's settlement: from the usage it reported, else an estimate (SPEC 4)."""
    reply.close()
    meter = handler.meter
    usage = meter.result()
    if outcome == Outcome.SUCCESS and meter.usage is None:
        outcome, code = Outcome.UPSTREAM_ERROR, "upstream_error"
        message = MALFORMED_STREAM if meter.malformed else "the stream ended without usage"
    elif outcome == Outcome.SUCCESS and getattr(handler, "failed", False):
        outcome, code, message = Outcome.UPSTREAM_ERROR, "upstream_error", "the upstream reported response.failed"
    status = 499 if outcome == Outcome.CLIENT_CANCELLED else 200
    await settle(call, outcome=outcome, status=status, usage=usage, code=code, message=message)
    if call.endpoint.response_ids:
        await _remember_response(call, getattr(handler, "response_id", None))


async def _drain(call: Call, reply: Any, handler: relay.Relay) -> None:
    """A background stream whose client left: the rest of its events are read (nobody receives
    them) so that it is billed from the usage of its `response.completed`, as `client_cancelled`."""
    try:
        async for chunk in reply.chunks():
            handler.feed(chunk)
        handler.rest()
    except Exception:  # noqa: BLE001 - billed from what the upstream reported, else estimated
        logger.warning("the background stream of %s failed while it was read to its end", call.request_id)
    finally:
        await _stream_end(call, reply, handler, outcome=Outcome.CLIENT_CANCELLED, code="", message="")


def _binary(call: Call, reply: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_chunks(call, reply), status=reply.status, content_type=reply.content_type)
    response["X-Request-Id"] = call.request_id
    return response


async def _chunks(call: Call, reply: Any) -> AsyncIterator[bytes]:
    """Audio relayed as it arrives; billed by the request (characters) however the relay ends."""
    meter, body = call.endpoint.response_meter, call.plan.body
    if meter is None or body is None:  # the registry gives audio a meter; admission a body
        raise RuntimeError(f"{call.endpoint.name}: no response meter or request body to meter")
    usage = meter(body, b"")
    outcome, status, code, message = Outcome.SUCCESS, reply.status, "", ""
    try:
        async for chunk in reply.chunks():
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        outcome, status = Outcome.CLIENT_CANCELLED, 499
        raise
    except Exception as exc:  # noqa: BLE001 - the client already has the headers: end the body
        _, error = transport_error(exc)
        outcome, code, message = Outcome.UPSTREAM_ERROR, error.code, f"the upstream failed mid-body: {error.message}"
    finally:
        reply.close()
        await settle(call, outcome=outcome, status=status, usage=usage, code=code, message=message)


# --- models --------------------------------------------------------------------------------------


def _model_object(entry: Any) -> dict:
    return {"id": entry.model_slug, "object": "model", "created": 0, "owned_by": "organization"}


async def _active_models(request: HttpRequest) -> tuple[str, list | None, Whole | None]:
    rid = request_id_for(request)
    try:
        scope = await threads.run(accounting.models_for, authorization=request.headers.get("Authorization", ""))
    except GatewayError as error:
        return rid, None, error_response(error, rid)
    active = [
        a for a in scope.allocations if a.model_active and a.status == Allocation.Status.ACTIVE and a.forbidden is None
    ]
    return rid, active, None


async def models_list(request: HttpRequest) -> Whole:
    rid, active, failed = await _active_models(request)
    if failed is not None or active is None:
        return failed or error_response(GatewayError(), rid)
    body = json.dumps({"object": "list", "data": [_model_object(a) for a in active]}).encode()
    return _response(body, 200, "application/json", rid)


async def models_retrieve(request: HttpRequest, model_id: str) -> Whole:
    rid, active, failed = await _active_models(request)
    if failed is not None or active is None:
        return failed or error_response(GatewayError(), rid)
    for entry in active:
        if model_id in (entry.model_slug, entry.model_slug.rsplit("/", 1)[-1]):
            return _response(json.dumps(_model_object(entry)).encode(), 200, "application/json", rid)
    return error_response(NotFound(f"model '{model_id}' is not available to this key"), rid)


async def not_found(request: HttpRequest, rest: str = "") -> Whole:
    return error_response(NotFound(f"no such endpoint: {request.path}"), request_id_for(request))


def refused_from_head(*, path: str, request_id: str, authorization: str, error: GatewayError) -> bool:
    """A /v1 call the server refused from its request's head for its body (gateway_project.edge),
    recorded as the admission records it, in the background (a draining server waits for it).
    False when the path is no endpoint (nothing to record: the door's metrics count it)."""
    endpoint = ENDPOINTS.get(path.removeprefix("/v1/").rstrip("/").replace("/", "."))
    if endpoint is None:
        return False
    call = Call(plan_of(endpoint, Read(None, error), request_id, authorization), endpoint)
    _keep(asyncio.ensure_future(_open_refused(call)))
    return True


async def _open_refused(call: Call) -> None:
    with contextlib.suppress(GatewayError):
        await accounting.open_call(call)
