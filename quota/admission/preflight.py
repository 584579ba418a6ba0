"""The preflight of a call's plan: SPEC 3 steps 3-10, in the contract's order (key, model,
allocation status, rate limits, the request's cost-bearing options (quota.options) and price,
caps and admission, the model's kind, the provider), synchronously (`preflight`, on a ledger
thread: it decides every refusal) or from the per-process caches on the event loop
(`admit_on_loop`, which admits or declines, never refuses); and the one map from a refusal to its
call record's outcome. The rate limits (quota.ratelimit) are asked once per call on either path:
the thread path keeps the loop's answer unless the limits it was asked under have changed since.
"""

import asyncio
import dataclasses
import datetime as dt
import time
from decimal import Decimal
from typing import Any, TypeAlias

from django.db import Error as DatabaseError

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
from lib.cache import auth_generation, known_generation

from .. import ledger, options, ratelimit
from ..billing import bill as billing
from ..exceptions import (
    CostQuotaExceeded,
    GroupCostQuotaExceeded,
    GroupQuotaExceeded,
    ModelKindMismatch,
    ProviderUnavailable,
    QuotaBusy,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    cap_error_named,
)
from ..ledger import threads
from ..models import Outcome
from ..periods import period_bounds
from ..pricing import Usage
from ..services import price_cached, price_in_force_cached
from .plan import Opening, Plan

