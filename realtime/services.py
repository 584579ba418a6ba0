"""The accounting steps of a realtime session, each one short synchronous transaction.

The consumer calls them through `database_sync_to_async`; none is ever called while holding a lock
across network I/O. A session holds one reservation for its whole life: admitted like an HTTP call
(SPEC 5) with nothing reserved, grown to the session's accrued usage as it goes, so that every
open session and HTTP call of an allocation together is held to the caps. The reservation's
`context` carries what the sweeper needs to bill the session if its worker dies.
"""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from allocations.access import STATUS_ERRORS, KeyScope, ScopedAllocation, key_scope
from allocations.exceptions import GatewayError, ModelForbidden, Unauthorized
from allocations.model_access import member_access
from allocations.models import Allocation, ApiKey, CatalogModel
from quota import ledger, ratelimit
from quota.billing import caps
from quota.exceptions import CostQuotaExceeded, QuotaExceeded
from quota.group_budgets import group_cap_error
from quota.ledger import Admission
from quota.models import CallRecord, CloseReason, Outcome, PriceVersion, Reservation, UsageCounter
from quota.preflight import preflight, reject_outcome
from quota.pricing import Usage, cost_for

from .close import close_code_for

ENDPOINT = "realtime"
KINDS = frozenset({"realtime"})
LEASE_S = 90  # a live session renews its reservation well before this; the sweeper takes it after


@dataclass
class Session:
    """What an admitted session needs for the rest of its life (plain data, no ORM objects)."""

    request_id: str
    started_at: dt.datetime
    key_id: str
    member_id: str
    entry: ScopedAllocation
    admission: Admission
    price: PriceVersion | None
    rate_ticket: ratelimit.Ticket | None = None  # the session's place among the calls in flight
    attempts: int = 0  # upstream handshakes tried (connect failover across the model's deployments)

    def record(self) -> dict:
        return {
            "deployment_id": self.entry.deployment_id if self.attempts else None,
            "attempts": self.attempts,
            "request_id": self.request_id,
            "allocation_id": self.entry.allocation_id,
            "api_key_id": self.key_id,
            "member_id": self.member_id,
            "model_id": self.entry.model_id,
            "endpoint": ENDPOINT,
            "started_at": self.started_at,
            "is_stream": True,
        }

    def context(self, usage: Usage) -> dict:
        return ledger.lost_context(record=self.record(), usage=usage, price=self.price)


@dataclass
class _Opening:
    """The preflight's holder while a session opens."""

    scope: KeyScope | None = None
    entry: ScopedAllocation | None = None
    price: PriceVersion | None = None
    admission: Admission | None = None
    rate: ratelimit.Decision | None = None
    rate_ticket: ratelimit.Ticket | None = None


def _nothing_reserved(price) -> tuple[int, Decimal | None]:
    """A session starts holding nothing; its reservation grows with the usage (session_watch)."""
    return 0, None if price is None else Decimal(0)


def session_open(*, plaintext: str, model: str, request_id: str, now: dt.datetime) -> Session:
    """The shared preflight (SPEC 3 steps 3-10) and admission. Raises a GatewayError on any reject."""
    opening = _Opening()

    def context(held) -> dict:
        unadmitted = Session(request_id, now, held.scope.key_id, held.scope.member_id, held.entry, None, held.price)  # type: ignore[arg-type]
        return unadmitted.context(Usage())

    preflight(
        opening,
        plaintext=plaintext,
        model=model,
        kinds=KINDS,
        surface="/v1/realtime",
        request_id=request_id,
        now=now,
        estimate=_nothing_reserved,
        ttl_s=LEASE_S,
        context=context,
        count_request=False,  # a session holds a place in flight; its response.create are the requests
    )
    assert opening.scope and opening.entry and opening.admission  # filled by an admitted preflight
    scope = opening.scope
    return Session(
        request_id,
        now,
        scope.key_id,
        scope.member_id,
        opening.entry,
        opening.admission,
        opening.price,
        opening.rate_ticket,
    )


def session_reject(*, error: GatewayError, request_id: str, now: dt.datetime, scope_hint: dict | None = None) -> None:
    """The call record of a handshake the preflight refused (no session, no usage)."""
    ledger.record_reject(
        record={
            "request_id": request_id,
            "endpoint": ENDPOINT,
            "started_at": now,
            "status_code": close_code_for(error),
            "outcome": reject_outcome(error),
            "error_code": error.code,
            "error_message": error.message[:1000],
            "is_stream": True,
            **(scope_hint or {}),
        },
        now=now,
    )


