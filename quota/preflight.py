"""The one preflight of a call, for both relays (`/v1` and realtime): SPEC 3 steps 3-10, in the
contract's order, ending in the ledger's admission; and the one map from a refusal to its call
record's outcome.

Steps 1-2 (the bearer's form, the body) are the relay's own, as is writing a refusal's record (each
relay's record names what it knows). The preflight fills its holder as it goes, so a refusal's
record names the key and allocation as far as they were resolved.

Two forms: `preflight` (synchronous, any database, on an accounting thread or a database thread)
decides everything and raises the refusal; `preflight_cached` (the event loop) runs the same
checks from the per-process caches only and admits on the loop, or returns False when it cannot
decide without a query (the caller then runs `preflight` on a thread). The rate limits
(quota.ratelimit) are asked once per call on either path: the thread path keeps the loop's answer
(unless the loop's answer was "stale": its generation check failed and nothing was taken).
"""

import datetime as dt
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from allocations.access import (
    KeyScope,
    ScopedAllocation,
    allocation_check_status,
    key_scope,
    key_scope_cached,
    key_touch,
)
from allocations.exceptions import (
    AllocationPaused,
    AllocationQuarantined,
    AllocationRevoked,
    GatewayError,
    ModelForbidden,
    ModelMismatch,
    Unauthorized,
)
from lib.bounded import BoundedCache
from lib.cache import auth_generation, auth_generation_async, forget_generation, known_generation

from . import ledger, ratelimit
from .exceptions import (
    CostQuotaExceeded,
    ModelKindMismatch,
    ProviderUnavailable,
    QuotaBusy,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    cap_error_named,
)
from .ledger import Admission, threads
from .models import Outcome
from .periods import period_bounds
from .services import price_cached, price_in_force_cached

REJECT_OUTCOMES: dict[type[GatewayError], Outcome] = {
    Unauthorized: Outcome.REJECTED_UNAUTHENTICATED,
    ModelMismatch: Outcome.REJECTED_MODEL_MISMATCH,
    AllocationRevoked: Outcome.REJECTED_REVOKED,
    AllocationPaused: Outcome.REJECTED_PAUSED,
    AllocationQuarantined: Outcome.REJECTED_QUARANTINED,
    ModelForbidden: Outcome.REJECTED_MODEL_FORBIDDEN,
    QuotaExceeded: Outcome.REJECTED_QUOTA_EXCEEDED,
    CostQuotaExceeded: Outcome.REJECTED_COST_QUOTA_EXCEEDED,
    QuotaBusy: Outcome.REJECTED_QUOTA_BUSY,
    RateLimited: Outcome.REJECTED_RATE_LIMITED,
    ModelKindMismatch: Outcome.REJECTED_MODEL_KIND,
    RequestTooLarge: Outcome.REJECTED_BAD_REQUEST,
    ProviderUnavailable: Outcome.UPSTREAM_ERROR,  # the contract has no reject outcome for it
}


def reject_outcome(error: GatewayError) -> Outcome:
    """The outcome a refused call is recorded with: a failure of the gateway's own (5xx) is a
    gateway error, any other refusal a bad request."""
    fallback = Outcome.GATEWAY_ERROR if error.status >= 500 else Outcome.REJECTED_BAD_REQUEST
    return REJECT_OUTCOMES.get(type(error), fallback)


class Holder(Protocol):
    """What the preflight fills in: a relay's call or session state."""

    scope: KeyScope | None
    entry: ScopedAllocation | None
    price: Any
    admission: Admission | None
    rate: ratelimit.Decision | None  # the rate limits' answer, once asked (limited allocations only)
    rate_ticket: ratelimit.Ticket | None  # its place in the limits, given back when it settles


# (reserved tokens, reserved cost) of a call, given the price in force (None: unpriced).
Estimate = Callable[[Any], tuple[int, Decimal | None]]
# The relay's own refusal once the allocation and the price in force are known (the proxy's
# cost-bearing request options: proxy.options), checked before admission; None lets it through.
Check = Callable[[ScopedAllocation, Any], GatewayError | None]


