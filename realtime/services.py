"""The accounting of a realtime session between its admission and its settlement (both
quota.admission's: the consumer plans, admits and settles there).

A session holds one reservation for its whole life: admitted like an HTTP call (SPEC 5) with
nothing reserved, grown to the session's accrued usage as it goes (`session_watch`, one short
synchronous transaction, never holding a lock across network I/O), so that every open session and
HTTP call of an allocation together is held to the caps. The reservation's `context` carries what
the sweeper needs to bill the session if its worker dies.
"""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from allocations.access import STATUS_ERRORS, ScopedAllocation
from allocations.exceptions import GatewayError, ModelForbidden, Unauthorized
from allocations.model_access import member_access
from allocations.models import Allocation, ApiKey, CatalogModel
from quota import ledger, ratelimit
from quota.admission import Admitted, Plan
from quota.billing import caps
from quota.exceptions import CostQuotaExceeded, QuotaExceeded
from quota.group_budgets import group_cap_error
from quota.ledger import Admission
from quota.models import PriceVersion, UsageCounter
from quota.pricing import Usage, cost_for

ENDPOINT = "realtime"
KINDS = frozenset({"realtime"})
LEASE_S = 90  # a live session renews its reservation well before this; the sweeper takes it after


def session_plan(*, request_id: str, plaintext: str, model: str, now: dt.datetime) -> Plan:
    """A session as quota.admission judges it: nothing reserved up front, a lease, no request counted."""
    return Plan(
        request_id=request_id,
        endpoint=ENDPOINT,
        surface="/v1/realtime",
        kinds=KINDS,
        plaintext=plaintext,
        model=model,
        started_at=now,
        stream=True,
        lease_s=LEASE_S,
    )


@dataclass
class Session:
    """What an admitted session needs for the rest of its life (plain data, no ORM objects)."""

    admitted: Admitted
    entry: ScopedAllocation  # the deployment it is connected to (routed at connect)
    admission: Admission  # as it stands: it grows with the session's usage
    attempts: int = 0  # upstream handshakes tried (connect failover across the model's deployments)

    @classmethod
    def of(cls, admitted: Admitted) -> "Session":
        return cls(admitted, admitted.entry, admitted.admission)

    @property
    def request_id(self) -> str:
        return self.admitted.plan.request_id

    @property
    def started_at(self) -> dt.datetime:
        return self.admitted.plan.started_at

    @property
    def key_id(self) -> str:
        return self.admitted.key_id

    @property
    def price(self) -> PriceVersion | None:
        return self.admitted.price

    @property
    def rate_ticket(self) -> ratelimit.Ticket | None:
        return self.admitted.rate_ticket

    def record(self) -> dict:
        return self.admitted.plan.identity(self.key_id, self.admitted.member_id, self.entry, self.attempts)

    def context(self, usage: Usage) -> dict:
        return ledger.lost_context(record=self.record(), usage=usage, price=self.price)


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
            member_id=session.admitted.member_id,
            priced=session.price is not None,
            held_ids=admission.held,
            tokens=admission.tokens,
            cost=admission.cost,
            now=now,
        )
        capped = capped or bool(admission.held) or reason is not None
    return WatchState(reason, admission, capped)
