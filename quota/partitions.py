"""Call records are partitioned by month of `started_at` (native PostgreSQL range partitioning), so
a query that names a period reads only that period's partitions and a month leaves in milliseconds
(DETACH + DROP) instead of a DELETE of millions of rows and the VACUUM after it.

- A month is a calendar month in GATEWAY_BILLING_TIMEZONE, the billing period's: a partition is
  `quota_callrecord_pYYYY_MM`, bounds [first of the month, first of the next) at local midnight.
- Beat creates the partitions of this month and the next AHEAD months (`ensure_partitions`). A
  DEFAULT partition takes any row no month holds (a clock far off), so a call is always recorded;
  when its month is created later, those rows move into it before it is attached.
- A new month is made as a plain table and ATTACHed: attaching takes a lock that lets calls go on
  being recorded (CREATE ... PARTITION OF would stop them for a moment).
- The table's primary key is (id, started_at): PostgreSQL's unique indexes on a partitioned table
  must hold the partition key. Django still knows `id` as the primary key; ids stay unique because
  one sequence makes them all (docs/DECISIONS.md, "Call-record partitions").
"""

import dataclasses
import datetime as dt
import gzip
import os
import re
from pathlib import Path

from django.db import connection, transaction

from allocations.models import Allocation, CatalogModel, Member

from .models import CallRecord
from .periods import billing_tz

PARENT = CallRecord._meta.db_table
DEFAULT = f"{PARENT}_default"
AHEAD = 3
_NAME = re.compile(rf"^{PARENT}_p(\d{{4}})_(\d{{2}})$")
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    start: dt.datetime
    end: dt.datetime

    @property
    def month(self) -> dt.date:
        return self.start.astimezone(billing_tz()).date().replace(day=1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    tz = billing_tz()
    first = month.replace(day=1)
    return (
        dt.datetime.combine(first, dt.time.min, tzinfo=tz),
        dt.datetime.combine(add_months(first, 1), dt.time.min, tzinfo=tz),
    )


def partition_name(month: dt.date) -> str:
    return f"{PARENT}_p{month:%Y_%m}"


def parse_month(text: str) -> dt.date:
    """YYYY-MM -> the first of that month (ValueError for anything else)."""
    if not re.fullmatch(r"\d{4}-\d{2}", text):
        raise ValueError(text)
    return dt.date.fromisoformat(f"{text}-01")


def is_partitioned() -> bool:
    with connection.cursor() as c:
        c.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = c.fetchone()
    return bool(row) and row[0] == "p"


def partitions() -> list[Partition]:
    """The month partitions attached to the table, oldest first (the DEFAULT one left out)."""
    with connection.cursor() as c:
        c.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [PARENT],
        )
        rows = c.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound or "")
        if match:
            start, end = (dt.datetime.fromisoformat(v) for v in match.groups())
            found.append(Partition(name=name, start=start, end=end))
    return sorted(found, key=lambda p: p.start)


def _literal(moment: dt.datetime) -> str:
    return "'" + moment.isoformat() + "'::timestamptz"


def create_partition(month: dt.date) -> str:
    """Creates and attaches one month (rows of that month waiting in DEFAULT move into it)."""
    name = partition_name(month)
    start, end = month_bounds(month)
    with transaction.atomic(), connection.cursor() as c:
        c.execute(f'CREATE TABLE "{name}" (LIKE "{PARENT}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
        c.execute("SELECT to_regclass(%s) IS NOT NULL", [DEFAULT])
        if c.fetchone()[0]:
            where = f"started_at >= {_literal(start)} AND started_at < {_literal(end)}"
            moved = f'WITH moved AS (DELETE FROM "{DEFAULT}" WHERE {where} RETURNING *)'  # noqa: S608 (names, dates)
            c.execute(f'{moved} INSERT INTO "{name}" SELECT * FROM moved')  # noqa: S608
        c.execute(
            f'ALTER TABLE "{PARENT}" ATTACH PARTITION "{name}" FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})'
        )
    return name


def ensure_partitions(now: dt.datetime, ahead: int = AHEAD) -> list[str]:
    """This month's partition and the next `ahead` months'; returns the names it created. Idempotent;
    does nothing while the table is not partitioned (a database before the migration)."""
    if not is_partitioned():
        return []
    have = {p.start for p in partitions()}
    this_month = now.astimezone(billing_tz()).date().replace(day=1)
    created = []
    for n in range(ahead + 1):
        month = add_months(this_month, n)
        if month_bounds(month)[0] not in have:
            created.append(create_partition(month))
    return created


def archive_partition(partition: Partition, directory: Path) -> Path:
    """Writes one month as gzip-compressed CSV with a header row (`<partition>.csv.gz`): every
    column of the records, then the member's username, the model's slug and the allocation's name
    as they are now, so the file reads on its own after the rows are gone. Written under a temporary
    name: a file with the final name is always complete."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{partition.name}.csv.gz"
    partial = directory / f".{partition.name}.csv.gz.partial"
    query = (
        f"COPY (SELECT r.*, m.username AS member_name, c.slug AS model_slug, a.display_name AS allocation_name"  # noqa: S608
        f' FROM "{partition.name}" r LEFT JOIN "{Member._meta.db_table}" m ON m.id = r.member_id'
        f' LEFT JOIN "{CatalogModel._meta.db_table}" c ON c.id = r.model_id'
        f' LEFT JOIN "{Allocation._meta.db_table}" a ON a.id = r.allocation_id'
        " ORDER BY r.started_at, r.id) TO STDOUT WITH (FORMAT csv, HEADER)"
    )
    with connection.cursor() as c, gzip.open(partial, "wb") as out, c.cursor.copy(query) as copy:
        for chunk in copy:
            out.write(chunk)
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    partial.replace(final)
    return final


def count_rows(partition: Partition) -> int:
    with connection.cursor() as c:
        c.execute(f'SELECT count(*) FROM "{partition.name}"')  # noqa: S608 (a partition's name)
        return c.fetchone()[0]


def drop_partition(partition: Partition, *, lock_timeout_ms: int = 5000) -> None:
    """Detaches and drops one month. The detach holds the table's lock for a moment: it waits at
    most `lock_timeout_ms` for running queries (then raises, nothing changed) rather than queue
    every new call behind a long report."""
    with transaction.atomic(), connection.cursor() as c:
        # Deferred foreign-key checks of rows written in this transaction run now: a table with
        # pending checks cannot be dropped (rows committed earlier have none).
        c.execute("SET CONSTRAINTS ALL IMMEDIATE")
        c.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        c.execute(f'ALTER TABLE "{PARENT}" DETACH PARTITION "{partition.name}"')
        c.execute(f'DROP TABLE "{partition.name}"')
