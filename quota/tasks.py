"""Thin Celery wrappers around the quota services. Every task is idempotent: running it twice
changes nothing the second time (the schedule is in settings.CELERY_BEAT_SCHEDULE)."""

import datetime as dt
import logging

from celery import shared_task
from django.db.models import Max
from django.utils import timezone

from allocations.audit import audit_record
from allocations.models import AuditEvent

from . import ledger, partitions, retention, rollups, services
from .anomaly import anomalies_detect
from .group_budgets import GroupDrift, group_usage_reconcile
from .periods import period_start_date
from .pool import pool_rebalance_scheduled

log = logging.getLogger(__name__)


@shared_task(name="quota.pool_rebalance_tick", ignore_result=True)
def pool_rebalance_tick() -> str:
    """Beat sends this every minute; it rebalances in the first hour of a period, once per period."""
    result = pool_rebalance_scheduled()
    if result is None:
        return "outside window"
    if result.duplicate:
        return "already done this period"
    if result.refused:
        return f"refused: {result.refused}"
    return f"applied log {result.log.pk if result.log is not None else '-'}"


@shared_task(name="quota.anomalies_detect", ignore_result=True)
def anomalies_detect_task() -> int:
    detections = anomalies_detect()
    for d in detections:
        log.warning("anomaly: allocation %s quarantined=%s (%s)", d.allocation_id, d.quarantined, d.figures)
    return sum(d.quarantined for d in detections)


@shared_task(name="quota.reservations_sweep", ignore_result=True)
def reservations_sweep_task() -> int:
    # Spooled settlements first: a call that settled while the database was away is billed from
    # its usage, not swept as lost at its estimate.
    ledger.spool_replay()
    return ledger.reservations_sweep()


@shared_task(name="quota.usage_reconcile_nightly", ignore_result=True)
def usage_reconcile_nightly() -> int:
    """Reports drift between counters and call records as audit events; does not fix it (see
    docs/POOL.md: a rewrite could race with calls settling, so a human runs `reconcile_usage --fix`)."""
    now = timezone.now()
    reported = 0
    # Yesterday's period too, so the last day of a month is checked after midnight.
    for at in sorted({now, now - dt.timedelta(days=1)}, key=period_start_date):
        for drift in services.usage_reconcile(now=at, fix=False):
            reported += _report_drift(drift)
        for group_drift in group_usage_reconcile(now=at, fix=False):
            reported += _report_drift(group_drift, target_type="group")
    return reported


def _report_drift(drift: services.Drift | GroupDrift, *, target_type: str = "allocation") -> int:
    after = {
        "period_start": drift.period_start.isoformat(),
        "counter_tokens": drift.counter_tokens,
        "record_tokens": drift.record_tokens,
        "counter_cost": str(drift.counter_cost),
        "record_cost": str(drift.record_cost),
    }
    target_id = str(drift.group_id if target_type == "group" else drift.allocation_id)  # type: ignore[union-attr]  # target_type names which
    last = AuditEvent.objects.filter(action="usage_drift_detected", target_type=target_type, target_id=target_id)
    last_id = last.aggregate(m=Max("id"))["m"]
    if last_id is not None and AuditEvent.objects.get(pk=last_id).after == after:
        return 0  # same drift already reported: the task is idempotent
    audit_record(
        actor=None,
        action="usage_drift_detected",
        target=None,
        target_type=target_type,
        target_id=target_id,
        after=after,
    )
    return 1


@shared_task(name="quota.settlements_replay", ignore_result=True)
def settlements_replay() -> int:
    """Replays settlements spooled while the database was unreachable (quota/ledger/spool.py)."""
    return ledger.spool_replay()


@shared_task(name="quota.call_record_partitions", ignore_result=True)
def call_record_partitions() -> list[str]:
    """Creates the call-record partitions of this month and the next ones that are missing, and
    deletes the hourly rollups of the hours past the window they keep (quota.rollups.HOURLY_KEEP)."""
    now = timezone.now()
    created = partitions.ensure_partitions(now)
    for name in created:
        log.info("call-record partition %s created", name)
    pruned = rollups.hourly_rollups_prune(now=now)
    if pruned:
        log.info("%s hourly rollup rows past the window deleted", pruned)
    return created


@shared_task(name="quota.call_record_months_check", ignore_result=True)
def call_record_months_check() -> int:
    """Counts each closed month's records day by day against its daily rollups, once (a month is
    checked again only when its rollups change), and stores the count the prune then trusts
    (quota.retention.check_month): the prune of a checked month reads no record. A month whose
    days differ is logged as an error and keeps no check (the prune counts it, and refuses it
    while its rollups are short). Returns the months checked."""
    checked = 0
    for partition in retention.months_to_check(timezone.now()):
        result = retention.check_month(partition)
        checked += 1
        if result.ok:
            log.info(
                "call records of %s checked against rollups: %s records (%s ms)",
                f"{result.month:%Y-%m}",
                result.records,
                result.ms,
            )
        else:
            days = ", ".join(
                f"{day}: {records} records, {calls} rolled up" for day, (records, calls) in result.days.items()
            )
            log.error("call records of %s differ from their rollups: %s", f"{result.month:%Y-%m}", days)
    return checked


@shared_task(name="quota.call_records_prune", ignore_result=True)
def call_records_prune() -> int:
    """Drops the months past GATEWAY_RETENTION_MONTHS (nothing when unset); a month without its
    daily rollups is refused and logged as an error, and nothing is dropped that day; a run that
    could not get a lock in its attempts stops, logged, and the next run goes on."""
    try:
        pruned = retention.prune_by_setting()
    except retention.PruneRefused as refused:
        log.error("call records not pruned: %s", refused)
        return 0
    except partitions.LockNotHad as exc:
        log.error("call records pruning stopped, to be resumed by the next run: %s", exc)
        return 0
    for done in pruned or []:
        log.info("call records of %s pruned: %s rows", f"{done.month:%Y-%m}", done.rows)
    return len(pruned or [])