def session_scope_hint(*, plaintext: str, model: str) -> dict:
    """Who a rejected handshake belonged to, as far as it can be told (for the reject's record)."""
    try:
        scope = key_scope(plaintext)
    except GatewayError:
        return {}
    hint = {"api_key_id": scope.key_id, "member_id": scope.member_id}
    try:
        entry = scope.resolve(model)
    except GatewayError:
        return hint
    return {**hint, "allocation_id": entry.allocation_id, "model_id": entry.model_id}


@dataclass(frozen=True)
class WatchState:
    reason: GatewayError | None  # why the session must end, else None
    admission: Admission
    capped: bool = True  # the allocation or a group of the member has a cap (as last read)


COUNTER_FIELDS = ("tokens_used", "tokens_reserved", "cost_used", "cost_reserved", "allocation_id")


def _cap_reason(*, counter: UsageCounter | None, allocation: Allocation, priced: bool) -> GatewayError | None:
    hit = caps.caps_hit(  # no counter yet: nothing used, so only a cap of 0 holds
        tokens_used=counter.tokens_used if counter else 0,
        tokens_reserved=counter.tokens_reserved if counter else 0,
        token_cap=allocation.quota_tokens_per_month,
        cost_used=counter.cost_used if counter else 0,
        cost_reserved=counter.cost_reserved if counter else 0,
        cost_cap=allocation.quota_cost_usd_per_month,
        priced=priced,
    )
    return {caps.TOKENS: QuotaExceeded(), caps.COST: CostQuotaExceeded()}.get(hit) if hit else None


def session_watch(*, session: Session, usage: Usage | None, full: bool, now: dt.datetime) -> WatchState:
    """Grows the reservation to `usage` (when given), renews its lease, and tells whether the
    session must close: caps always, key/member/allocation status when `full`."""
    admission = session.admission
    if usage is not None:
        cost = cost_for(session.price, usage) or Decimal(0)
        admission = ledger.adjust(
            admission=admission,
            tokens=usage.total_tokens,
            cost=cost,
            context=session.context(usage),
            expires_at=now + dt.timedelta(seconds=LEASE_S),
        )
        session.admission = admission
    counter = (
        UsageCounter.objects.select_related("allocation")
        .only(
            *COUNTER_FIELDS,
            "allocation__status",
            "allocation__quota_tokens_per_month",
            "allocation__quota_cost_usd_per_month",
        )
        .filter(pk=admission.counter_id)
        .first()
    )
    allocation = counter.allocation if counter else Allocation.objects.get(pk=session.entry.allocation_id)
    capped = allocation.quota_tokens_per_month is not None or allocation.quota_cost_usd_per_month is not None
    if full:
        key = (
            ApiKey.objects.select_related("member")
            .only("revoked_at", "expires_at", "member__is_active")
            .get(pk=session.key_id)
        )
        if key.is_revoked or key.is_expired(now) or not key.member.is_active:
            return WatchState(Unauthorized(), admission, capped)
    status_error = STATUS_ERRORS.get(allocation.status)
    if status_error is not None:
        return WatchState(status_error, admission, capped)
    if full:
        # The member may have lost the model (a group or the model's access policy changed).
        decision = member_access(member=key.member, model=CatalogModel.objects.get(pk=session.entry.model_id))
        if not decision.allowed:
            return WatchState(ModelForbidden(decision.refusal or ""), admission, capped)
    reason = _cap_reason(counter=counter, allocation=allocation, priced=session.price is not None)
    if reason is None and (admission.groups or full):
        # The member's groups' caps, read each time (a cap set during the session counts too).
        reason = group_cap_error(
            member_id=session.member_id,
            priced=session.price is not None,
            held_ids=admission.held,
            tokens=admission.tokens,
            cost=admission.cost,
            now=now,
        )
        capped = capped or bool(admission.held) or reason is not None
    return WatchState(reason, admission, capped)


def session_settle(
    *,
    session: Session,
    usage: Usage,
    outcome: Outcome,
    close_reason: CloseReason,
    close_code: int,
    error_code: str = "",
) -> CallRecord | None:
    """The session's single call record. Returns None when the sweeper already billed it."""
    now = timezone.now()
    record = {
        **session.record(),
        "status_code": close_code,
        "outcome": outcome,
        "close_reason": close_reason,
        "error_code": error_code,
    }
    with transaction.atomic():
        held = list(Reservation.objects.select_for_update().filter(pk=session.admission.reservation_id).values("pk"))
        if not held and CallRecord.objects.filter(request_id=session.request_id, endpoint=ENDPOINT).exists():
            return None
        return ledger.settle(admission=session.admission, record=record, usage=usage, price=session.price, now=now)
