"""Retention of call records: whole months leave at once (quota.partitions: DETACH + DROP, no
DELETE, no VACUUM), each after its daily rollups exist, so every report keeps its figures after the
calls themselves are gone. GATEWAY_RETENTION_MONTHS (unset = keep everything) tells beat how many
months before the current one to keep; `manage.py prune_call_records --before YYYY-MM` does the
same by hand, with an optional compressed CSV archive of each month first. Every month dropped is
an audit event (`call_records_pruned`) with its row count and archive file.

An allocation stays PROTECTed by its call records: the records are the evidence of what it was
billed. Once its months are pruned nothing references it, and it can be deleted.
"""

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from allocations.audit import Actor, audit_record

from . import partitions, rollups
from .periods import billing_tz
from .rollup_models import DailyRollup, MonthCheck

# A month is checked (check_month) once it has been closed this long: a call started before
# midnight settles, and writes its record into the month, after it.
CHECK_AFTER = dt.timedelta(days=1)


class PruneRefused(Exception):
    """Nothing was dropped: the months named have call records and no daily rollups."""

    def __init__(self, months: list[dt.date]):
        self.months = months
        super().__init__("no daily rollups for " + ", ".join(f"{m:%Y-%m}" for m in months))


def rollups_cover(month: dt.date, records: int | None = None) -> bool:
    """Whether the daily rollups account for every call record of `month` (quota.rollups): their
    calls add up to `records`, the month's count when the caller has it already (else counted)."""
    if records is None:
        return rollups.rollups_cover(month)
    return rollups.rolled_calls(month) == records


@dataclasses.dataclass(frozen=True)
class Checked:
    """A month's records counted day by day against its rollups: `days` lists the days whose
    counts differ (record count, rollup calls); the check is stored only when there are none."""

    month: dt.date
    records: int
    days: dict
    ms: float

    @property
    def ok(self) -> bool:
        return not self.days


def check_month(partition: partitions.Partition, now: dt.datetime | None = None) -> Checked:
    """Counts `partition`'s records per billing-timezone day (one scan of the month, in this
    backend alone) and compares each day with its rollups' calls. When every day matches, the
    month's MonthCheck is stored (replacing an older one); otherwise any stored check of the month
    is removed, so the prune counts the month itself and refuses it while its rollups are short."""
    month = partition.month
    began = time.perf_counter()
    with transaction.atomic(), connection.cursor() as c:
        c.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        c.execute("SET LOCAL jit = off")
        c.execute(
            f'SELECT (started_at AT TIME ZONE %s)::date, count(*) FROM "{partition.name}" GROUP BY 1',  # noqa: S608 (a partition's name)
            [rollups.timezone_name()],
        )
        counted = dict(c.fetchall())
    rolled = dict(
        DailyRollup.objects.filter(day__gte=month, day__lt=partitions.add_months(month, 1))
        .values_list("day")
        .annotate(n=Sum("calls"))
        .values_list("day", "n")
    )
    days = {
        day: (counted.get(day, 0), rolled.get(day, 0))
        for day in sorted(set(counted) | set(rolled))
        if counted.get(day, 0) != rolled.get(day, 0)
    }
    records = sum(counted.values())
    if days:
        MonthCheck.objects.filter(month=month).delete()
    else:
        MonthCheck.objects.update_or_create(
            month=month, defaults={"records": records, "checked_at": now or timezone.now()}
        )
    return Checked(month=month, records=records, days=days, ms=_ms(began))


def months_to_check(now: dt.datetime) -> list[partitions.Partition]:
    """The months closed at least CHECK_AFTER ago whose check is missing or no longer matches
    their rollups (a record written since), oldest first: attached ones and any left detached."""
    closed = [p for p in partitions.partitions() + partitions.detached() if p.end <= now - CHECK_AFTER]
    stored = dict(MonthCheck.objects.values_list("month", "records"))
    return sorted(
        (p for p in closed if stored.get(p.month) is None or stored[p.month] != rollups.rolled_calls(p.month)),
        key=lambda p: p.start,
    )


def stored_count(month: dt.date) -> int | None:
    """The month's record count as its stored check has it, while its rollups still add up to it
    (a sum over the month's rollup rows); None without a check or when they part."""
    check = MonthCheck.objects.filter(month=month).first()
    if check is None or rollups.rolled_calls(month) != check.records:
        return None
    return check.records


@dataclasses.dataclass(frozen=True)
class Pruned:
    month: dt.date
    partition: str
    rows: int
    archive: Path | None
    # Milliseconds of each step: the rollup check (the stored check against the rollups' sum, or
    # the month's count without one; "checked": "stored" or "counted"), the archive (0 without),
    # the detach and the drop (with the audit event), and the attempts the two locks took.
    timings: dict = dataclasses.field(default_factory=dict, compare=False)


