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
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import OperationalError, connection, transaction

from allocations.models import Allocation, CatalogModel, Member

from .models import CallRecord
from .periods import billing_tz

PARENT = CallRecord._meta.db_table
DEFAULT = f"{PARENT}_default"
AHEAD = 3
# A detach or drop waits this long for its lock per attempt (every insert queues behind it
# meanwhile), up to LOCK_ATTEMPTS attempts; the pause between them starts at LOCK_FIRST_PAUSE_S (a
# call's transaction that held the lock is over by then) and doubles up to LOCK_PAUSE_S (a report
# is waited out over about 10 s).
LOCK_TIMEOUT_MS = 50
LOCK_ATTEMPTS = 40
LOCK_FIRST_PAUSE_S = 0.05
LOCK_PAUSE_S = 0.25
# A drop whose commit (the unlink of its files) took longer than this held the file system's
# journal, and the calls' commits queued behind it: the next drop waits as long again, so that
# they get through (drop_detached). A volume that unlinks quickly is not paced at all.
UNLINK_SLOW_MS = 20.0
LOCK_NOT_AVAILABLE = "55P03"
# The archive's gzip level: 1 takes about half the CPU of 6 and a third of 9's for a file about a
# quarter larger (docs/PERFORMANCE.md); the archive's cost is CPU on the database's host, while
# calls go on.
ARCHIVE_GZIP_LEVEL = 1
_NAME = re.compile(rf"^{PARENT}_p(\d{{4}})_(\d{{2}})$")
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    start: dt.datetime
    end: dt.datetime
    attached: bool = True

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
    """Writes one month as gzip-compressed CSV (ARCHIVE_GZIP_LEVEL) with a header row (`<partition>.csv.gz`): every
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
    with (
        connection.cursor() as c,
        gzip.open(partial, "wb", compresslevel=ARCHIVE_GZIP_LEVEL) as out,
        c.cursor.copy(query) as copy,
    ):
        for chunk in copy:
            out.write(chunk)
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    partial.replace(final)
    return final


def count_rows(partition: Partition) -> int:
    """The month's rows: one index-only scan, in this backend alone (no parallel workers, no JIT),
    so that counting an old month leaves the other cores to the calls."""
    with transaction.atomic(), connection.cursor() as c:
        c.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        c.execute("SET LOCAL jit = off")
        c.execute(f'SELECT count(*) FROM "{partition.name}"')  # noqa: S608 (a partition's name)
        return c.fetchone()[0]


class LockNotHad(Exception):
    """A statement that needs the table's exclusive lock did not get it in its attempts (long
    queries kept holding the table); nothing of that statement was done."""


@dataclasses.dataclass(frozen=True)
class Step:
    """How a detach or drop went: the attempts it took, the milliseconds its statements ran in the
    attempt that got the locks (held from there to the commit), and those of the commit (which
    unlinks a dropped table's files, after its locks are released)."""

    attempts: int
    statements_ms: float
    commit_ms: float


def lock_pause_s(attempt: int) -> float:
    """The pause after failed attempt `attempt` (1, 2, …), before its jitter of ±50 %."""
    return min(LOCK_PAUSE_S, LOCK_FIRST_PAUSE_S * 2 ** (attempt - 1))


def _with_lock(
    statements: list[str],
    *,
    lock_timeout_ms: int | None = None,
    attempts: int | None = None,
    then: Callable[[Any], None] | None = None,
) -> Step:
    """Runs `statements` (and `then(cursor)`) in one transaction that waits at most
    `lock_timeout_ms` for each lock, retrying up to `attempts` times with a pause between. While
    such a statement waits for an exclusive lock, every call that records a call record queues
    behind it: the short wait bounds that stall, the retries wait out a long query. Defaults:
    LOCK_TIMEOUT_MS, LOCK_ATTEMPTS."""
    lock_timeout_ms = LOCK_TIMEOUT_MS if lock_timeout_ms is None else lock_timeout_ms
    attempts = LOCK_ATTEMPTS if attempts is None else attempts
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic(), connection.cursor() as c:
                # Deferred foreign-key checks of rows written in this transaction run now: a table
                # with pending checks cannot be detached or dropped (rows committed earlier have none).
                c.execute("SET CONSTRAINTS ALL IMMEDIATE")
                c.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                began = time.perf_counter()
                for statement in statements:
                    c.execute(statement)
                if then is not None:
                    then(c)
                ran = time.perf_counter()
            committed = time.perf_counter()
            return Step(
                attempts=attempt,
                statements_ms=round((ran - began) * 1000, 1),
                commit_ms=round((committed - ran) * 1000, 1),
            )
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == attempts:
                raise LockNotHad(f"no lock in {attempts} attempts of {lock_timeout_ms} ms") from exc
            time.sleep(lock_pause_s(attempt) * (0.5 + random.random()))  # noqa: S311 (jitter, not a secret)
    raise AssertionError("unreachable")


def detach_partition(partition: Partition, *, lock_timeout_ms: int | None = None, attempts: int | None = None) -> Step:
    """Detaches one month; the table stays, alone, under its name. DETACH holds the call-record
    table's ACCESS EXCLUSIVE lock (and the DEFAULT partition's) to its commit, so it is a
    transaction of its own: the lock is held for the catalogue change only, a few milliseconds.
    (DETACH ... CONCURRENTLY, which would not block inserts at all, is refused by PostgreSQL while
    a DEFAULT partition exists.) LockNotHad when no attempt got the lock."""
    return _with_lock(
        [f'ALTER TABLE "{PARENT}" DETACH PARTITION "{partition.name}"'],
        lock_timeout_ms=lock_timeout_ms,
        attempts=attempts,
    )


@dataclasses.dataclass(frozen=True)
class Dropped:
    """How drop_detached went: each index's drop, the heap's (with the audit event), and the
    milliseconds paused between them for the journal."""

    indexes: list[Step]
    heap: Step
    paused_ms: float


def drop_detached(
    partition: Partition,
    *,
    lock_timeout_ms: int | None = None,
    attempts: int | None = None,
    then: Callable[[Any], None] | None = None,
) -> Dropped:
    """Drops a detached month's table, running `then(cursor)` (its audit event) in the same
    transaction. The call records carry no foreign key, so the drop locks this table alone; still a
    transaction of its own with a short lock wait, like the detach, for a query that reads the
    detached month. The files are unlinked after the commit, when the lock is already released.

    Gigabytes unlinked at once stall the file system's journal, and every call's commit waits for
    it (an ext4 volume mounted with `discard` trims each freed extent in the journal's commit:
    about 0.12 s per GB here). So the table's indexes go first, one short transaction each (they
    lock only this table, which nothing reads any more), and the final drop unlinks the heap alone.
    A drop whose unlink took longer than UNLINK_SLOW_MS is followed by a pause as long: on a volume
    without online discard the unlinks take a few milliseconds and nothing waits."""
    indexes: list[Step] = []
    paused = 0.0

    def pace(step: Step) -> None:
        nonlocal paused
        if step.commit_ms > UNLINK_SLOW_MS:
            time.sleep(step.commit_ms / 1000)
            paused += step.commit_ms

    for index, constraint in _indexes(partition.name):
        statement = (
            f'ALTER TABLE "{partition.name}" DROP CONSTRAINT "{constraint}"' if constraint else f'DROP INDEX "{index}"'
        )
        indexes.append(_with_lock([statement], lock_timeout_ms=lock_timeout_ms, attempts=attempts))
        pace(indexes[-1])
    heap = _with_lock(
        [f'DROP TABLE "{partition.name}"'],
        lock_timeout_ms=lock_timeout_ms,
        attempts=attempts,
        then=then,
    )
    return Dropped(indexes=indexes, heap=heap, paused_ms=round(paused, 1))


def _indexes(table: str) -> list[tuple[str, str | None]]:
    """The table's indexes, largest first, each with the constraint that owns it (its primary
    key) or None."""
    with connection.cursor() as c:
        c.execute(
            "SELECT ic.relname, con.conname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
            " LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid"
            " WHERE i.indrelid = to_regclass(%s) ORDER BY pg_relation_size(i.indexrelid) DESC",
            [table],
        )
        return list(c.fetchall())


def drop_partition(partition: Partition, *, lock_timeout_ms: int | None = None) -> None:
    """Detaches and drops one month (two short transactions; see detach_partition)."""
    if partition.attached:
        detach_partition(partition, lock_timeout_ms=lock_timeout_ms)
    drop_detached(partition, lock_timeout_ms=lock_timeout_ms)


def detached() -> list[Partition]:
    """Tables named as months that are not attached: a prune that detached a month and stopped
    before its drop left them (oldest first)."""
    with connection.cursor() as c:
        c.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition"
            " AND pg_table_is_visible(oid) AND relname LIKE %s",
            [f"{PARENT}_p%"],
        )
        names = [row[0] for row in c.fetchall()]
    found = []
    for name in names:
        match = _NAME.match(name)
        if match:
            start, end = month_bounds(dt.date(int(match.group(1)), int(match.group(2)), 1))
            found.append(Partition(name=name, start=start, end=end, attached=False))
    return sorted(found, key=lambda p: p.start)
