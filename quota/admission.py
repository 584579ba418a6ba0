"""The one way a call is admitted, settled and released, for both relays (`/v1` and realtime).

A relay describes its call once, as a `Plan` (who asks, for which model and endpoint, what the
request would use); then:

- `admit(plan)` answers an `Admitted` (the reservation, and what the call carries to its
  settlement) or a `Refused` (the error, and who asked as far as it was resolved);
- `refuse(plan, refused, status_code=...)` writes a refused call's record;
- `settle(admitted, ...)` writes the call record, the counters and the release in one statement;
- `release(admitted)` gives an admission back unused.

Each chooses its own path: the event loop when everything it needs is cached under the current
auth generation (key scope, price, counter id) and the statement can run on the loop's own
connections (quota.ledger.loop); otherwise the ledger's accounting threads (quota.ledger.threads),
which decide every refusal. Plans and answers are values: nothing here calls into a relay or
writes into its objects.

SPEC 3 steps 3-10, in the contract's order: key, model, allocation status, rate limits, the
request's cost-bearing options (quota.options) and price, caps and admission, the model's kind,
the provider. The rate limits (quota.ratelimit) are asked once per call on either path: the
thread path keeps the loop's answer (unless it was "stale": its generation check failed and
nothing was taken).
"""

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import Error as DatabaseError
from django.db import connection, transaction
from django.utils import timezone

from allocations.access import (
    KeyScope,
    ScopedAllocation,
    allocation_check_status,
    key_scope,
    key_scope_cached,
    key_touch,
)
from allocations.bounded import BoundedCache
from allocations.cache import auth_generation, auth_generation_async, forget_generation, known_generation
from allocations.exceptions import (
    AllocationPaused,
    AllocationQuarantined,
    AllocationRevoked,
    GatewayError,
    GatewayUnavailable,
    ModelForbidden,
    ModelMismatch,
    Unauthorized,
)

from . import ledger, options, ratelimit
from .billing import bill as billing
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
from .models import CallRecord, Outcome, Reservation
from .periods import period_bounds
from .pricing import Usage
from .services import price_cached, price_in_force_cached

logger = logging.getLogger(__name__)

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


# --- the values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One call as its relay describes it before admission."""

    request_id: str
    endpoint: str  # the call record's endpoint, e.g. "chat.completions", "realtime"
    surface: str  # what a kind refusal names, e.g. "/v1/chat/completions"
    kinds: frozenset[str]  # model kinds the endpoint serves (step 9)
    plaintext: str  # the bearer key ("": none, or a malformed one)
    model: str  # as the client named it ("": none)
    started_at: dt.datetime
    stream: bool = False
    estimate: Usage = Usage()  # what the request would use, before its options are judged
    body: dict | None = None  # judged for its cost-bearing options (quota.options); None: none to judge
    refusal: GatewayError | None = None  # decided before admission (a malformed bearer or body)
    # A session (realtime): nothing reserved up front, a lease the session renews, and a place among
    # the calls in flight without a request counted (its response.create count).
    lease_s: float | None = None
    # Chosen before the first attempt: an attempt that fails without telling whether its admission
    # committed is looked up by it, so the call is never admitted twice.
    reservation_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def identity(
        self, key_id: str | None, member_id: str | None, entry: ScopedAllocation | None, attempts: int = 0
    ) -> dict[str, Any]:
        """A call record's identifying fields, as far as they are known."""
        return {
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "started_at": self.started_at,
            "is_stream": self.stream,
            "api_key_id": key_id,
            "member_id": member_id,
            "allocation_id": entry.allocation_id if entry else None,
            "model_id": entry.model_id if entry else None,
            "deployment_id": entry.deployment_id if entry and attempts else None,
            "attempts": attempts,
        }


