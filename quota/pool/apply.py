"""The adaptive token pool, applied: its configuration, applying a plan (guarded per allocation,
logged and audited) and the monthly schedule.

Only token quotas (`quota_tokens_per_month`) are ever written here; cost caps are never read or
changed.
"""

import datetime as dt
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from allocations.audit import Actor, actor_member, audit_record
from allocations.exceptions import BadRequest
from allocations.models import Allocation
from lib.cache import bump_auth_generation

from ..periods import billing_tz, period_bounds
from ..pool_models import PoolConfig, RebalanceEntry, RebalanceLog
from .plan import (
    BIGINT_MAX,
    SCHEDULE_WINDOW,
    PoolState,
    RebalanceInvariantBroken,
    RebalanceRefused,
    Share,
    _pool_filter,
    pool_plan,
    pool_state,
)

# --- config ------------------------------------------------------------------------------------------

CONFIG_FIELDS = ("total_tokens_per_month", "floor_per_allocation")


def _clean_tokens(name: str, value: object) -> int:
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]})
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]}) from None
    if not 0 <= number <= BIGINT_MAX:
        raise BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 0."]})
    return number


def pool_config_update(*, changes: dict, actor: Actor = None) -> PoolConfig:
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
        audit_record(actor=actor, action="pool_config_updated", target=config, before=before, after=changed)
    return config


# --- applying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebalanceResult:
    log: RebalanceLog | None
    shares: list[Share]
    refused: str = ""
    duplicate: bool = False


def pool_rebalance(
    *, trigger: str, actor: Actor = None, now: dt.datetime | None = None, period_key: str | None = None
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
            bump_auth_generation()
    except IntegrityError:
        if period_key and RebalanceLog.objects.filter(period_key=period_key).exists():
            return RebalanceResult(None, [], duplicate=True)
        raise
    return RebalanceResult(log, shares)


def _locked_config() -> PoolConfig:
    PoolConfig.load()
    return PoolConfig.objects.select_for_update().get(pk=PoolConfig.SINGLETON_PK)


def _new_log(
    *,
    state: PoolState,
    trigger: str,
    actor: Actor,
    now: datetime,
    key: str | None,
    outcome: str,
    reason: str = "",
    cold: bool = False,
) -> RebalanceLog:
    return RebalanceLog.objects.create(
        created_at=now,
        trigger=trigger,
        actor=actor_member(actor),
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


def _refusal_record(
    *, state: PoolState, reason: str, trigger: str, actor: Actor, now: datetime, key: str | None
) -> RebalanceLog:
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
    *, state: PoolState, shares: list[Share], trigger: str, actor: Actor, now: datetime, period_key: str | None = None
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


def _guarded_set(*, share: Share, before: int | None, actor: Actor, log: RebalanceLog, now: datetime) -> bool:
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
