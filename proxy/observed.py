"""The /v1 side of ops.observe: a call's state turned into the plain values it reports."""

import asyncio
import time
from decimal import Decimal
from typing import TYPE_CHECKING

from allocations.exceptions import GatewayError
from lib.conf import now
from ops import observe
from quota.admission import reject_outcome
from quota.pricing import Usage

if TYPE_CHECKING:
    from .accounting import Call


def admitted(call: "Call") -> None:
    call.in_flight = True
    observe.call_admitted()


def refused(call: "Call", error: GatewayError) -> None:
    outcome = reject_outcome(error)
    entry = call.entry
    observe.call_refused(
        request_id=call.request_id,
        endpoint=call.endpoint.name,
        allocation_id=entry.allocation_id if entry else None,
        model=entry.model_slug if entry else "",
        outcome=outcome,
        status=error.status,
        code=error.code,
    )


def settled_soon(call: "Call", *, outcome: str, status: int, usage: Usage, cost: Decimal | None, code: str) -> None:
    """The settled call's metrics and call line (ops.observe.call_finished), made in the event
    loop's next turn (after what this step and the callbacks already scheduled do), with the
    call's times as they are now. `cost`: the call's bill's (None: unpriced), as its record has it."""
    t0 = call.upstream_t0
    elapsed_s = (now() - call.plan.started_at).total_seconds()
    upstream_s = time.perf_counter() - t0 if t0 is not None else None
    asyncio.get_running_loop().call_soon(_settled, call, outcome, status, usage, cost, code, elapsed_s, upstream_s)


def _settled(
    call: "Call",
    outcome: str,
    status: int,
    usage: Usage,
    cost: Decimal | None,
    code: str,
    elapsed_s: float,
    upstream_s: float | None,
) -> None:
    entry = call.entry
    observe.call_finished(
        request_id=call.request_id,
        endpoint=call.endpoint.name,
        allocation_id=entry.allocation_id if entry else None,
        model=entry.model_slug if entry else "",
        provider=entry.provider.id if entry else "",
        outcome=outcome,
        status=status,
        usage=usage,
        cost=cost,
        elapsed_s=elapsed_s,
        upstream_s=upstream_s,
        code=code,
        stream=call.stream,
        admitted=_counted_out(call),
    )


def _counted_out(call: "Call") -> bool:
    """Whether the call was counted in the in-flight gauge (then it is counted out, once)."""
    counted, call.in_flight = call.in_flight, False
    return counted