@dataclass(frozen=True)
class Admitted:
    """An admitted call: its reservation and what its settlement needs."""

    plan: Plan
    key_id: str
    member_id: str
    entry: ScopedAllocation
    price: Any  # the price version in force (None: unpriced)
    admission: Admission
    estimate: Usage  # what the reservation holds
    removed: tuple[str, ...] = ()  # tools the options' judgement took out of the body
    sent: dict | None = None  # the body to send upstream instead of the plan's (None: the plan's)
    rate_headers: dict[str, str] | None = None  # the x-ratelimit-* headers (limited allocations)
    rate_ticket: ratelimit.Ticket | None = None  # its place in the limits, given back when it settles

    @property
    def outgoing(self) -> dict | None:
        """The body that goes upstream: the client's, less what the judgement removed."""
        return self.plan.body if self.sent is None else self.sent


@dataclass(frozen=True)
class Refused:
    """A refused call: the error, and who asked as far as the preflight resolved it."""

    error: GatewayError
    key_id: str | None = None
    member_id: str | None = None
    entry: ScopedAllocation | None = None
    rate_headers: dict[str, str] | None = None
    in_doubt: bool = False  # an earlier attempt failed unseen: it may have recorded the refusal


@dataclass
class _Opening:
    """What the preflight has resolved so far (private to one admission)."""

    estimate: Usage
    scope: KeyScope | None = None
    entry: ScopedAllocation | None = None
    price: Any = None
    admission: Admission | None = None
    rate: ratelimit.Decision | None = None
    rate_ticket: ratelimit.Ticket | None = None
    removed: tuple[str, ...] = ()
    sent: dict | None = None
    in_doubt: bool = False


# --- admit -----------------------------------------------------------------------------------


_abandoned: set[asyncio.Future] = set()  # settlements of admissions whose caller left (strong references)


def pending() -> list[asyncio.Future]:
    """Settlements this module started on its own (a draining server waits for them)."""
    return list(_abandoned)


async def admit(plan: Plan) -> Admitted | Refused:
    """SPEC 3 steps 3-10 and the admission, on the event loop when the call is warm, else on an
    accounting thread (retried once on a new connection; then GatewayUnavailable is raised).

    If the caller goes away meanwhile, the step still runs to its end (cut short, an admission
    could commit unseen and leave a reservation with no record); a call admitted that way is
    settled at once as client_cancelled (499, no usage: nothing went upstream)."""
    opening = asyncio.ensure_future(_admit(plan, _Opening(estimate=plan.estimate)))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_settle_abandoned)
        raise


def _settle_abandoned(opening: asyncio.Future) -> None:
    if opening.cancelled() or opening.exception() is not None or not isinstance(opening.result(), Admitted):
        return
    task = asyncio.ensure_future(
        settle(opening.result(), outcome=Outcome.CLIENT_CANCELLED, status_code=499, usage=Usage())
    )
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


async def _admit(plan: Plan, opening: _Opening) -> Admitted | Refused:
    if plan.refusal is None and plan.lease_s is None:
        try:
            if await _admit_on_loop(plan, opening):
                return _admitted(plan, opening)
        except Exception:  # noqa: BLE001 - e.g. Redis or the database unreachable: the thread path decides
            opening.in_doubt = True  # the statement may have committed before its connection failed
            logger.warning(
                "admission on the event loop failed for %s; taking the thread path", plan.request_id, exc_info=True
            )
    try:
        answer = await _admit_on_thread(plan, opening)
    except BaseException:
        await _give_back(opening)
        raise
    if isinstance(answer, Refused):
        await _give_back(opening)
    return answer


async def _give_back(opening: _Opening) -> None:
    """A rate-limit place or a reservation the event loop took before the thread path refused."""
    if opening.rate_ticket is not None:
        ticket, opening.rate_ticket = opening.rate_ticket, None
        await ratelimit.settle_async(ticket, tokens=0)
    if opening.admission is not None:
        held, opening.admission = opening.admission, None
        await threads.run(ledger.release, admission=held)


