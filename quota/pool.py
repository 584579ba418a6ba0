"""The adaptive token pool (SPEC section 8): the pure rebalance function and the services that
read the pool, apply a plan, log it and audit it.

Only token quotas (`quota_tokens_per_month`) are ever written here; cost caps are never read or
changed. "Greatest id" means the greatest allocation UUID as a 128-bit number, which is also the
order PostgreSQL gives `uuid` columns.
"""

import datetime as dt
import uuid
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from allocations.audit import audit_record
from allocations.cache import bump_auth_generation
from allocations.exceptions import BadRequest, GatewayError
from allocations.models import Allocation

from .models import UsageCounter
from .periods import billing_tz, period_bounds, previous_period_start
from .pool_models import PoolConfig, RebalanceEntry, RebalanceLog

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


# --- config ------------------------------------------------------------------------------------------

CONFIG_FIELDS = ("total_tokens_per_month", "floor_per_allocation")


def _clean_tokens(name: str, value) -> int:
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]})
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]}) from None
    if not 0 <= number <= BIGINT_MAX:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]})
    return number


def pool_config_update(*, changes: dict, actor=None, source_ip=None) -> PoolConfig:
    """Validates everything before writing; audits `pool_config_updated` with before and after."""
    unknown = set(changes) - set(CONFIG_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown or read-only fields: {', '.join(sorted(unknown))}",
            fields={name: ["Unknown or read-only field."] for name in sorted(unknown)},
        )
    clean = {name: _clean_tokens(name, value) for name, value in changes.items()}
    with transaction.atomic():
        PoolConfig.load()
        config = PoolConfig.objects.select_for_update().get(pk=PoolConfig.SINGLETON_PK)
        changed = {f: v for f, v in clean.items() if getattr(config, f) != v}
        if not changed:
            return config
        before = {f: getattr(config, f) for f in changed}
        for name, value in changed.items():
            setattr(config, name, value)
        config.save(update_fields=[*changed, "updated_at"])
        audit_record(
            actor=actor, action="pool_config_updated", target=config, source_ip=source_ip, before=before, after=changed
        )
    return config


# --- applying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebalanceResult:
    log: RebalanceLog | None
    shares: list[Share]
    refused: str = ""
    duplicate: bool = False


def pool_rebalance(
    *, trigger: str, actor=None, now: dt.datetime | None = None, period_key: str | None = None
) -> RebalanceResult:
    """Plans and applies a rebalance, serialised by a lock on the pool config row.

    With `period_key` (scheduled runs) it happens at most once per key: a second run finds the log
    and changes nothing (the unique index backs this up across database sessions).
    """
    now = now or timezone.now()
    try:
        with transaction.atomic():
            config = _locked_config()
            if period_key and RebalanceLog.objects.filter(period_key=period_key).exists():
                return RebalanceResult(None, [], duplicate=True)
            state = pool_state(now=now, config=config)
            try:
                shares = pool_plan(state)
            except RebalanceRefused as exc:
                log = _refusal_record(
                    state=state, reason=exc.message, trigger=trigger, actor=actor, now=now, key=period_key
                )
                return RebalanceResult(log, [], refused=exc.message)
            log = pool_apply_plan(
                state=state, shares=shares, trigger=trigger, actor=actor, now=now, period_key=period_key
            )
    except IntegrityError:
        if period_key and RebalanceLog.objects.filter(period_key=period_key).exists():
            return RebalanceResult(None, [], duplicate=True)
        raise
    transaction.on_commit(bump_auth_generation)
    return RebalanceResult(log, shares)


def _locked_config() -> PoolConfig:
    PoolConfig.load()
    return PoolConfig.objects.select_for_update().get(pk=PoolConfig.SINGLETON_PK)


def _new_log(*, state: PoolState, trigger, actor, now, key, outcome, reason="", cold=False) -> RebalanceLog:
    return RebalanceLog.objects.create(
        created_at=now,
        trigger=trigger,
        actor=actor if getattr(actor, "pk", None) else None,
        outcome=outcome,
        reason=reason[:500],
        period_key=key,
        usage_period_start=state.usage_period_start,
        total_tokens=state.total,
        floor_per_allocation=state.floor,
        reserved_tokens=state.reserved,
        distributable_tokens=state.distributable,
        pool_size=len(state.members),
        total_usage=state.total_usage,
        cold_start=cold,
    )


