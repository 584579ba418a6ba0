"""The /v1 side of ops.observe: a call's state turned into the plain values it reports."""

import time

from django.utils import timezone

from allocations.exceptions import GatewayError
from ops import observe
from quota.preflight import reject_outcome
from quota.pricing import Usage, cost_for

from . import accounting

UPSTREAM_T0 = "upstream_t0"  # Call.extra: perf_counter() when the call was sent upstream
IN_FLIGHT = "in_flight"  # Call.extra: counted in the in-flight gauge


def upstream_sent(call: accounting.Call) -> None:
    call.extra[UPSTREAM_T0] = time.perf_counter()


def admitted(call: accounting.Call) -> None:
    call.extra[IN_FLIGHT] = True
    observe.call_admitted()


def refused(call: accounting.Call, error: GatewayError) -> None:
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


def settled(call: accounting.Call, *, outcome: str, status: int, usage: Usage, code: str) -> None:
    entry, t0 = call.entry, call.extra.get(UPSTREAM_T0)
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
        elapsed_s=(timezone.now() - call.started_at).total_seconds(),
        upstream_s=time.perf_counter() - t0 if t0 is not None else None,
        code=code,
        stream=call.stream,
        admitted=call.extra.pop(IN_FLIGHT, False),
    )
