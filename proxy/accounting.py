"""A /v1 call's state as the relay carries it, and its two accounting steps: `open_call` (the
call's plan admitted by quota.admission, or refused: recorded and raised) and `settle` (exactly once
per call, to its end even when the request is cancelled meanwhile). quota.admission chooses the
event loop or a ledger thread for each; no connection is held across the upstream call.
"""

import asyncio
import contextvars
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from allocations.access import KeyScope, ScopedAllocation, key_scope
from allocations.exceptions import GatewayError, Unauthorized
from lib import inflight
from quota import admission, options, ratelimit
from quota.admission import Admitted, Plan, Refused
from quota.billing import bill as billing
from quota.pricing import Usage

from . import observed

if TYPE_CHECKING:
    from .bodies import Outgoing
    from .multipart import Form
    from .registry import Endpoint

logger = logging.getLogger(__name__)
BEARER = re.compile(r"Bearer ([A-Za-z0-9_\-]{6,200})")


@dataclass
class Call:
    """One proxied call as the relay goes: its plan, then what admission and the upstream gave."""

    plan: Plan
    endpoint: "Endpoint"
    form: "Form | None" = None  # a multipart upload, spooled (closed once the upstream has it)
    admitted: Admitted | None = None
    entry: ScopedAllocation | None = None  # as resolved, then the deployment being tried (routed)
    sent: "Outgoing | None" = None  # the upstream request as last built
    attempts: int = 0  # upstream attempts made (failover moves the call between deployments)
    deployment_ticket: ratelimit.Ticket | None = None  # a deployment's own rate limits, given back at the end
    upstream_t0: float | None = None  # perf_counter() when the call was sent upstream
    in_flight: bool = False  # counted in the in-flight gauge
    client_gone: bool = False
    settled: bool = False
    ttft_ms: int | None = None  # a stream's time to its first event relayed to the client
    dropped: tuple[str, ...] = ()  # request parameters the upstream did not support, sent again without
    rate_headers: dict[str, str] | None = None  # the admission's x-ratelimit-* headers (limited allocations)
    # The upstream request built while the admission was decided: (allocation, body, request), used
    # when the call is admitted with that very allocation and body (proxy.views._build).
    ahead: "tuple[ScopedAllocation, dict, Outgoing] | None" = None

    def relayed(self) -> None:
        """Events reached the client: the first time, the stream's time to first token."""
        if self.ttft_ms is None:
            self.ttft_ms = int((timezone.now() - self.plan.started_at).total_seconds() * 1000)

    @property
    def request_id(self) -> str:
        return self.plan.request_id

    @property
    def stream(self) -> bool:
        return self.plan.stream

    @property
    def price(self) -> Any:
        return self.admitted.price if self.admitted is not None else None

    @property
    def outgoing(self) -> dict | None:
        """The body that goes upstream: the client's, less what the admission's judgement removed
        and the parameters the upstream did not support (proxy.unsupported)."""
        body = self.admitted.outgoing if self.admitted is not None else self.plan.body
        if self.dropped and isinstance(body, dict):
            return {name: value for name, value in body.items() if name not in self.dropped}
        return body

    @property
    def estimate(self) -> Usage:
        """What the admission reserved."""
        return self.admitted.estimate if self.admitted is not None else self.plan.estimate

    @property
    def member_id(self) -> str | None:
        return self.admitted.member_id if self.admitted is not None else None


def plaintext_of(authorization: str) -> str:
    """The bearer key of an Authorization header ("" when missing or malformed)."""
    match = BEARER.fullmatch(authorization)
    return match.group(1) if match else ""


# The x-ratelimit-* headers of the request being answered (proxy.handler adds them to whatever
# answer the view gives, refusals included): set in the request's own task, by open_call or, for a
# call opened in a task of its own, by the view from `Call.rate_headers`.
RATE_HEADERS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gateway_rate_headers", default=None)


