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
from collections.abc import Callable
from pathlib import Path

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


def rollups_cover(month: dt.date) -> bool:
    """Whether the daily rollups account for every call record of `month` (quota.rollups)."""
    return rollups.rollups_cover(month)


@dataclasses.dataclass(frozen=True)
class Pruned:
    month: dt.date
    partition: str
    rows: int
    archive: Path | None


def months_before(before: dt.date) -> list[partitions.Partition]:
    """The attached month partitions that end on or before the first of `before`, oldest first."""
    limit = partitions.month_bounds(before)[0]
    return [p for p in partitions.partitions() if p.end <= limit]


def prune(
    *,
    before: dt.date,
    archive_dir: Path | None = None,
    actor: Actor = None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[Pruned]:
    """Drops every month before `before` (YYYY-MM-01), archiving each first when asked. Refuses
    (PruneRefused, nothing dropped) when a month with records has no rollups. A month that cannot
    be dropped midway (its archive fails, or the table's lock is not had in time) stops the run;
    the months before it are gone, the rest stay."""
    if before > timezone.now().astimezone(billing_tz()).date().replace(day=1):
        raise ValueError("the current month and later months are never pruned")
    months = months_before(before)
    counted = [(p, partitions.count_rows(p)) for p in months]
    missing = [p.month for p, rows in counted if rows and not rollups_cover(p.month)]
    if missing:
        raise PruneRefused(missing)
    done = []
    for number, (partition, rows) in enumerate(counted, start=1):
        progress(f"[{number}/{len(counted)}] {partition.month:%Y-%m}: {rows:,} records")
        archive = None
        if archive_dir is not None:
            archive = partitions.archive_partition(partition, archive_dir)
            progress(f"    archived to {archive} ({archive.stat().st_size:,} bytes)")
        partitions.drop_partition(partition)
        audit_record(
            actor=actor,
            action="call_records_pruned",
            target=None,
            target_type="call_records",
            target_id=f"{partition.month:%Y-%m}",
            before={"partition": partition.name, "rows": rows},
            after={"archive": str(archive) if archive else None},
        )
        done.append(Pruned(month=partition.month, partition=partition.name, rows=rows, archive=archive))
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