def _summary(state: PoolState) -> dict:
    return {
        "total_tokens_per_month": state.total,
        "floor_per_allocation": state.floor,
        "reserved": state.reserved,
        "distributable": state.distributable,
        "pool_size": len(state.members),
        "usage_period_start": state.usage_period_start.isoformat(),
        "total_usage": state.total_usage,
    }


def _refusal_record(*, state, reason, trigger, actor, now, key) -> RebalanceLog:
    log = _new_log(state=state, trigger=trigger, actor=actor, now=now, key=key, outcome="refused", reason=reason)
    audit_record(
        actor=actor,
        action="quota_pool_rebalance_refused",
        target=log,
        now=now,
        after={**_summary(state), "reason": reason, "trigger": trigger},
    )
    return log


def pool_apply_plan(
    *, state: PoolState, shares: list[Share], trigger: str, actor, now, period_key=None
) -> RebalanceLog:
    """Writes a plan in one transaction. Each UPDATE is guarded by the pool conditions, so an
    allocation that became service, locked or inactive since `state` was read keeps its quota."""
    if sum(s.quota for s in shares) + state.reserved != state.total:
        raise RebalanceInvariantBroken("rebalance plan breaks Σ quotas + reserved = T")
    before = {a.pk: a.quota_tokens_per_month for a in state.members}
    cold = state.total_usage == 0
    with transaction.atomic():
        log = _new_log(state=state, trigger=trigger, actor=actor, now=now, key=period_key, outcome="applied", cold=cold)
        entries, skipped = [], 0
        for share in shares:
            applied = _guarded_set(share=share, before=before.get(share.allocation_id), actor=actor, log=log, now=now)
            skipped += not applied
            reason = share.reason if applied else "skipped: no longer an active pool allocation"
            entries.append(
                RebalanceEntry(
                    log=log,
                    allocation_id=share.allocation_id,
                    quota_before=before.get(share.allocation_id),
                    quota_after=share.quota if applied else before.get(share.allocation_id),
                    usage=share.usage,
                    reason=reason,
                    applied=applied,
                )
            )
        RebalanceEntry.objects.bulk_create(entries)
        if skipped:
            log.skipped = skipped
            log.save(update_fields=["skipped"])
        audit_record(
            actor=actor,
            action="quota_pool_rebalanced",
            target=log,
            now=now,
            after={
                **_summary(state),
                "trigger": trigger,
                "cold_start": cold,
                "changed": len(shares) - skipped,
                "skipped": skipped,
            },
        )
    return log


def _guarded_set(*, share: Share, before, actor, log: RebalanceLog, now) -> bool:
    updated = Allocation.objects.filter(_pool_filter(), pk=share.allocation_id).update(
        quota_tokens_per_month=share.quota, updated_at=now
    )
    if updated and before != share.quota:
        audit_record(
            actor=actor,
            action="allocation_token_quota_updated",
            target=Allocation(pk=share.allocation_id),
            now=now,
            before={"quota_tokens_per_month": before},
            after={"quota_tokens_per_month": share.quota, "rebalance_log": log.pk},
        )
    return bool(updated)


# --- the schedule --------------------------------------------------------------------------------------


def period_key_for(now: dt.datetime) -> str:
    start, _ = period_bounds(now)
    return f"{start:%Y-%m}"


def pool_rebalance_scheduled(*, now: dt.datetime | None = None) -> RebalanceResult | None:
    """Called by beat every minute: acts only within SCHEDULE_WINDOW after the period starts in
    GATEWAY_BILLING_TIMEZONE, and at most once per period. Returns None outside the window."""
    now = now or timezone.now()
    start, _ = period_bounds(now, billing_tz())
    if now - start >= SCHEDULE_WINDOW:
        return None
    return pool_rebalance(trigger=RebalanceLog.Trigger.SCHEDULE, now=now, period_key=period_key_for(now))
