"""`manage.py rebuild_rollups [--from YYYY-MM-DD] [--to YYYY-MM-DD]`: the daily rollups of a range
of days recomputed from the call records, and the hourly rollups of the window they keep
(docs/OPERATIONS.md says when)."""

import datetime as dt
from typing import Any

from django.core.management.base import CommandError, CommandParser

from allocations.management.base import AuditedCommand
from quota.rollups import HOURLY_KEEP, hourly_rollups_rebuild_window, rollups_rebuild_range


def _day(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--{name} must be a date (YYYY-MM-DD), got {value!r}") from None


class Command(AuditedCommand):
    help = (
        "Recompute the daily rollups of a range of days (billing timezone) from the call records, a month "
        "at a time; by default every day that has records. Then the hourly rollups of the last "
        f"{HOURLY_KEEP.days} days. Audited as rollups_rebuilt."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="first", help="first day (default: the first day with records)")
        parser.add_argument("--to", dest="last", help="last day, included (default: the last day with records)")

    def handle(self, *args: Any, first: str | None = None, last: str | None = None, **options: Any) -> None:
        first_day = _day(first, "from") if first else None
        last_day = _day(last, "to") if last else None
        if first_day and last_day and last_day < first_day:
            raise CommandError("--to is before --from")

        def progress(done: int, total: int, start: dt.date, end: dt.date, rows: int) -> None:
            self.stdout.write(f"[{done}/{total}] {start:%Y-%m-%d} .. {end:%Y-%m-%d}: {rows} rollup rows")

        rebuilt = rollups_rebuild_range(first_day=first_day, last_day=last_day, progress=progress)
        if rebuilt is None:
            self.stdout.write("No call records in that range: nothing to rebuild.")
        else:
            self.stdout.write(
                f"Rebuilt {rebuilt['days']} day(s) from {rebuilt['first_day']} to {rebuilt['last_day']}: "
                f"{rebuilt['rows']} rollup rows (audited as rollups_rebuilt)."
            )
        hourly = hourly_rollups_rebuild_window()
        self.stdout.write(f"Rebuilt the hourly rollups of the last {HOURLY_KEEP.days} days: {hourly} rows.")