def late_refusal(entry: ScopedAllocation, *, kinds: frozenset[str], surface: str) -> GatewayError | None:
    """Steps 9 and 10, which come after admission in the contract's order."""
    if entry.model_kind not in kinds:
        return ModelKindMismatch(
            f"model '{entry.model_slug}' is a {entry.model_kind} model; {surface} needs " + " or ".join(sorted(kinds))
        )
    if not entry.provider.is_active:
        return ProviderUnavailable(f"the provider of model '{entry.model_slug}' is unavailable")
    return None


def rate_limited(decision: ratelimit.Decision) -> RateLimited:
    return RateLimited(
        "rate limit reached (requests or tokens per minute, or calls in flight, of this allocation or "
        f"its model); retry in {decision.retry_after_s} s",
        retry_after=decision.retry_after_s,
        headers=decision.headers,
    )


def _rate_limit(into: Holder, entry: ScopedAllocation, *, tokens: int, count: bool, lease_s: float | None) -> None:
    """Step 5's rate limits, asked once per call: an answer the event loop already got is kept."""
    if into.rate is None and entry.limits:
        into.rate, into.rate_ticket = ratelimit.admit(entry.limits, tokens=tokens, count=count, lease_s=lease_s)
    if into.rate is not None and not into.rate.allowed:
        raise rate_limited(into.rate)


def rate_release(into: Holder) -> None:
    """Gives back a call's rate-limit place when a later step refuses it (it used no tokens)."""
    ticket, into.rate_ticket = into.rate_ticket, None
    if ticket is not None:
        ratelimit.settle(ticket, tokens=0)


def _admission(entry: ScopedAllocation, estimate: tuple[int, Decimal | None], *, request_id: str, now) -> dict:
    """The ledger's admission arguments for this allocation and estimate (reserved tokens, cost)."""
    return {
        "allocation_id": entry.allocation_id,
        "token_cap": entry.token_cap,
        "cost_cap": entry.cost_cap,
        "est_tokens": estimate[0],
        "est_cost": estimate[1],
        "request_id": request_id,
        "now": now,
    }


def preflight(
    into: Holder,
    *,
    plaintext: str,
    model: str,
    kinds: frozenset[str],
    surface: str,
    request_id: str,
    now: dt.datetime,
    estimate: Estimate,
    generation: int | None = None,
    ttl_s: float | None = None,
    context: Callable[[Holder], dict] | None = None,
    reservation_id: uuid.UUID | None = None,
    in_doubt: bool = False,
    count_request: bool = True,
    check: Check | None = None,
) -> None:
    """Steps 3-10: key, model, allocation status, rate limits, caps and admission, the model's
    kind, the provider. Raises the refusal (a GatewayError); one after admission releases the
    reservation first, one after the rate limits gives their place back. `context` builds what the
    sweeper needs to bill the call if its process dies. `in_doubt`: an earlier attempt under
    `reservation_id` failed without telling whether its admission committed; if it did, that
    admission is the call's (it is never made twice). `count_request` False takes a place among the
    calls in flight without counting a request (a realtime session: its response.create count).
    `check` may refuse the call once its price in force is known, before admission."""
    if generation is None:
        generation = auth_generation()
    into.scope = key_scope(plaintext, generation=generation, now=now)
    into.entry = entry = into.scope.resolve(model)
    allocation_check_status(entry)
    _rate_limit(into, entry, tokens=estimate(None)[0], count=count_request, lease_s=ttl_s)
    try:
        _admit(
            into,
            entry,
            estimate,
            generation=generation,
            request_id=request_id,
            now=now,
            ttl_s=ttl_s,
            context=context,
            reservation_id=reservation_id,
            in_doubt=in_doubt,
            check=check,
        )
        late = late_refusal(entry, kinds=kinds, surface=surface)
        if late is not None:
            ledger.release(admission=into.admission)
            into.admission = None
            raise late
    except GatewayError:
        rate_release(into)  # refused after the rate limits let it through (another error: kept for a retry)
        raise


def _admit(
    into: Holder,
    entry: ScopedAllocation,
    estimate: Estimate,
    *,
    generation: int,
    request_id: str,
    now,
    ttl_s,
    context,
    reservation_id,
    in_doubt: bool,
    check: Check | None = None,
) -> None:
    into.price = price_in_force_cached(model_id=entry.model_id, at=now, generation=generation)
    committed = ledger.reservation_admission(reservation_id=reservation_id) if in_doubt and reservation_id else None
    refusal = check(entry, into.price) if check is not None else None
    if refusal is not None:
        if committed is not None:  # an earlier attempt admitted it before the model's options changed
            ledger.release(admission=committed)
        raise refusal
    try:
        into.admission = committed or ledger.admit(
            **_admission(entry, estimate(into.price), request_id=request_id, now=now),
            ttl_s=ttl_s,
            context=context(into) if context is not None else None,
            reservation_id=reservation_id,
        )
    except (QuotaExceeded, CostQuotaExceeded) as error:
        raise cap_error_named(error, model=entry.model_slug, resets_at=period_bounds(now)[1]) from None


