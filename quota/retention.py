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
from django.utils import timezone

from allocations.audit import Actor, audit_record

from . import partitions, rollups
from .periods import billing_tz


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
class Pruned:
    month: dt.date
    partition: str
    rows: int
    archive: Path | None
    # Milliseconds of each step: the rollup check (the month's count), the archive (0 without),
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

    What each step holds: the check (one count of the month, reused as the audit's row count) and
    the archive only read the month's partition, which calls no longer write to; the detach and the
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
        rows = partitions.count_rows(partition)
        covered = not rows or rollups_cover(partition.month, rows)
        counted.append((partition, rows, covered, _ms(began)))
    missing = [p.month for p, _, covered, _ in counted if not covered]
    if missing:
        raise PruneRefused(missing)
    done = []
    for number, (partition, rows, _, check_ms) in enumerate(counted, start=1):
        progress(
            f"[{number}/{len(counted)}] {partition.month:%Y-%m}: {rows:,} records (rollups checked in {check_ms} ms)"
        )
        timings: dict = {"check_ms": check_ms, "archive_ms": 0.0}
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
        timings["drop_attempts"] = dropped.attempts
        timings["drop_locked_ms"] = dropped.statements_ms  # the rest: the commit, the files' unlink
        detach = (
            f"detached in {timings['detach_ms']} ms ({timings['detach_attempts']} attempt(s))"
            if partition.attached
            else "left detached by an earlier run"
        )
        progress(
            f"    {detach}, dropped and audited in {timings['drop_ms']} ms ({timings['drop_attempts']} attempt(s);"
            f" statements {dropped.statements_ms} ms, commit and unlink {dropped.commit_ms} ms)"
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
