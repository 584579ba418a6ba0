"""The adaptive token pool (SPEC section 8), its plan: the pure rebalance function and the reads
of the pool it plans from. Applying a plan is quota.pool.apply.

Only token quotas (`quota_tokens_per_month`) are ever written here; cost caps are never read or
changed. "Greatest id" means the greatest allocation UUID as a 128-bit number, which is also the
order PostgreSQL gives `uuid` columns.
"""

import datetime as dt
import uuid
from dataclasses import dataclass, field

from django.db.models import Q, Sum
from django.utils import timezone

from allocations.exceptions import GatewayError
from allocations.models import Allocation

from ..models import UsageCounter
from ..periods import previous_period_start
from ..pool_models import PoolConfig, RebalanceLog

BIGINT_MAX = 2**63 - 1
# Scheduled runs act in this window after the period starts (first tick wins; the rest find the log).
SCHEDULE_WINDOW = dt.timedelta(hours=1)


class RebalanceRefused(GatewayError):
    code, status, type = "rebalance_refused", 409, "invalid_request_error"


class RebalanceInvariantBroken(GatewayError):
    code, status, type = "rebalance_invariant_broken", 500, "api_error"


# --- the pure function ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    allocation_id: uuid.UUID
    usage: int
    quota: int
    reason: str


def rebalance(*, total: int, floor: int, reserved: int, pool: list[tuple[uuid.UUID, int]]) -> list[Share]:
    """New token quotas for the pool, in integers only. `pool` is [(allocation id, last period's usage)].

    Raises RebalanceRefused for T = 0, an empty pool, or D < floor × N. The result always satisfies
    Σ quotas + reserved = T and quota ≥ floor (checked here, before anyone writes it).
    """
    if total <= 0:
        raise RebalanceRefused("the pool is off (total_tokens_per_month = 0)")
    if not pool:
        raise RebalanceRefused("no allocation in the pool (no active allocation that is neither service nor locked)")
    n = len(pool)
    distributable = total - reserved
    if distributable < floor * n:
        raise RebalanceRefused(
            f"distributable {distributable} (T {total} − reserved {reserved}) < floor {floor} × {n} allocations"
        )
    total_usage = sum(usage for _, usage in pool)
    by_id = sorted(pool, key=lambda p: p[0].int)
    if total_usage == 0:
        shares = _even_split(distributable, by_id)
    else:
        shares = _proportional(distributable, floor, total_usage, by_id)
    if sum(s.quota for s in shares) + reserved != total or any(s.quota < floor for s in shares):
        raise RebalanceInvariantBroken("rebalance plan breaks Σ quotas + reserved = T")
    return shares


def _even_split(distributable: int, pool: list[tuple[uuid.UUID, int]]) -> list[Share]:
    each, remainder = divmod(distributable, len(pool))
    last = pool[-1][0]  # greatest id
    return [
        Share(
            a,
            usage,
            each + (remainder if a == last else 0),
            "cold start: even split" + (" + remainder" if a == last and remainder else ""),
        )
        for a, usage in pool
    ]


def _proportional(distributable: int, floor: int, total_usage: int, pool: list[tuple[uuid.UUID, int]]) -> list[Share]:
    bonus = distributable - floor * len(pool)
    quotas = {a: floor + bonus * usage // total_usage for a, usage in pool}
    leftover = distributable - sum(quotas.values())
    top = max(pool, key=lambda p: (p[1], p[0].int))[0]  # highest user, ties to the greatest id
    quotas[top] += leftover
    return [
        Share(a, usage, quotas[a], "floor + usage share" + (f" + leftover {leftover}" if a == top and leftover else ""))
        for a, usage in pool
    ]


# --- reading the pool ------------------------------------------------------------------------------


@dataclass
class PoolState:
    total: int
    floor: int
    reserved: int
    usage_period_start: dt.date
    members: list[Allocation] = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    @property
    def distributable(self) -> int:
        return self.total - self.reserved

    @property
    def total_usage(self) -> int:
        return sum(self.usage.get(a.pk, 0) for a in self.members)


def _pool_filter() -> Q:
    return Q(status=Allocation.Status.ACTIVE, is_service_allocation=False, quota_locked=False)


def _reserved_filter() -> Q:
    return Q(status=Allocation.Status.ACTIVE) & (Q(is_service_allocation=True) | Q(quota_locked=True))


def pool_state(*, now: dt.datetime, config: PoolConfig | None = None) -> PoolState:
    """T, reserved, the pool's allocations and their usage of the previous period."""
    config = config or PoolConfig.load()
    usage_start = previous_period_start(now).date()
    reserved = Allocation.objects.filter(_reserved_filter()).aggregate(s=Sum("quota_tokens_per_month"))["s"] or 0
    members = list(Allocation.objects.filter(_pool_filter()).select_related("member", "model").order_by("id"))
    usage = dict(
        UsageCounter.objects.filter(allocation__in=[a.pk for a in members], period_start=usage_start).values_list(
            "allocation_id", "tokens_used"
        )
    )
    return PoolState(config.total_tokens_per_month, config.floor_per_allocation, reserved, usage_start, members, usage)


def pool_plan(state: PoolState) -> list[Share]:
    return rebalance(
        total=state.total,
        floor=state.floor,
        reserved=state.reserved,
        pool=[(a.pk, state.usage.get(a.pk, 0)) for a in state.members],
    )


def pool_suggested_total(state: PoolState) -> int:
    """Reserved + last period's pool usage with 20% headroom, never below reserved + floor × N."""
    return state.reserved + max(state.floor * len(state.members), state.total_usage * 6 // 5)


def pool_overview(*, now: dt.datetime | None = None) -> dict:
    now = now or timezone.now()
    state = pool_state(now=now)
    last = RebalanceLog.objects.first()
    return {
        "total_tokens_per_month": state.total,
        "floor_per_allocation": state.floor,
        "reserved": state.reserved,
        "distributable": state.distributable,
        "pool_size": len(state.members),
        "usage_period_start": state.usage_period_start.isoformat(),
        "last_period_pool_usage": state.total_usage,
        "suggested_total_tokens_per_month": pool_suggested_total(state),
        "last_run": None if last is None else log_describe(last),
    }


def log_describe(log: RebalanceLog) -> dict:
    return {
        "id": str(log.pk),
        "created_at": log.created_at.isoformat(),
        "trigger": log.trigger,
        "outcome": log.outcome,
        "reason": log.reason,
        "total_tokens": log.total_tokens,
        "reserved": log.reserved_tokens,
        "distributable": log.distributable_tokens,
        "pool_size": log.pool_size,
        "skipped": log.skipped,
    }