async def open_call(call: Call, *, detached: bool = False, early: "admission.Early | None" = None) -> bool:
    """The call's admission (quota.admission), reported; a refusal is recorded and raised.
    `detached`: the caller runs in a task its request cannot cancel (proxy.views' whole call),
    which admits in place; False when its client left meanwhile (an admitted call is then settled
    as client_cancelled, a refused one not recorded, as when a request's own admission is cancelled).
    `early`: quota.admission.admit's (what the call is sent as, told while the database decides)."""
    try:
        answer = await admission.admit(call.plan, detached=detached, early=early)
    except GatewayError as error:  # the database unreachable: nothing could be recorded
        observed.refused(call, error)
        raise
    if call.client_gone:
        await admission.abandon(answer)
        return False
    call.rate_headers = answer.rate_headers
    if answer.rate_headers is not None and not detached:
        RATE_HEADERS.set(answer.rate_headers)
    if isinstance(answer, Refused):
        call.entry = answer.entry
        await asyncio.shield(admission.refuse(call.plan, answer))
        observed.refused(call, answer.error)
        raise answer.error
    call.admitted, call.entry = answer, answer.entry
    _held.add(call.plan.reservation_id)
    observed.admitted(call)
    return True


# --- settle ----------------------------------------------------------------------------------


# Strong references: a settlement runs to its end even when its request is gone.
_closing = inflight.tasks("settlements")
# Reservations of this process's admitted calls whose settlement has not ended: one entry per call
# in flight (a settlement's end removes it, whatever its outcome).
_held: set[uuid.UUID] = set()


async def settle(
    call: Call,
    *,
    outcome: str,
    status: int,
    usage: Usage,
    code: str = "",
    message: str = "",
    detached: bool = False,
) -> None:
    """Exactly once per call, in a task of its own so that it finishes even if the request task is
    cancelled meanwhile: the ledger's settlement (quota.admission.settle), reported. `detached`:
    the caller already runs in a task the request cannot cancel (proxy.views' upstream call, which
    the drain waits for), so the settlement runs in it, without a task and a shield of its own."""
    admitted = call.admitted
    if call.settled or admitted is None:
        return
    call.settled = True
    usage = billing.billed_usage(facts=options.facts(call.endpoint.name, call.outgoing), usage=usage)
    # The call is priced once, at the admission's price: its record and counters (the ledger's
    # settlement) and its call line carry this one bill's cost.
    billed = billing.bill(price=admitted.price, usage=usage)
    # The call's metrics and call line are made in a later turn of the loop, after the settlement's
    # statement has left (it is sent in this step, or in its task's first one, before anything
    # waits), so they take none of the call's time while PostgreSQL writes it; they still come
    # before the settlement ends, and whatever it ends with.
    if detached:
        observed.settled_soon(call, outcome=outcome, status=status, usage=usage, cost=billed.cost, code=code)
        try:
            await _close(call, admitted, outcome, status, billed, code, message)
        finally:
            _held.discard(call.plan.reservation_id)
        return
    task = asyncio.ensure_future(_close(call, admitted, outcome, status, billed, code, message))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    task.add_done_callback(lambda _: _held.discard(call.plan.reservation_id))
    # after the task's first step
    observed.settled_soon(call, outcome=outcome, status=status, usage=usage, cost=billed.cost, code=code)
    await asyncio.shield(task)


async def _close(
    call: Call, admitted: Admitted, outcome: str, status: int, billed: billing.Bill, code: str, message: str
) -> None:
    usage = billed.usage
    if call.deployment_ticket is not None:
        ticket, call.deployment_ticket = call.deployment_ticket, None
        await ratelimit.settle_async(ticket, tokens=usage.total_tokens)
    await admission.settle(
        admitted,
        outcome=outcome,
        status_code=status,
        usage=usage,
        billed=billed,
        error_code=code,
        error_message=message,
        entry=call.entry,
        attempts=call.attempts,
        ttft_ms=call.ttft_ms,
        alone=len(_held) == 1,  # this call's own reservation only: one call at a time
    )


async def settle_held_as_lost() -> int:
    """At the end of a shutdown grace: this process's calls that are still unsettled become their
    `worker_lost` records now (billed at the admission's estimate) instead of when the sweeper
    finds their reservation expired. A settlement that ends later writes nothing."""
    return await admission.settle_lost(list(_held))


inflight.on_abandon("unsettled calls", settle_held_as_lost)


def models_for(*, authorization: str) -> KeyScope:
    plaintext = plaintext_of(authorization)
    if not plaintext:
        raise Unauthorized("missing or malformed bearer key: send 'Authorization: Bearer <key>'")
    return key_scope(plaintext)