def months_before(before: dt.date) -> list[partitions.Partition]:
    """The month partitions that end on or before the first of `before`, oldest first: the attached
    ones, and any a stopped prune left detached."""
    limit = partitions.month_bounds(before)[0]
    held = [p for p in partitions.partitions() if p.end <= limit]
    names = {p.name for p in held}
    left = [p for p in partitions.detached() if p.end <= limit and p.name not in names]
    return sorted(held + left, key=lambda p: p.start)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def prune(
    *,
    before: dt.date,
    archive_dir: Path | None = None,
    actor: Actor = None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[Pruned]:
    """Drops every month before `before` (YYYY-MM-01), archiving each first when asked. Refuses
    (PruneRefused, nothing dropped) when a month with records has no rollups. A month that cannot
    be dropped midway (its archive fails, or a lock is not had in its attempts) stops the run;
    the months before it are gone, the rest stay (one left detached is dropped by the next run).

    The check: the month's stored check (check_month, beat) while its rollups still add up to it,
    else one count of the month against the rollups' sum; the count is the audit's row count.
    What each step holds: the check and the archive only read the month's partition (or only the
    rollups), which calls no longer write to; the detach and the
    drop are short transactions of their own that wait at most partitions.LOCK_TIMEOUT_MS for
    their locks (calls queue behind a waiting exclusive lock) and retry. A record written into the
    month between the check and the detach (a late settlement) goes with it; its rollup, written
    by the same statement, stays."""
    if before > timezone.now().astimezone(billing_tz()).date().replace(day=1):
        raise ValueError("the current month and later months are never pruned")
    months = months_before(before)
    counted = []
    for partition in months:
        began = time.perf_counter()
        stored = stored_count(partition.month)
        if stored is not None:
            rows, covered, how = stored, True, "stored"
        else:
            rows = partitions.count_rows(partition)
            covered, how = not rows or rollups_cover(partition.month, rows), "counted"
        counted.append((partition, rows, covered, how, _ms(began)))
    missing = [p.month for p, _, covered, _, _ in counted if not covered]
    if missing:
        raise PruneRefused(missing)
    done = []
    for number, (partition, rows, _, how, check_ms) in enumerate(counted, start=1):
        check = "its stored check" if how == "stored" else "a count of the month"
        progress(
            f"[{number}/{len(counted)}] {partition.month:%Y-%m}: {rows:,} records"
            f" (rollups checked against {check} in {check_ms} ms)"
        )
        timings: dict = {"check_ms": check_ms, "checked": how, "archive_ms": 0.0}
        archive = None
        if archive_dir is not None:
            began = time.perf_counter()
            archive = partitions.archive_partition(partition, archive_dir)
            timings["archive_ms"] = _ms(began)
            progress(f"    archived to {archive} ({archive.stat().st_size:,} bytes in {timings['archive_ms']} ms)")
        began = time.perf_counter()
        detached = partitions.detach_partition(partition) if partition.attached else None
        timings["detach_ms"] = _ms(began)
        timings["detach_attempts"] = detached.attempts if detached else 0

        def audited(
            cursor: Any, partition: partitions.Partition = partition, rows: int = rows, archive: Path | None = archive
        ) -> None:
            audit_record(
                actor=actor,
                action="call_records_pruned",
                target=None,
                target_type="call_records",
                target_id=f"{partition.month:%Y-%m}",
                before={"partition": partition.name, "rows": rows},
                after={"archive": str(archive) if archive else None},
            )

        began = time.perf_counter()
        dropped = partitions.drop_detached(partition, then=audited)
        timings["drop_ms"] = _ms(began)
        timings["drop_attempts"] = dropped.heap.attempts
        timings["drop_locked_ms"] = dropped.heap.statements_ms  # the rest: the commit, the files' unlink
        timings["indexes_unlink_ms"] = round(sum(step.commit_ms for step in dropped.indexes), 1)
        timings["paused_ms"] = dropped.paused_ms
        detach = (
            f"detached in {timings['detach_ms']} ms ({timings['detach_attempts']} attempt(s))"
            if partition.attached
            else "left detached by an earlier run"
        )
        progress(
            f"    {detach}, dropped and audited in {timings['drop_ms']} ms ({timings['drop_attempts']} attempt(s);"
            f" {len(dropped.indexes)} index(es) first, their commits and unlinks {timings['indexes_unlink_ms']} ms,"
            f" paused {dropped.paused_ms} ms; the heap's statements {dropped.heap.statements_ms} ms,"
            f" commit and unlink {dropped.heap.commit_ms} ms)"
        )
        done.append(
            Pruned(month=partition.month, partition=partition.name, rows=rows, archive=archive, timings=timings)
        )
    return done


def retention_cutoff(now: dt.datetime, months: int) -> dt.date:
    """The first month kept when `months` months before the current one are kept."""
    this_month = now.astimezone(billing_tz()).date().replace(day=1)
    return partitions.add_months(this_month, -months)


def prune_by_setting(now: dt.datetime | None = None) -> list[Pruned] | None:
    """Beat's daily run: None when GATEWAY_RETENTION_MONTHS is unset (records are kept)."""
    months = settings.GATEWAY_RETENTION_MONTHS
    if months is None:
        return None
    return prune(before=retention_cutoff(now or timezone.now(), months))
