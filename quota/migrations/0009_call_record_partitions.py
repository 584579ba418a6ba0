"""Call records become a table partitioned by month of started_at (quota.partitions explains the
layout; docs/OPERATIONS.md, "Call-record partitions", the run on a large table).

The table is rebuilt, not altered (PostgreSQL cannot partition a table in place), in one
transaction: the old table is renamed aside, a new one is made LIKE it (every column it has at this
moment, whichever migrations added them, with defaults, NOT NULLs and CHECKs and its identity), the
rows are copied, then the indexes and foreign keys the old table had are made again under their
own names, so later migrations find what Django expects. The primary key becomes (id, started_at):
a partitioned table's unique indexes must hold its partition key. The way back rebuilds a plain
table the same way, with the primary key (id).

Self-contained on purpose: it reads the table's own catalogue, not the models of the day.
"""

import datetime as dt
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import migrations

TABLE = "quota_callrecord"
ASIDE = "quota_callrecord_rebuilt_from"
AHEAD = 3


def _months(first: dt.date, last: dt.date):
    month = first.replace(day=1)
    while month <= last:
        yield month
        index = month.year * 12 + month.month
        month = dt.date(index // 12, index % 12 + 1, 1)


def _literal(month: dt.date, tz) -> str:
    return "'" + dt.datetime.combine(month, dt.time.min, tzinfo=tz).isoformat() + "'::timestamptz"


def _shape(cursor):
    """The table's secondary indexes (name, definition) and foreign keys (name, definition)."""
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass AND NOT x.indisprimary ORDER BY i.relname",
        [TABLE],
    )
    indexes = [(name, definition.replace(" ON ONLY ", " ON ")) for name, definition in cursor.fetchall()]
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'"
        " ORDER BY conname",
        [TABLE],
    )
    return indexes, cursor.fetchall()


def _rebuild(cursor, *, partitioned: bool) -> None:
    indexes, foreign_keys = _shape(cursor)
    cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{ASIDE}"')
    cursor.execute(f'ALTER INDEX "{TABLE}_pkey" RENAME TO "{ASIDE}_pkey"')
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')  # the copy reads the whole table; the names are reused
    cursor.execute(f"SELECT pg_get_serial_sequence('{ASIDE}', 'id')")
    old_sequence = cursor.fetchone()[0]
    like = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS"
    if partitioned:
        cursor.execute(f'CREATE TABLE "{TABLE}" (LIKE "{ASIDE}" {like}) PARTITION BY RANGE (started_at)')
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, started_at)')
        tz = ZoneInfo(settings.GATEWAY_BILLING_TIMEZONE)
        cursor.execute(f'SELECT min(started_at), max(started_at) FROM "{ASIDE}"')
        oldest, newest = cursor.fetchone()
        today = dt.datetime.now(tz).date()
        first = min(oldest.astimezone(tz).date(), today) if oldest else today
        last = max(newest.astimezone(tz).date(), today) if newest else today
        index = last.year * 12 + last.month - 1 + AHEAD
        for month in _months(first, dt.date(index // 12, index % 12 + 1, 1)):
            nxt = (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            cursor.execute(
                f'CREATE TABLE "{TABLE}_p{month:%Y_%m}" PARTITION OF "{TABLE}"'
                f" FOR VALUES FROM ({_literal(month, tz)}) TO ({_literal(nxt, tz)})"
            )
        cursor.execute(f'CREATE TABLE "{TABLE}_default" PARTITION OF "{TABLE}" DEFAULT')
    else:
        cursor.execute(f'CREATE TABLE "{TABLE}" (LIKE "{ASIDE}" {like})')
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id)')
    cursor.execute(f'INSERT INTO "{TABLE}" OVERRIDING SYSTEM VALUE SELECT * FROM "{ASIDE}"')  # noqa: S608
    for _, definition in indexes:
        cursor.execute(definition)
    for name, definition in foreign_keys:
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{name}" {definition}')
    cursor.execute(f"SELECT pg_get_serial_sequence('{TABLE}', 'id')")
    new_sequence = cursor.fetchone()[0]
    cursor.execute(f'SELECT max(id) FROM "{TABLE}"')  # noqa: S608
    top = cursor.fetchone()[0]
    cursor.execute("SELECT setval(%s, %s, %s)", [new_sequence, top or 1, top is not None])
    cursor.execute(f'DROP TABLE "{ASIDE}"')
    if old_sequence and new_sequence != old_sequence:
        cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {old_sequence.split('.')[-1]}")


def _relkind(cursor) -> str:
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    return cursor.fetchone()[0]


def partition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if _relkind(cursor) != "p":
            _rebuild(cursor, partitioned=True)


def unpartition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if _relkind(cursor) == "p":
            _rebuild(cursor, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [("quota", "0008_call_record_index_diet")]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