async def preflight_cached(
    into: Holder,
    *,
    plaintext: str,
    model: str,
    kinds: frozenset[str],
    request_id: str,
    now: dt.datetime,
    estimate: Estimate,
    context: Callable[[Holder], dict] | None = None,
    reservation_id: uuid.UUID | None = None,
    check: Check | None = None,
) -> bool:
    """`preflight` from the caches only, admitted on the event loop; True once admitted (`into` is
    filled and the reservation held), False when it cannot decide here: nothing cached, a key due
    for its last-used touch, any refusal, a cap's guard not matched (`into` may then be filled in
    part: `preflight` fills it again). Errors propagate."""
    # A rate-limited call whose key and limits are cached under the generation this process last
    # read lets its rate-limit script check that generation (one Redis round trip for both);
    # any other call reads the generation first.
    known = known_generation()
    warm = _warm(plaintext, model, kinds, known[0], now, check) if known is not None else None
    fused = known is not None and warm is not None and bool(warm[1].limits) and ratelimit.checks_generation(known[1])
    if not fused:
        generation = await auth_generation_async()
        if generation is None:
            return False
        if known is None or generation != known[0]:
            warm = _warm(plaintext, model, kinds, generation, now, check)
    if warm is None:
        return False
    scope, entry, price = warm
    estimated = estimate(price)
    # The rate limits and the admission are asked at once (Redis and PostgreSQL answer in
    # parallel); a call the rate limits refuse (or whose generation moved) gives its reservation back.
    rate = None
    if entry.limits:
        generation_check = (known[0], known[2]) if fused and known is not None else None
        rate = ratelimit.admit_begin(entry.limits, tokens=estimated[0], generation=generation_check)
    into.scope, into.entry, into.price = scope, entry, price
    try:
        into.admission = await ledger.admit_async(
            **_admission(entry, estimated, request_id=request_id, now=now),
            context=context(into) if context is not None else None,
            reservation_id=reservation_id,
        )
    finally:
        if rate is not None:
            into.rate, into.rate_ticket = await rate
    if into.rate is not None and not into.rate.allowed:
        if into.rate is ratelimit.STALE:
            into.rate = None  # nothing was taken: the thread path asks again under the new generation
            forget_generation()
        if into.admission is not None:
            await threads.run(ledger.release, admission=into.admission)
            into.admission = None
        return False  # the thread path records a refusal (without asking again)
    return into.admission is not None


def _warm(
    plaintext: str, model: str, kinds: frozenset[str], generation: int, now: dt.datetime, check: Check | None
) -> tuple[KeyScope, ScopedAllocation, Any] | None:
    """(key scope, allocation, price) when all three are cached under `generation` and nothing
    (`check` included) refuses the call before its limits and caps; else None."""
    scope = key_scope_cached(plaintext, generation=generation, now=now)
    if scope is None or touch_due(scope.key_id):
        return None
    try:
        entry = scope.resolve(model)
        allocation_check_status(entry)
    except GatewayError:
        return None
    if late_refusal(entry, kinds=kinds, surface="") is not None:
        return None
    found, price = price_cached(model_id=entry.model_id, at=now, generation=generation)
    if not found or (check is not None and check(entry, price) is not None):
        return None
    return scope, entry, price


_touched: BoundedCache = BoundedCache(100_000)  # key id -> when this process last touched it (monotonic)


def touch_due(key_id: str) -> bool:
    return time.monotonic() - _touched.get(key_id, -1e9) > 60


def touch(key_id: str, now: dt.datetime) -> None:
    """The key's last use. key_touch is throttled in the database; this saves its no-op UPDATE on
    every call (and keeps the event loop's path free of it: a key due for a touch takes a thread)."""
    if touch_due(key_id):
        _touched[key_id] = time.monotonic()
        key_touch(key_id=key_id, now=now)