async def _admit_on_thread(plan: Plan, opening: _Opening) -> Admitted | Refused:
    try:
        return await threads.run(admit_on_thread, plan=plan, opening=opening)
    except DatabaseError:
        opening.in_doubt = True
        logger.warning("preflight of %s lost its database connection; retrying once", plan.request_id, exc_info=True)
    try:
        return await threads.run(admit_again, plan=plan, opening=opening)
    except DatabaseError as error:
        raise GatewayUnavailable("the gateway's database is unavailable; retry shortly") from error


def admit_again(*, plan: Plan, opening: _Opening) -> Admitted | Refused:
    """admit_on_thread on a new connection: after one was terminated or lost, this thread's may be dead too."""
    connection.close()
    return admit_on_thread(plan=plan, opening=opening)


def admit_on_thread(*, plan: Plan, opening: _Opening | None = None) -> Admitted | Refused:
    """The whole preflight, synchronously: every refusal is decided here. `opening`: what the
    event loop's attempt resolved and took (kept: the rate limits are not asked twice)."""
    opening = opening or _Opening(estimate=plan.estimate)
    generation = auth_generation()
    try:
        if plan.refusal is not None:
            _attribute(plan, opening, generation)
            raise plan.refusal
        _preflight(plan, opening, generation)
    except GatewayError as error:
        return _refused(error, opening)
    assert opening.scope is not None  # resolved by an admitted preflight
    touch(opening.scope.key_id, plan.started_at)
    return _admitted(plan, opening)


def _attribute(plan: Plan, opening: _Opening, generation: int | None) -> None:
    """Best effort: who made a call refused before its preflight, for its record."""
    if not plan.plaintext:
        return
    try:
        opening.scope = key_scope(plan.plaintext, generation=generation)
        if plan.model:
            opening.entry = opening.scope.resolve(plan.model)
    except GatewayError:
        pass


def _admitted(plan: Plan, opening: _Opening) -> Admitted:
    scope, entry, admission = opening.scope, opening.entry, opening.admission
    assert scope is not None and entry is not None and admission is not None  # an admitted preflight's
    return Admitted(
        plan=plan,
        key_id=scope.key_id,
        member_id=scope.member_id,
        entry=entry,
        price=opening.price,
        admission=admission,
        estimate=opening.estimate,
        removed=opening.removed,
        sent=opening.sent,
        rate_headers=opening.rate.headers if opening.rate is not None else None,
        rate_ticket=opening.rate_ticket,
    )


def _refused(error: GatewayError, opening: _Opening) -> Refused:
    scope = opening.scope
    return Refused(
        error=error,
        key_id=scope.key_id if scope else None,
        member_id=scope.member_id if scope else None,
        entry=opening.entry,
        rate_headers=opening.rate.headers if opening.rate is not None else None,
        in_doubt=opening.in_doubt,
    )


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


def _preflight(plan: Plan, opening: _Opening, generation: int | None) -> None:
    """Steps 3-10; raises the refusal (a GatewayError). One after admission releases the
    reservation first, one after the rate limits gives their place back."""
    if generation is None:
        generation = auth_generation()
    opening.scope = key_scope(plan.plaintext, generation=generation, now=plan.started_at)
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


def _rate_limit(plan: Plan, opening: _Opening, entry: ScopedAllocation) -> None:
    """Step 5's rate limits, asked once per call: an answer the event loop already got is kept."""
    if opening.rate is None and entry.limits:
        opening.rate, opening.rate_ticket = ratelimit.admit(
            entry.limits, tokens=plan.estimate.total_tokens, count=plan.lease_s is None, lease_s=plan.lease_s
        )
    if opening.rate is not None and not opening.rate.allowed:
        raise rate_limited(opening.rate)


def _rate_release(opening: _Opening) -> None:
    ticket, opening.rate_ticket = opening.rate_ticket, None
    if ticket is not None:
        ratelimit.settle(ticket, tokens=0)


def _reserve(plan: Plan, opening: _Opening, entry: ScopedAllocation, generation: int) -> None:
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


