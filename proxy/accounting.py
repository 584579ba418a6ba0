"""The two accounting steps of a proxied call: `open_call` (authenticate, resolve, check, admit:
SPEC 3 steps 1-10) and `close_call` (the call record, the counters and the reservation release,
in one statement).

A warm call (its key scope, price and counter id cached under the current auth generation) takes
both steps on the event loop: the preflight from the caches (quota.preflight), then the ledger's
statements on the loop (quota.ledger). Everything else runs the synchronous `call_open` on the
ledger's accounting threads: the first call of a key, every refusal (the one place a call's
refusal record is written), a cap reached, and any failure of the loop path. No
connection is held across the upstream call.
"""

import asyncio
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import re
import uuid
from dataclasses import dataclass, field

from django.db import Error as DatabaseError
from django.db import connection

from allocations.access import KeyScope, ScopedAllocation, key_scope
from allocations.exceptions import BadRequest, GatewayError, GatewayUnavailable, Unauthorized
from lib import inflight
from lib.cache import auth_generation
from quota import ledger, ratelimit
from quota.billing import bill as billing
from quota.ledger import Admission, threads
from quota.models import CallRecord, Outcome
from quota.preflight import Estimate, preflight, preflight_cached, reject_outcome, touch
from quota.pricing import Usage

from . import options
from .registry import Endpoint

logger = logging.getLogger(__name__)
BEARER = re.compile(r"Bearer ([A-Za-z0-9_\-]{6,200})")


@dataclass
class Call:
    """One proxied call's state, filled in as it goes through the steps."""

    request_id: str
    endpoint: Endpoint
    started_at: dt.datetime
    authorization: str  # the raw header
    body: dict | None = None  # as the client sent it
    body_error: GatewayError | None = None
    # What the preflight's judgement of the options took out of the body (proxy.options.judge):
    # the tools removed, and the body to send upstream instead of `body` (None: nothing removed).
    removed: tuple[str, ...] = ()
    sent: dict | None = None
    stream: bool = False
    scope: KeyScope | None = None
    entry: ScopedAllocation | None = None
    price: object = None
    admission: Admission | None = None
    rate: ratelimit.Decision | None = None
    rate_ticket: ratelimit.Ticket | None = None
    prompt_tokens: int = 0
    client_gone: bool = False
    settled: bool = False
    extra: dict = field(default_factory=dict)
    estimate: Usage = field(default_factory=Usage)  # what the admission reserves
    # The admission's reservation id, chosen before the first attempt: when an attempt fails without
    # telling whether it committed (`in_doubt`), the next one looks for it before admitting again.
    reservation_id: uuid.UUID = field(default_factory=uuid.uuid4)
    in_doubt: bool = False
    attempts: int = 0  # upstream attempts made (failover moves the call between deployments)

    @property
    def outgoing(self) -> dict | None:
        """The body that goes upstream: the client's, less what the preflight removed."""
        return self.body if self.sent is None else self.sent

    def identity(self) -> dict:
        """The call record's identifying fields, as far as the preflight resolved them."""
        entry = self.entry
        return {
            "request_id": self.request_id,
            "endpoint": self.endpoint.name,
            "started_at": self.started_at,
            "is_stream": self.stream,
            "api_key_id": self.scope.key_id if self.scope else None,
            "member_id": self.scope.member_id if self.scope else None,
            "allocation_id": entry.allocation_id if entry else None,
            "model_id": entry.model_id if entry else None,
            "deployment_id": entry.deployment_id if entry and self.attempts else None,
            "attempts": self.attempts,
        }

    def lost_context(self) -> dict:
        """What the reservation's sweeper bills if this process dies holding the call: the
        admission's estimate (the counted input and the reserved output)."""
        usage = dataclasses.replace(self.estimate, estimated=True)
        return ledger.lost_context(record=self.identity(), usage=usage, price=self.price)

    def record(self, *, outcome: str, status_code: int, error_code: str = "", error_message: str = "") -> dict:
        """The call record's identifying fields and outcome (the message cut to the column's 1,000)."""
        return {
            **self.identity(),
            "outcome": outcome,
            "status_code": status_code,
            "error_code": error_code,
            "error_message": error_message[:1000],
        }


# --- step 1: open -------------------------------------------------------------------------------


