"""Anomaly quarantine (SPEC section 8): runaway allocations are quarantined with a readable reason.

Rule, for an active, non-service allocation, with L = its successful calls in the last hour and
B = its successful calls in the 23 hours before that (baseline B/23 per hour); refused and failed
calls never count, so a client retrying against a refusal cannot get its allocation quarantined:
    L ≥ min_calls  and  ( L × 23 ≥ multiplier × B      when B ≥ sparse_baseline_calls
                          L ≥ sparse_absolute_calls     when B <  sparse_baseline_calls )
Compared in exact arithmetic (integers and Decimal), so 10× is 10×, not 9.9999×.
"""

import datetime as dt
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from allocations.audit import Actor, audit_record
from allocations.exceptions import BadRequest, InvalidTransition
from allocations.models import Allocation
from allocations.services import allocation_quarantine

from .models import CallRecord, Outcome
from .pool_models import AnomalyConfig
from .rollup_models import HourlyRollup
from .rollups import hour_ceil, hour_floor, hourly_exact_from

HOUR = dt.timedelta(hours=1)
BASELINE_HOURS = 23


@dataclass(frozen=True)
class Figures:
    calls_last_hour: int
    baseline_calls: int

    @property
    def baseline_per_hour(self) -> Decimal:
        return (Decimal(self.baseline_calls) / BASELINE_HOURS).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def is_anomalous(figures: Figures, config: AnomalyConfig) -> bool:
    """The contract's rule, pure."""
    calls, baseline = figures.calls_last_hour, figures.baseline_calls
    if calls < config.min_calls:
        return False
    if baseline < config.sparse_baseline_calls:
        return calls >= config.sparse_absolute_calls
    return Decimal(calls) * BASELINE_HOURS >= config.multiplier * baseline


def anomaly_reason(figures: Figures) -> str:
    return f"{figures.calls_last_hour} calls in the last hour, baseline {figures.baseline_per_hour}/h"


def anomaly_figures(*, now: dt.datetime) -> dict:
    """{allocation_id: Figures} for active non-service allocations that called in the last hour.

    The sliding windows are read in three parts: the records of the last hour and of the part of
    an hour before it (from the start of its clock hour) and of the part of an hour at the start
    of the 24 (one range scan of at most two hours of records, by the `started_at` index), and
    the whole clock hours between from the hourly rollups (quota.rollups) of the allocations
    found calling in the last hour; then those allocations are narrowed to the active,
    non-service ones by their primary keys. The cost follows two hours' calls and the rollup rows
    of a day, not the number of allocations."""
    hour_ago, day_ago = now - HOUR, now - HOUR * (BASELINE_HOURS + 1)
    first, last = max(hour_ceil(day_ago), hourly_exact_from(now)), hour_floor(hour_ago)
    if last <= first:
        first = last = hour_ago  # no whole hour to read from the rollups: the 24 hours' records
    rows = (
        CallRecord.objects.filter(
            Q(started_at__gte=day_ago, started_at__lt=first) | Q(started_at__gte=last, started_at__lt=now),
            outcome=Outcome.SUCCESS,
            allocation__isnull=False,
        )
        .values("allocation_id")
        .annotate(
            last_hour=Count("id", filter=Q(started_at__gte=hour_ago)),
            baseline=Count("id", filter=Q(started_at__lt=hour_ago)),
        )
        .filter(last_hour__gt=0)
        .order_by()
    )
    counted = {r["allocation_id"]: [r["last_hour"], r["baseline"]] for r in rows}
    if counted and first < last:
        rolled = (
            HourlyRollup.objects.filter(
                hour__gte=first, hour__lt=last, outcome=Outcome.SUCCESS, allocation_id__in=list(counted)
            )
            .values("allocation_id")
            .annotate(calls=Sum("calls"))
            .order_by()
        )
        for r in rolled:
            counted[r["allocation_id"]][1] += r["calls"]
    found = {pk: Figures(last_hour, baseline) for pk, (last_hour, baseline) in counted.items()}
    watched = Allocation.objects.filter(
        pk__in=list(found), status=Allocation.Status.ACTIVE, is_service_allocation=False
    ).values_list("pk", flat=True)
    return {pk: found[pk] for pk in watched}


