"""`manage.py prune_call_records --before YYYY-MM [--archive DIR]`: drops the call records of every
month before YYYY-MM, whole monthly partitions at a time (quota.retention), each after its daily
rollups exist and, with --archive, after writing it to DIR as gzip-compressed CSV. Audited."""

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from allocations.management.base import AuditedCommand
from quota import partitions, retention


class Command(AuditedCommand):
    help = (
        "Drop the call records of every month before YYYY-MM (whole months, only those whose daily "
        "rollups exist), archiving each as compressed CSV first with --archive DIR."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--before", required=True, help="the first month kept, YYYY-MM")
        parser.add_argument("--archive", metavar="DIR", help="write each month to DIR/<partition>.csv.gz first")

    def handle(self, *args: Any, before: str, archive: str | None = None, **options: Any) -> None:
        try:
            first_kept = partitions.parse_month(before)
        except ValueError:
            raise CommandError(f"--before must be a month as YYYY-MM, e.g. 2026-03 (got {before!r})") from None
        if not partitions.is_partitioned():
            raise CommandError("call records are not partitioned by month yet: run `manage.py migrate` first")
        months = retention.months_before(first_kept)
        if not months:
            self.stdout.write(f"No month before {first_kept:%Y-%m} is held: nothing to prune.")
            return
        self.stdout.write(f"Pruning {len(months)} month(s) before {first_kept:%Y-%m} …")
        try:
            pruned = retention.prune(
                before=first_kept,
                archive_dir=Path(archive) if archive else None,
                progress=self.stdout.write,
            )
        except retention.PruneRefused as refused:
            raise CommandError(
                f"Refused, nothing dropped: {refused}. Those months keep their call records until their "
                "daily rollups are written."
            ) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except partitions.LockNotHad as exc:
            raise CommandError(
                f"Stopped: {exc} (a long query on call records, allocations or members held them). The months "
                "listed above as dropped are gone; run the command again later for the rest."
            ) from None
        rows = sum(p.rows for p in pruned)
        self.stdout.write(f"Pruned {len(pruned)} month(s), {rows:,} call records (audited as call_records_pruned).")