def _reject(call: Call, error: GatewayError) -> None:
    if call.in_doubt and CallRecord.objects.filter(request_id=call.request_id, started_at=call.started_at).exists():
        return  # the attempt that failed had recorded the refusal
    ledger.record_reject(
        record=call.record(
            outcome=reject_outcome(error), status_code=error.status, error_code=error.code, error_message=error.message
        )
    )


def _attribute(call: Call, generation: int) -> None:
    """Best effort: who made a malformed request, for its record."""
    match = BEARER.fullmatch(call.authorization)
    try:
        call.scope = key_scope(match.group(1), generation=generation) if match else None
        model = (call.body or {}).get("model")
        if call.scope and isinstance(model, str):
            call.entry = call.scope.resolve(model)
    except GatewayError:
        pass


def _options_check(call: Call, body: dict):
    """The cost-bearing request options against the model's switch, tool rules and price
    (proxy.options): a refusal, or what to send upstream (judged from the client's body each time
    the preflight asks, so asking again on the thread path decides the same)."""

    def check(entry: ScopedAllocation, price) -> GatewayError | None:
        verdict = options.judge(
            entry=entry, price=price, endpoint_name=call.endpoint.name, body=body, stream=call.stream
        )
        if verdict.error is not None:
            return verdict.error
        call.removed, call.sent = verdict.removed, verdict.body
        if verdict.removed:  # the reservation holds no call of a removed tool
            facts = options.facts(call.endpoint.name, verdict.body or {})
            kept = dataclasses.replace(call.estimate, tool_calls=())
            call.estimate = billing.billed_usage(facts=facts, usage=kept, estimate=True)
        return None

    return check


def _estimate(call: Call, body: dict) -> Estimate:
    """The admission's estimate, read when the admission asks (the options' check may revise it),
    priced by quota.billing's bill: the function that bills the answer."""
    call.estimate = call.endpoint.estimate(body)
    call.prompt_tokens = call.estimate.input_tokens
    return lambda price: (call.estimate.total_tokens, billing.bill(price=price, usage=call.estimate).cost)


def call_open(*, call: Call) -> Call:
    """Steps 1-2 (bearer, body), then the shared preflight (quota.preflight). A refusal writes its
    record and raises."""
    generation = auth_generation()
    try:
        match = BEARER.fullmatch(call.authorization)
        if match is None:
            raise Unauthorized("missing or malformed bearer key: send 'Authorization: Bearer <key>'")
        if call.body_error is not None:
            _attribute(call, generation)
            raise call.body_error
        body = call.body
        if body is None:  # parse_body pairs a missing body with a body_error
            raise BadRequest("the request body must be a JSON object")
        preflight(
            call,
            plaintext=match.group(1),
            model=body["model"],
            kinds=call.endpoint.kinds,
            surface=f"/v1/{call.endpoint.path}",
            request_id=call.request_id,
            now=call.started_at,
            estimate=_estimate(call, body),
            generation=generation,
            context=lambda _held: call.lost_context(),
            reservation_id=call.reservation_id,
            in_doubt=call.in_doubt,
            check=_options_check(call, body),
        )
    except GatewayError as error:
        _reject(call, error)
        raise
    assert call.scope is not None  # resolved by an admitted preflight
    touch(call.scope.key_id, call.started_at)
    return call


# --- step 1 from the event loop ------------------------------------------------------------------


async def open_call(call: Call) -> Call:
    """Step 1: on the event loop when everything the call needs is cached and it is admitted there;
    otherwise (first call of a key, a refusal, a cap reached, any error) on a thread,
    which re-runs the whole preflight and writes what a refusal writes.

    If the client goes away meanwhile (its request task is cancelled), the step still runs to its
    end: cut short, an admission could commit unseen (on a thread it does) and leave a call with a
    reservation and no record. A call admitted that way is recorded as client_cancelled (499, no
    usage: nothing went upstream), which releases its reservation at once."""
    opening = asyncio.ensure_future(_open(call))
    try:
        await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(functools.partial(_close_abandoned, call))
        raise
    finally:
        if call.rate is not None:
            RATE_HEADERS.set(call.rate.headers)
    if call.admission is not None and not call.settled:
        _held.add(call.reservation_id)
    return call


# The x-ratelimit-* headers of the request being answered (proxy.handler adds them to whatever
# answer the view gives, refusals included): set by open_call in the request's own task.
RATE_HEADERS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gateway_rate_headers", default=None)


def _close_abandoned(call: Call, opening: asyncio.Future) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # not admitted; a refusal was recorded where it was decided
    close_once(call, outcome=Outcome.CLIENT_CANCELLED, status_code=499, usage=Usage())


