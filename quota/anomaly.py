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
from .rollups import hour_floor, hourly_exact_from

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

    The sliding windows from the hourly rollups (quota.rollups) of the 25 clock hours they touch,
    corrected by the records of the parts of the two edge hours that lie outside them: for each
    edge hour the shorter side of the cut (at most half an hour of records each), and the records
    after `now` in the current hour (none when `now` is the present). Then the allocations found
    are narrowed to the active, non-service ones by their primary keys. Three queries; the cost
    follows at most an hour of calls and a day of rollup rows, not the number of allocations."""
    current = hour_floor(now).astimezone(dt.UTC)
    first = current - HOUR * (BASELINE_HOURS + 1)
    if first < hourly_exact_from(now):
        found = _figures_from_records(now=now)
    else:
        found = _figures_from_rollups(now=now, current=current, first=first)
    watched = Allocation.objects.filter(
        pk__in=list(found), status=Allocation.Status.ACTIVE, is_service_allocation=False
    ).values_list("pk", flat=True)
    return {pk: found[pk] for pk in watched}


def _figures_from_rollups(*, now: dt.datetime, current: dt.datetime, first: dt.datetime) -> dict:
    # The hour before the current one is cut at `hour_ago`, the first one at `day_ago`, both at the
    # same minute: read the shorter side of that cut from the records, the rest follows.
    hour_ago, day_ago = now - HOUR, now - HOUR * (BASELINE_HOURS + 1)
    previous = current - HOUR
    early = now - current <= HOUR / 2  # the parts before the cuts are the shorter ones
    success = {"outcome": Outcome.SUCCESS, "allocation__isnull": False}
    hours = (
        HourlyRollup.objects.filter(hour__gte=first, hour__lte=current, **success)
        .values("allocation_id")
        .annotate(
            first=Sum("calls", filter=Q(hour=first)),
            between=Sum("calls", filter=Q(hour__gt=first, hour__lt=previous)),
            previous=Sum("calls", filter=Q(hour=previous)),
            current=Sum("calls", filter=Q(hour=current)),
        )
        .order_by()
    )
    # Records: the short sides of the two cuts, and any after `now` in the current hour.
    cut = (Q(started_at__gte=previous, started_at__lt=hour_ago), Q(started_at__gte=first, started_at__lt=day_ago))
    if not early:
        cut = (
            Q(started_at__gte=hour_ago, started_at__lt=current),
            Q(started_at__gte=day_ago, started_at__lt=first + HOUR),
        )
    after = Q(started_at__gte=now, started_at__lt=current + HOUR)
    records = {
        r["allocation_id"]: r
        for r in CallRecord.objects.filter(cut[0] | cut[1] | after, **success)
        .values("allocation_id")
        .annotate(
            previous=Count("id", filter=cut[0]),
            first=Count("id", filter=cut[1]),
            after=Count("id", filter=after),
        )
        .order_by()
    }
    found = {}
    for row in hours:
        cuts = records.get(row["allocation_id"], {"previous": 0, "first": 0, "after": 0})
        previous_calls, first_calls = row["previous"] or 0, row["first"] or 0
        if early:  # the records are the previous hour's part before hour_ago, the first's before day_ago
            last_hour = previous_calls - cuts["previous"]
            baseline = cuts["previous"] + first_calls - cuts["first"]
        else:  # the previous hour's part after hour_ago, the first's after day_ago
            last_hour = cuts["previous"]
            baseline = previous_calls - cuts["previous"] + cuts["first"]
        last_hour += (row["current"] or 0) - cuts["after"]
        baseline += row["between"] or 0
        if last_hour > 0:
            found[row["allocation_id"]] = Figures(last_hour, baseline)
    return found


def _figures_from_records(*, now: dt.datetime) -> dict:
    """The figures from the call records of the 24 hours (one range scan, grouped by allocation)."""
    hour_ago, day_ago = now - HOUR, now - HOUR * (BASELINE_HOURS + 1)
    rows = (
        CallRecord.objects.filter(
            started_at__gte=day_ago, started_at__lt=now, outcome=Outcome.SUCCESS, allocation__isnull=False
        )
        .values("allocation_id")
        .annotate(
            last_hour=Count("id", filter=Q(started_at__gte=hour_ago)),
            baseline=Count("id", filter=Q(started_at__lt=hour_ago)),
        )
        .filter(last_hour__gt=0)
        .order_by()
    )
    return {r["allocation_id"]: Figures(r["last_hour"], r["baseline"]) for r in rows}


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
