"""The /v1 side of ops.observe: a call's state turned into the plain values it reports."""

import time
from typing import TYPE_CHECKING

from django.utils import timezone

from allocations.exceptions import GatewayError
from ops import observe
from quota.admission import reject_outcome
from quota.pricing import Usage, cost_for

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


def settled(call: "Call", *, outcome: str, status: int, usage: Usage, code: str) -> None:
    entry, t0 = call.entry, call.upstream_t0
    observe.call_finished(
        request_id=call.request_id,
        endpoint=call.endpoint.name,
        allocation_id=entry.allocation_id if entry else None,
        model=entry.model_slug if entry else "",
        provider=entry.provider.id if entry else "",
        outcome=outcome,
        status=status,
        usage=usage,
        cost=cost_for(call.price, usage),
        elapsed_s=(timezone.now() - call.plan.started_at).total_seconds(),
        upstream_s=time.perf_counter() - t0 if t0 is not None else None,
        code=code,
        stream=call.stream,
        admitted=_counted_out(call),
    )


def _counted_out(call: "Call") -> bool:
    """Whether the call was counted in the in-flight gauge (then it is counted out, once)."""
    counted, call.in_flight = call.in_flight, False
    return counted