async def _open(call: Call) -> Call:
    try:
        if await _open_on_loop(call):
            return call
    except Exception:  # noqa: BLE001 - e.g. Redis or the database unreachable: the thread path decides
        call.in_doubt = True  # the statement may have committed before its connection failed
        logger.warning(
            "admission on the event loop failed for %s; taking the thread path", call.request_id, exc_info=True
        )
    try:
        return await _open_on_thread(call)
    except BaseException:
        if call.rate_ticket is not None:  # a rate-limit place the thread path did not give back
            ticket, call.rate_ticket = call.rate_ticket, None
            await ratelimit.settle_async(ticket, tokens=0)
        if call.admission is not None:  # a reservation the event loop made before a refusal
            admission, call.admission = call.admission, None
            await threads.run(ledger.release, admission=admission)
        raise


async def _open_on_thread(call: Call) -> Call:
    try:
        return await threads.run(call_open, call=call)
    except DatabaseError:
        call.in_doubt = True
        logger.warning("preflight of %s lost its database connection; retrying once", call.request_id, exc_info=True)
    try:
        return await threads.run(call_open_again, call=call)
    except DatabaseError as error:
        raise GatewayUnavailable("the gateway's database is unavailable; retry shortly") from error


def call_open_again(*, call: Call) -> Call:
    """call_open on a new connection: after one was terminated or lost, this thread's may be dead too."""
    connection.close()
    return call_open(call=call)


async def _open_on_loop(call: Call) -> bool:
    """call_open from the caches only (quota.preflight_cached); True once admitted."""
    match = BEARER.fullmatch(call.authorization)
    body = call.body
    if match is None or call.body_error is not None or body is None:
        return False
    return await preflight_cached(
        call,
        plaintext=match.group(1),
        model=body["model"],
        kinds=call.endpoint.kinds,
        request_id=call.request_id,
        now=call.started_at,
        estimate=_estimate(call, body),
        context=lambda _held: call.lost_context(),
        reservation_id=call.reservation_id,
        check=_options_check(call, body),
    )


# --- step 2: close ---------------------------------------------------------------------------


# Strong references: a settlement runs to its end even when its request is gone.
_closing = inflight.tasks("settlements")
# Reservations of this process's admitted calls whose settlement has not ended: one entry per call
# in flight (a settlement's end removes it, whatever its outcome).
_held: set[uuid.UUID] = set()


def close_once(call: Call, **close) -> asyncio.Future | None:
    """close_call exactly once per call, in a task of its own so that it finishes even if the
    request task is cancelled meanwhile; None when the call was already closed."""
    if call.settled:
        return None
    call.settled = True
    task = asyncio.ensure_future(close_call(call, **close))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    task.add_done_callback(lambda _: _held.discard(call.reservation_id))
    return task


async def settle_held_as_lost() -> int:
    """At the end of a shutdown grace: this process's calls that are still unsettled become their
    `worker_lost` records now (billed at the admission's estimate) instead of when the sweeper
    finds their reservation expired. A settlement still writing holds its row and is skipped; one
    that ends later writes nothing (quota.ledger.reservations_settle_lost)."""
    if not _held:
        return 0
    return await threads.run(ledger.reservations_settle_lost, reservation_ids=list(_held))


inflight.on_abandon("unsettled calls", settle_held_as_lost)


async def close_call(
    call: Call, *, outcome: str, status_code: int, usage: Usage, error_code: str = "", error_message: str = ""
) -> None:
    """Step 2: the ledger's settlement (on the event loop when it can, else on a thread; spooled if
    the database fails), so no billed call is lost and none is recorded twice."""
    if call.rate_ticket is not None:
        ticket, call.rate_ticket = call.rate_ticket, None
        await ratelimit.settle_async(ticket, tokens=usage.total_tokens)
    if (deployment_ticket := call.extra.pop("deployment_ticket", None)) is not None:
        await ratelimit.settle_async(deployment_ticket, tokens=usage.total_tokens)
    record = call.record(outcome=outcome, status_code=status_code, error_code=error_code, error_message=error_message)
    await ledger.settle_async(admission=call.admission, record=record, usage=usage, price=call.price)


def models_for(*, authorization: str) -> KeyScope:
    match = BEARER.fullmatch(authorization)
    if match is None:
        raise Unauthorized("missing or malformed bearer key: send 'Authorization: Bearer <key>'")
    return key_scope(match.group(1))
