"""A /v1 call's upstream attempts (SPEC 3, failover): the model's deployments in routing order
(quota.routing); a connect error, a timeout before the answer's head, a 429, a 5xx or a 401/403
moves the call to the next one, at most GATEWAY_FAILOVER_ATTEMPTS times. A failed attempt is
counted per deployment and left to quota.routing (a cooldown shared by every process, or the
deployment taken out for a 401/403); the call keeps its one record. The answer is a value: the
reply whose head is in, or a `Failed` for proxy.views to settle and answer.
"""

import time
from dataclasses import dataclass

from allocations.exceptions import GatewayError
from lib.conf import setting
from ops import observe
from quota import routing
from quota.exceptions import RateLimited, UpstreamError, UpstreamTimeout
from quota.models import Outcome

from . import unsupported, upstream
from .accounting import Call

moves = routing.moves


@dataclass(frozen=True)
class Failed:
    """The call ends before any answer is relayed: recorded with `outcome` and `status`."""

    error: GatewayError
    outcome: str
    status: int
    code: str
    message: str
    body: bytes | None = None  # an upstream 4xx relayed (redacted), else the error envelope
    content_type: str = ""


def _failed(error: GatewayError, outcome: str = Outcome.UPSTREAM_ERROR, status: int | None = None) -> Failed:
    return Failed(error, outcome, error.status if status is None else status, error.code, error.message)


def transport_error(exc: BaseException) -> tuple[str, GatewayError]:
    """(outcome, error) of a failure while talking to the upstream."""
    if isinstance(exc, TimeoutError):
        return Outcome.UPSTREAM_ERROR, UpstreamTimeout("the upstream stopped answering")
    if isinstance(exc, GatewayError):
        return Outcome.UPSTREAM_ERROR, exc
    if type(exc).__module__.startswith("aiohttp"):
        return Outcome.UPSTREAM_ERROR, UpstreamError(f"the upstream connection failed ({type(exc).__name__})")
    return Outcome.GATEWAY_ERROR, GatewayError("the gateway failed to complete the call")


_RETRY = object()  # _attempt: this deployment failed in a way the next one may not


async def open_upstream(call: Call) -> upstream.AnyReply | Failed:
    """The first deployment's reply with a 2xx head (or the last one's refusal), trying them in
    routing order. The upstream request is built again for a deployment with another upstream
    name (and for every attempt of a streamed upload: its iterator is spent by its attempt)."""
    entry = call.entry
    if entry is None or call.sent is None:
        raise RuntimeError("upstream call before admission")  # admission sets the entry, the view the request
    candidates = await routing.plan(entry)
    budget, sent_name = 1 + setting("GATEWAY_FAILOVER_ATTEMPTS"), entry.upstream_name
    for index, deployment in enumerate(candidates):
        taken = await routing.limit_take(deployment, tokens=call.estimate.input_tokens + call.estimate.output_tokens)
        if taken is False:
            continue
        if not isinstance(taken, bool):
            call.deployment_ticket = taken
        call.entry = routing.routed(entry, deployment)
        moved = call.entry.upstream_name != sent_name or (call.attempts and not isinstance(call.sent.payload, bytes))
        if moved:
            call.sent, sent_name = call.endpoint.builder(call), call.entry.upstream_name
        budget -= 1
        call.attempts += 1
        result = await _attempt(call, last=budget == 0 or index == len(candidates) - 1)
        if result is not _RETRY:
            return result  # type: ignore[return-value]
        if budget == 0:
            break
    if call.attempts:  # the deployments left after a failed attempt were all at their limits
        return _failed(UpstreamError("no deployment of this model could serve the call"))
    limited = RateLimited("every deployment of this model is at its rate limit", retry_after=1)
    return _failed(limited, Outcome.REJECTED_RATE_LIMITED)


async def _attempt(call: Call, *, last: bool) -> upstream.AnyReply | Failed | object:
    entry, sent = call.entry, call.sent
    if entry is None or sent is None:
        raise RuntimeError("upstream attempt before routing")  # open_upstream sets both
    call.upstream_t0 = time.perf_counter()
    try:
        reply = await upstream.send(
            entry=entry,
            endpoint=call.endpoint,
            body=sent.body,
            payload=sent.payload,
            request_id=call.request_id,
            headers=sent.headers,
        )
    except GatewayError as error:
        await attempt_failed(call, reason=error.code, retry_after=None)
        return _RETRY if not last else _failed(error)
    if reply.status < 300:
        return reply
    if reply.status == 400 and (param := await unsupported.droppable(call, reply)):
        reply.close()
        call.dropped = (*call.dropped, param)  # once: droppable refuses a second
        call.sent = call.endpoint.builder(call)
        call.attempts += 1
        return await _attempt(call, last=last)
    if moves(reply.status):
        await attempt_failed(call, reason=str(reply.status), retry_after=reply.retry_after)
        if not last:
            reply.close()
            return _RETRY
    return await _refused(reply)


async def _refused(reply: upstream.AnyReply) -> Failed:
    """The last attempt's non-2xx answer: a 5xx (or 3xx) as 502, a 4xx relayed."""
    try:
        raw = await reply.read()
    except Exception:  # noqa: BLE001 - a broken error body is still an upstream error
        raw = b""
    finally:
        reply.close()
    code, message = upstream.upstream_error_detail(raw, reply.secrets)
    if reply.status >= 500 or reply.status < 400:  # a 3xx: redirects are not followed
        return _failed(UpstreamError(f"the upstream failed with status {reply.status}: {message}"), status=502)
    # Upstream 4xx: relayed with its status and (redacted) error body.
    body = upstream.redact(raw.decode("utf-8", "replace"), reply.secrets).encode() if reply.secrets else raw
    error = UpstreamError(message)
    return Failed(
        error, Outcome.UPSTREAM_ERROR, reply.status, code or "upstream_error", message, body, reply.content_type
    )


async def attempt_failed(call: Call, *, reason: str, retry_after: str | None) -> None:
    entry = call.entry
    deployment_id = entry.deployment_id if entry is not None else None
    observe.attempt_failed(deployment_id=deployment_id, reason=reason)
    status = int(reason) if reason.isdigit() else None
    await routing.attempt_failed(deployment_id, status=status, retry_after=retry_after)