REJECT_OUTCOMES: dict[type[GatewayError], Outcome] = {
    Unauthorized: Outcome.REJECTED_UNAUTHENTICATED,
    ModelMismatch: Outcome.REJECTED_MODEL_MISMATCH,
    AllocationRevoked: Outcome.REJECTED_REVOKED,
    AllocationPaused: Outcome.REJECTED_PAUSED,
    AllocationQuarantined: Outcome.REJECTED_QUARANTINED,
    ModelForbidden: Outcome.REJECTED_MODEL_FORBIDDEN,
    QuotaExceeded: Outcome.REJECTED_QUOTA_EXCEEDED,
    CostQuotaExceeded: Outcome.REJECTED_COST_QUOTA_EXCEEDED,
    GroupQuotaExceeded: Outcome.REJECTED_GROUP_QUOTA_EXCEEDED,
    GroupCostQuotaExceeded: Outcome.REJECTED_GROUP_COST_QUOTA_EXCEEDED,
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


def attribute(plan: Plan, opening: Opening, generation: int | None) -> None:
    """Best effort: who made a call refused before its preflight, for its record."""
    if not plan.plaintext:
        return
    try:
        opening.scope = key_scope(plan.plaintext, generation=generation, digest=plan.key_digest)
        if plan.model:
            opening.entry = opening.scope.resolve(plan.model)
    except (GatewayError, DatabaseError):  # the database away: the record says what it can
        pass


# --- the preflight's steps -------------------------------------------------------------------


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


def preflight(plan: Plan, opening: Opening, generation: int | None) -> None:
    """Steps 3-10; raises the refusal (a GatewayError). One after admission releases the
    reservation first, one after the rate limits gives their place back."""
    if generation is None:
        generation = auth_generation()
    opening.scope = key_scope(plan.plaintext, generation=generation, now=plan.started_at, digest=plan.key_digest)
    opening.entry = entry = opening.scope.resolve(plan.model)
    allocation_check_status(entry)
    _rate_limit(plan, opening, entry)
    try:
        _reserve(plan, opening, entry, generation)
        late = late_refusal(entry, kinds=plan.kinds, surface=plan.surface)
        if late is not None:
            ledger.release(admission=opening.admission)
            opening.admission = None
            raise late
    except GatewayError:
        _rate_release(opening)  # refused after the rate limits let it through (another error: kept for a retry)
        raise


def _rate_limit(plan: Plan, opening: Opening, entry: ScopedAllocation) -> None:
    """Step 5's rate limits, asked once per call: an answer the event loop already got is kept,
    unless it was asked under other limits than the key's snapshot now has (the auth generation
    moved with a change of them): its place is given back and the limits asked again."""
    if opening.rate is not None and opening.rate_limits != entry.limits:
        _rate_release(opening)
        opening.rate = None
    if opening.rate is None and entry.limits:
        opening.rate, opening.rate_ticket = ratelimit.admit(
            entry.limits, tokens=plan.estimate.total_tokens, count=plan.lease_s is None, lease_s=plan.lease_s
        )
        opening.rate_limits = entry.limits
    if opening.rate is not None and not opening.rate.allowed:
        raise rate_limited(opening.rate)


def _rate_release(opening: Opening) -> None:
    ticket, opening.rate_ticket = opening.rate_ticket, None
    if ticket is not None:
        ratelimit.settle(ticket, tokens=0)


def _reserve(plan: Plan, opening: Opening, entry: ScopedAllocation, generation: int) -> None:
    """The price in force, the options' judgement, the caps and the reservation."""
    opening.price = price_in_force_cached(model_id=entry.model_id, at=plan.started_at, generation=generation)
    in_doubt = opening.in_doubt
    committed = ledger.reservation_admission(reservation_id=plan.reservation_id) if in_doubt else None
    refusal = _judge(plan, opening, entry, opening.price)
    if refusal is not None:
        if committed is not None:  # an earlier attempt admitted it before the model's options changed
            ledger.release(admission=committed)
        raise refusal
    try:
        opening.admission = committed or ledger.admit(
            **_admission_args(plan, opening, entry),
            ttl_s=plan.lease_s,
            context=_lost_context(plan, opening),
            reservation_id=plan.reservation_id,
        )
    except (QuotaExceeded, CostQuotaExceeded) as error:
        raise cap_error_named(error, model=entry.model_slug, resets_at=period_bounds(plan.started_at)[1]) from None


def _judge(plan: Plan, opening: Opening, entry: ScopedAllocation, price: Any) -> GatewayError | None:
    """The cost-bearing request options against the model's switch, tool rules and price
    (quota.options), judged from the client's body each time (the thread path decides the same as
    the loop's): a refusal, or what goes upstream and what the reservation holds."""
    opening.estimate, opening.removed, opening.sent = plan.estimate, (), None
    if plan.body is None:
        return None
    verdict = options.judge(entry=entry, price=price, endpoint_name=plan.endpoint, body=plan.body, stream=plan.stream)
    if verdict.error is not None:
        return verdict.error
    opening.removed, opening.sent = verdict.removed, verdict.body
    if verdict.removed:  # the reservation holds no call of a removed tool
        facts = options.facts(plan.endpoint, verdict.body or {})
        kept = dataclasses.replace(plan.estimate, tool_calls=())
        opening.estimate = billing.billed_usage(facts=facts, usage=kept, estimate=True)
    return None


def _admission_args(plan: Plan, opening: Opening, entry: ScopedAllocation) -> dict[str, Any]:
    """The ledger's admission arguments: the allocation's caps and the reserved tokens and cost,
    priced by quota.billing's bill (the function that bills the answer), and the member's groups
    (a capped group holds the same reservation: quota.ledger.groups). A session reserves nothing
    up front."""
    assert opening.scope is not None  # resolved before the admission
    if plan.lease_s is not None:
        tokens, cost = 0, None if opening.price is None else Decimal(0)
    else:
        tokens, cost = opening.estimate.total_tokens, billing.bill(price=opening.price, usage=opening.estimate).cost
    return {
        "groups": opening.scope.groups,
        "allocation_id": entry.allocation_id,
        "token_cap": entry.token_cap,
        "cost_cap": entry.cost_cap,
        "est_tokens": tokens,
        "est_cost": cost,
        "request_id": plan.request_id,
        "now": plan.started_at,
    }


def _lost_context(plan: Plan, opening: Opening) -> dict:
    """What the reservation's sweeper bills if this process dies holding the call: the
    admission's estimate (a session: nothing yet; it renews its context as it accrues usage)."""
    scope = opening.scope
    assert scope is not None  # resolved before the admission
    record = plan.identity(scope.key_id, scope.member_id, opening.entry)
    if plan.lease_s is not None:
        return ledger.lost_context(record=record, usage=Usage(), price=opening.price)
    return ledger.lost_context(record=record, usage=opening.estimate, price=opening.price, estimated=True)


# --- the event loop's path -------------------------------------------------------------------


# quota.admission.admit's `early`: answered with the allocation and the body that go upstream.
Early: TypeAlias = asyncio.Future[tuple[ScopedAllocation, dict | None]]


async def admit_on_loop(plan: Plan, opening: Opening, early: Early | None = None) -> bool:
    """The preflight from the caches only, admitted on the event loop; True once admitted, False
    when it cannot decide here: no generation read yet, nothing cached under it, a key due for its
    last-used touch, any refusal, a cap's guard not matched, the auth generation moved (the thread
    path then decides). Errors propagate. `early`: quota.admission.admit's, answered as the
    statement is sent."""
    # The key, allocation and price cached under the generation this process last read; the
    # admission statement reserves only while that generation is still the current one (lib.cache),
    # so no read of it comes first. A rate-limited call asks its limits in Redis meanwhile.
    known = known_generation()
    warm = _warm(plan, opening, known) if known is not None else None
    if known is None or warm is None:
        return False
    opening.scope, opening.entry, opening.price = warm
    entry = warm[1]
    arguments = _admission_args(plan, opening, entry)
    # The rate limits and the admission are asked at once (Redis and PostgreSQL answer in
    # parallel); a call the rate limits refuse gives its reservation back. A miss of the admission
    # (a cap, or the generation moved) keeps the limits' answer for the thread path, which asks
    # them again only if they changed with the generation (_rate_limit).
    rate = None
    if entry.limits:
        rate = ratelimit.admit_begin(entry.limits, tokens=arguments["est_tokens"])
    if early is not None and not early.done():  # its waiters' turn comes once the statement below has left
        early.set_result((entry, plan.body if opening.sent is None else opening.sent))
    try:
        opening.admission = await ledger.admit_async(
            **arguments, context=_lost_context(plan, opening), reservation_id=plan.reservation_id, generation=known
        )
    finally:
        if rate is not None:
            opening.rate, opening.rate_ticket = await rate
            opening.rate_limits = entry.limits
    if opening.rate is not None and not opening.rate.allowed:
        await _give_back(opening)
        return False  # the thread path records a refusal (without asking again)
    return opening.admission is not None


async def _give_back(opening: Opening) -> None:
    if opening.admission is not None:
        held, opening.admission = opening.admission, None
        await threads.run(ledger.release, admission=held)


def _warm(plan: Plan, opening: Opening, generation: int) -> tuple[KeyScope, ScopedAllocation, Any] | None:
    """(key scope, allocation, price) when all three are cached under `generation` and nothing
    (the options' judgement included) refuses the call before its limits and caps; else None."""
    scope = key_scope_cached(plan.plaintext, generation=generation, now=plan.started_at, digest=plan.key_digest)
    if scope is None or touch_due(scope.key_id):
        return None
    try:
        entry = scope.resolve(plan.model)
        allocation_check_status(entry)
    except GatewayError:
        return None
    if late_refusal(entry, kinds=plan.kinds, surface="") is not None:
        return None
    found, price = price_cached(model_id=entry.model_id, at=plan.started_at, generation=generation)
    if not found or _judge(plan, opening, entry, price) is not None:
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