def _judge(plan: Plan, opening: _Opening, entry: ScopedAllocation, price: Any) -> GatewayError | None:
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


def _admission_args(plan: Plan, opening: _Opening, entry: ScopedAllocation) -> dict[str, Any]:
    """The ledger's admission arguments: the allocation's caps and the reserved tokens and cost,
    priced by quota.billing's bill (the function that bills the answer). A session reserves
    nothing up front."""
    if plan.lease_s is not None:
        tokens, cost = 0, None if opening.price is None else Decimal(0)
    else:
        tokens, cost = opening.estimate.total_tokens, billing.bill(price=opening.price, usage=opening.estimate).cost
    return {
        "allocation_id": entry.allocation_id,
        "token_cap": entry.token_cap,
        "cost_cap": entry.cost_cap,
        "est_tokens": tokens,
        "est_cost": cost,
        "request_id": plan.request_id,
        "now": plan.started_at,
    }


def _lost_context(plan: Plan, opening: _Opening) -> dict:
    """What the reservation's sweeper bills if this process dies holding the call: the
    admission's estimate (a session: nothing yet; it renews its context as it accrues usage)."""
    scope = opening.scope
    assert scope is not None  # resolved before the admission
    record = plan.identity(scope.key_id, scope.member_id, opening.entry)
    usage = Usage() if plan.lease_s is not None else dataclasses.replace(opening.estimate, estimated=True)
    return ledger.lost_context(record=record, usage=usage, price=opening.price)


# --- the event loop's path -------------------------------------------------------------------


async def _admit_on_loop(plan: Plan, opening: _Opening) -> bool:
    """The preflight from the caches only, admitted on the event loop; True once admitted, False
    when it cannot decide here: nothing cached, a key due for its last-used touch, any refusal, a
    cap's guard not matched (the thread path then decides). Errors propagate."""
    # A rate-limited call whose key and limits are cached under the generation this process last
    # read lets its rate-limit script check that generation (one Redis round trip for both);
    # any other call reads the generation first.
    known = known_generation()
    warm = _warm(plan, opening, known[0]) if known is not None else None
    fused = known is not None and warm is not None and bool(warm[1].limits) and ratelimit.checks_generation(known[1])
    if not fused:
        generation = await auth_generation_async()
        if generation is None:
            return False
        if known is None or generation != known[0]:
            warm = _warm(plan, opening, generation)
    if warm is None:
        return False
    opening.scope, opening.entry, opening.price = warm
    entry = warm[1]
    arguments = _admission_args(plan, opening, entry)
    # The rate limits and the admission are asked at once (Redis and PostgreSQL answer in
    # parallel); a call the rate limits refuse (or whose generation moved) gives its reservation back.
    rate = None
    if entry.limits:
        generation_check = (known[0], known[2]) if fused and known is not None else None
        rate = ratelimit.admit_begin(entry.limits, tokens=arguments["est_tokens"], generation=generation_check)
    try:
        opening.admission = await ledger.admit_async(
            **arguments, context=_lost_context(plan, opening), reservation_id=plan.reservation_id
        )
    finally:
        if rate is not None:
            opening.rate, opening.rate_ticket = await rate
    if opening.rate is not None and not opening.rate.allowed:
        if opening.rate is ratelimit.STALE:
            opening.rate = None  # nothing was taken: the thread path asks again under the new generation
            forget_generation()
        if opening.admission is not None:
            await threads.run(ledger.release, admission=opening.admission)
            opening.admission = None
        return False  # the thread path records a refusal (without asking again)
    return opening.admission is not None


def _warm(plan: Plan, opening: _Opening, generation: int) -> tuple[KeyScope, ScopedAllocation, Any] | None:
    """(key scope, allocation, price) when all three are cached under `generation` and nothing
    (the options' judgement included) refuses the call before its limits and caps; else None."""
    scope = key_scope_cached(plan.plaintext, generation=generation, now=plan.started_at)
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


# --- refuse, settle, release -----------------------------------------------------------------