@dataclass(frozen=True)
class Detection:
    allocation_id: object
    figures: Figures
    quarantined: bool


def anomalies_detect(*, now: dt.datetime | None = None, config: AnomalyConfig | None = None) -> list[Detection]:
    """Quarantines every allocation the rule flags. Idempotent: a quarantined allocation is no longer
    active, so a second run finds nothing to do. Returns [] while switched off or paused."""
    now = now or timezone.now()
    config = config or AnomalyConfig.load()
    if not config.active_at(now):
        return []
    detections = []
    for allocation_id, figures in anomaly_figures(now=now).items():
        if not is_anomalous(figures, config):
            continue
        detections.append(Detection(allocation_id, figures, _quarantine(allocation_id, figures, config, now)))
    return detections


def _quarantine(allocation_id: uuid.UUID, figures: Figures, config: AnomalyConfig, now: datetime) -> bool:
    allocation = Allocation.objects.filter(pk=allocation_id).first()
    if allocation is None or allocation.is_service_allocation:
        return False
    try:
        with transaction.atomic():
            allocation_quarantine(allocation=allocation, reason=anomaly_reason(figures))
            audit_record(
                actor=None,
                action="allocation_anomaly_detected",
                target=allocation,
                now=now,
                after={
                    "calls_last_hour": figures.calls_last_hour,
                    "baseline_calls_23h": figures.baseline_calls,
                    "baseline_per_hour": str(figures.baseline_per_hour),
                    "min_calls": config.min_calls,
                    "multiplier": _decimal_text(config.multiplier),
                    "sparse_baseline_calls": config.sparse_baseline_calls,
                    "sparse_absolute_calls": config.sparse_absolute_calls,
                    "reason": anomaly_reason(figures),
                },
            )
    except InvalidTransition:
        return False  # paused, revoked or quarantined meanwhile: nothing to do
    return True


def _decimal_text(value: Decimal | int | str) -> str:
    return f"{Decimal(value).normalize():f}"


# --- config ------------------------------------------------------------------------------------------

ANOMALY_FIELDS = (
    "enabled",
    "paused_until",
    "min_calls",
    "multiplier",
    "sparse_baseline_calls",
    "sparse_absolute_calls",
)


def _snapshot(config: AnomalyConfig) -> dict:
    return {
        "enabled": config.enabled,
        "paused_until": config.paused_until.isoformat() if config.paused_until else None,
        "min_calls": config.min_calls,
        "multiplier": _decimal_text(config.multiplier),
        "sparse_baseline_calls": config.sparse_baseline_calls,
        "sparse_absolute_calls": config.sparse_absolute_calls,
    }


def anomaly_config_update(*, changes: dict, actor: Actor = None) -> AnomalyConfig:
    """Audits `anomaly_config_updated`. Values are validated by the caller's form or serializer."""
    unknown = set(changes) - set(ANOMALY_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown fields: {', '.join(sorted(unknown))}", fields={n: ["Unknown field."] for n in unknown}
        )
    with transaction.atomic():
        AnomalyConfig.load()
        config = AnomalyConfig.objects.select_for_update().get(pk=AnomalyConfig.SINGLETON_PK)
        before = _snapshot(config)
        for name, value in changes.items():
            setattr(config, name, value)
        config.full_clean()
        after = _snapshot(config)
        if after == before:
            return config
        config.save()
        changed = [k for k in after if after[k] != before[k]]
        audit_record(
            actor=actor,
            action="anomaly_config_updated",
            target=config,
            before={k: before[k] for k in changed},
            after={k: after[k] for k in changed},
        )
    return config