async def refuse(plan: Plan, refused: Refused | GatewayError, *, status_code: int | None = None) -> None:
    """A refused call's record (no usage, no counter), on an accounting thread. A bare error (a
    refusal the relay decided itself) is attributed to its key and allocation as far as they
    resolve. `status_code`: the record's, when it is not the error's HTTP status (a close code)."""
    await threads.run(record_refusal, plan=plan, refused=refused, status_code=status_code)


def record_refusal(*, plan: Plan, refused: Refused | GatewayError, status_code: int | None) -> None:
    if isinstance(refused, GatewayError):
        opening = _Opening(estimate=plan.estimate)
        _attribute(plan, opening, None)
        refused = _refused(refused, opening)
    error = refused.error
    if refused.in_doubt and CallRecord.objects.filter(request_id=plan.request_id, started_at=plan.started_at).exists():
        return  # the attempt that failed had recorded the refusal
    record = plan.identity(refused.key_id, refused.member_id, refused.entry)
    ledger.record_reject(
        record={
            **record,
            "outcome": reject_outcome(error),
            "status_code": error.status if status_code is None else status_code,
            "error_code": error.code,
            "error_message": error.message[:1000],
        }
    )


async def settle(
    admitted: Admitted,
    *,
    outcome: str,
    status_code: int,
    usage: Usage,
    error_code: str = "",
    error_message: str = "",
    entry: ScopedAllocation | None = None,
    attempts: int = 0,
    close_reason: str | None = None,
    admission: Admission | None = None,
) -> None:
    """The call's one record, its counters and its reservation's release, and its rate-limit
    place given back with the tokens it used. `entry`: the deployment that served it (routed),
    `attempts`: the upstream attempts made; `admission`: the reservation as it stands now (a
    session's grows). A call settles on the event loop when it holds a reservation (grouped with
    the settlements waiting), else on a thread, spooled if the database fails there too; a
    session settles on a thread and writes nothing when the sweeper has billed it already."""
    if admitted.rate_ticket is not None:
        await ratelimit.settle_async(admitted.rate_ticket, tokens=usage.total_tokens)
    record = {
        **admitted.plan.identity(admitted.key_id, admitted.member_id, entry or admitted.entry, attempts),
        "outcome": outcome,
        "status_code": status_code,
        "error_code": error_code,
        "error_message": error_message[:1000],
    }
    held = admission or admitted.admission
    if admitted.plan.lease_s is None:
        await ledger.settle_async(admission=held, record=record, usage=usage, price=admitted.price)
        return
    await threads.run(
        session_settle,
        admission=held,
        record={**record, "close_reason": close_reason},
        usage=usage,
        price=admitted.price,
    )


def session_settle(*, admission: Admission, record: dict, usage: Usage, price: Any) -> CallRecord | None:
    """A session's settlement; None when the sweeper already billed it (its reservation is gone
    and its record written)."""
    with transaction.atomic():
        held = list(Reservation.objects.select_for_update().filter(pk=admission.reservation_id).values("pk"))
        if (
            not held
            and CallRecord.objects.filter(request_id=record["request_id"], endpoint=record["endpoint"]).exists()
        ):
            return None
        return ledger.settle(admission=admission, record=record, usage=usage, price=price, now=timezone.now())


async def release(admitted: Admitted) -> None:
    """Gives an admission back unused: its rate-limit place and its reservation (no record)."""
    if admitted.rate_ticket is not None:
        await ratelimit.settle_async(admitted.rate_ticket, tokens=0)
    await threads.run(ledger.release, admission=admitted.admission)


async def settle_lost(reservation_ids: list[uuid.UUID]) -> int:
    """Calls still unsettled at the end of a shutdown grace become their `worker_lost` records now
    (billed at the admission's estimate); a settlement still writing holds its row and is skipped."""
    if not reservation_ids:
        return 0
    return await threads.run(ledger.reservations_settle_lost, reservation_ids=reservation_ids)
