"""Daily and hourly rollups of the call records (quota.rollup_models): how they are written, read,
rebuilt and checked.

- Written by every statement that writes call records (the settlement, a refusal's record): the
  records inserted are summed by key and added to their rollup rows by data-modifying CTEs
  (`upserts_sql`: the daily rollup, then the hourly one) in the same statement, so a record and
  its rollups commit together or not at all.
- The hourly rollups keep the last few days (HOURLY_KEEP) for the reads by hour (`hourly_sums`:
  the overview by hour, the anomaly check); beat deletes older hours, `rebuild_rollups` rebuilds
  the window.
- Read by `usage_sums`: the whole days of a range from the rollups, the partial days at its edges
  (a range that does not start or end at midnight in the billing timezone) from the records.
- Rebuilt from the records for a range of days by `rollups_rebuild` (the data migration, the
  `rebuild_rollups` command), under a lock that makes it exact beside live settlements.
- `rollups_cover(month)`: whether the rollups of a month account for every record of it (what
  pruning a month of records requires).
"""

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, DateTimeField, ExpressionWrapper, F, Func, Max, Min, Q, QuerySet, Sum, Value
from django.db.models.functions import TruncDate
from django.utils import timezone

from allocations.audit import Actor, audit_record

from .models import CARRIES_USAGE, CallRecord
from .periods import billing_tz
from .pricing import ZERO
from .rollup_models import DailyRollup, HourlyRollup

ROLLUP_TABLE = DailyRollup._meta.db_table
CALL_TABLE = CallRecord._meta.db_table
KEY = ("day", "allocation_id", "member_id", "model_id", "outcome", "api_key_id", "group_ids")
HOURLY_TABLE = HourlyRollup._meta.db_table
HOURLY_KEY = ("hour", "allocation_id", "member_id", "model_id", "outcome", "group_ids")
TOKENS = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
)
SUMS = ("calls", *TOKENS, "quantity", "cost_usd", "priced_calls", "unpriced_calls")
HOURLY_SUMS = ("calls", "cost_usd", "priced_calls")
# The record columns the rollup is computed from: what the settlement's INSERT returns.
SOURCE_COLUMNS: tuple[str, ...] = ("started_at", "allocation_id", "member_id", "model_id", "outcome", "api_key_id")
SOURCE_COLUMNS += ("group_ids", "priced")
SOURCE_COLUMNS += ("cost_usd", *TOKENS, "quantity")

# Each sum as the rollup statements compute it from the records.
_SUM_SQL = {
    "calls": "count(*)",
    **{c: f"coalesce(sum({c}), 0)" for c in TOKENS},
    "quantity": "coalesce(sum(quantity), 0)",
    "cost_usd": "coalesce(sum(cost_usd) FILTER (WHERE priced), 0)",
    "priced_calls": "count(*) FILTER (WHERE priced)",
    "unpriced_calls": "count(*) FILTER (WHERE NOT priced AND (input_tokens > 0 OR output_tokens > 0 OR quantity > 0))",
}
# The same sums over ONE record, as expressions of its row: what a statement that writes one record
# adds without a GROUP BY (each the value its _SUM_SQL gives over that record alone).
_ROW_SQL = {
    "calls": "1",
    **{c: f"coalesce({c}, 0)" for c in TOKENS},
    "quantity": "coalesce(quantity, 0)",
    "cost_usd": "CASE WHEN priced THEN coalesce(cost_usd, 0) ELSE 0 END",
    "priced_calls": "CASE WHEN priced THEN 1 ELSE 0 END",
    "unpriced_calls": (
        "CASE WHEN NOT priced AND (input_tokens > 0 OR output_tokens > 0 OR quantity > 0) THEN 1 ELSE 0 END"
    ),
}


@dataclass(frozen=True)
class Rollup:
    """A rollup table as its statements see it: the bucket of a record (SQL over `started_at`,
    `{tz}` the billing timezone's name), then the record columns of the key, then the sums."""

    table: str
    bucket: str
    key: tuple[str, ...]  # the table's key columns, the bucket's first
    sums: tuple[str, ...]
    constraint: str

    def grouped(self, *, tz: str, source: str) -> str:
        """The rollup rows of the records of `source`: SELECT key, sums ... GROUP BY key."""
        columns = (self.bucket.format(tz=tz), *self.key[1:], *(_SUM_SQL[c] for c in self.sums))
        return (
            f"SELECT {', '.join(columns)} FROM {source} "  # noqa: S608 (constant names)
            f"GROUP BY {', '.join(str(i) for i in range(1, len(self.key) + 1))}"
        )

    def insert(self) -> str:
        return f"INSERT INTO {self.table} AS d ({', '.join(self.key)}, {', '.join(self.sums)}) "

    def upsert(self, *, tz: str, source: str) -> str:
        order = ", ".join(str(i) for i in range(1, len(self.key) + 1))
        return self.insert() + self.grouped(tz=tz, source=source) + f" ORDER BY {order}" + self._added()

    def row_upsert(self, *, tz: str, source: str) -> str:
        """`upsert` for a `source` of at most one record: its row's sums, no GROUP BY nor ORDER BY
        (one rollup row, nothing to sum nor to lock in order)."""
        columns = (self.bucket.format(tz=tz), *self.key[1:], *(_ROW_SQL[c] for c in self.sums))
        return self.insert() + f"SELECT {', '.join(columns)} FROM {source}" + self._added()  # noqa: S608

    def _added(self) -> str:
        return f" ON CONFLICT ON CONSTRAINT {self.constraint} DO UPDATE SET " + ", ".join(
            f"{c} = d.{c} + EXCLUDED.{c}" for c in self.sums
        )


DAILY = Rollup(ROLLUP_TABLE, "(started_at AT TIME ZONE {tz})::date", KEY, SUMS, "daily_rollup_once_per_key")
# The hour in the billing timezone (its start as a timestamptz: date_trunc with a zone keeps the
# two 01:00 hours of a DST change apart), keyed and summed only as the reads by hour need.
HOURLY = Rollup(
    HOURLY_TABLE,
    "date_trunc('hour', started_at, {tz})",
    HOURLY_KEY,
    HOURLY_SUMS,
    "hourly_rollup_once_per_key",
)
_GROUPED = DAILY.grouped(tz="{tz}", source="{source}")
_INSERT = DAILY.insert()


def upsert_sql(source: str, tz: str = "%s", rollup: Rollup = DAILY) -> str:
    """The rollup write for the records of `source` (a relation with SOURCE_COLUMNS, e.g. the
    RETURNING of the CTE that inserted them): grouped by key, added to existing rows. `tz` is the
    SQL of the billing timezone's name (a parameter by default). The rows are written in key order
    so that two statements touching the same rollup rows lock them in the same order."""
    return rollup.upsert(tz=tz, source=source)


def upserts_sql(source: str, *, one: bool = False) -> str:
    """Every rollup's write for the records of `source` as the CTEs of the statement that wrote
    them: `g` the daily rollups, `h` the hourly ones. Each takes the billing timezone's name as a
    parameter (`upserts_params()`, in this order). `one`: `source` holds at most one record (the
    rows' sums without a GROUP BY, `Rollup.row_upsert`)."""
    if one:
        return f"g AS ({DAILY.row_upsert(tz='%s', source=source)}), h AS ({HOURLY.row_upsert(tz='%s', source=source)})"
    return f"g AS ({upsert_sql(source)}), h AS ({upsert_sql(source, rollup=HOURLY)})"


def upserts_params() -> list[str]:
    """The parameters of `upserts_sql`'s CTEs."""
    return [timezone_name(), timezone_name()]


def timezone_name() -> str:
    """The billing timezone's name as the rollup statements pass it to PostgreSQL."""
    return billing_tz().key


# --- rebuild and coverage ----------------------------------------------------------------------------


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=billing_tz())


def rollups_rebuild(*, first_day: dt.date, last_day: dt.date) -> int:
    """Recomputes the rollups of [first_day, last_day] (billing-timezone days) from the call
    records, replacing what was there; returns the rows written. Exact beside live traffic: the
    rollup table is locked against writers (SHARE ROW EXCLUSIVE) for the transaction, so a
    settlement either committed before the recount (and is in it) or writes its rollup after it.
    Settlements wait meanwhile: rebuild closed days, a month at a time. Days whose records were
    pruned are rebuilt empty: do not rebuild those."""
    start, end = _midnight(first_day), _midnight(last_day + dt.timedelta(days=1))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {ROLLUP_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"DELETE FROM {ROLLUP_TABLE} WHERE day >= %s AND day <= %s", [first_day, last_day])  # noqa: S608
        source = f"(SELECT * FROM {CALL_TABLE} WHERE started_at >= %s AND started_at < %s) AS r"  # noqa: S608
        cursor.execute(_INSERT + _GROUPED.format(tz="%s", source=source), [timezone_name(), start, end])
        return cursor.rowcount


def rollups_rebuild_range(
    *,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    progress: Callable[[int, int, dt.date, dt.date, int], None] | None = None,
    actor: Actor = None,
) -> dict | None:
    """`rollups_rebuild` over a range a month at a time (each month one short lock), clamped to
    the days that have call records: the rollups of pruned months, whose records are gone, are
    never emptied. None when no record lies in the range. Audited as `rollups_rebuilt`.
    `progress(done, total, first, last, rows)` is told after each month."""
    days = record_days()
    if days is None:
        return None
    first_day, last_day = max(first_day or days[0], days[0]), min(last_day or days[1], days[1])
    if last_day < first_day:
        return None
    chunks, start = [], first_day
    while start <= last_day:
        following = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        chunks.append((start, min(last_day, following - dt.timedelta(days=1))))
        start = following
    rows = 0
    for done, (start, end) in enumerate(chunks, 1):
        written = rollups_rebuild(first_day=start, last_day=end)
        rows += written
        if progress is not None:
            progress(done, len(chunks), start, end, written)
    summary = {
        "first_day": first_day.isoformat(),
        "last_day": last_day.isoformat(),
        "days": (last_day - first_day).days + 1,
        "rows": rows,
    }
    audit_record(
        actor=actor,
        action="rollups_rebuilt",
        target=None,
        target_type="dailyrollup",
        target_id=f"{summary['first_day']}..{summary['last_day']}",
        after=summary,
    )
    return summary


def rollup_drift(*, first_day: dt.date, last_day: dt.date) -> dict[tuple, tuple]:
    """{key: (from the records, from the rollups)} for every key of [first_day, last_day] whose
    rollup row differs from the sums of its call records (a missing side is None); {} when the
    rollups are exact. Reads the range's records: for checks and tests, not for pages."""
    start, end = _midnight(first_day), _midnight(last_day + dt.timedelta(days=1))
    source = f"(SELECT * FROM {CALL_TABLE} WHERE started_at >= %s AND started_at < %s) AS r"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(_GROUPED.format(tz="%s", source=source), [timezone_name(), start, end])
        records = {_key(row): tuple(row[len(KEY) :]) for row in cursor.fetchall()}
    rolled = {
        _key(row): tuple(row[len(KEY) :])
        for row in DailyRollup.objects.filter(day__gte=first_day, day__lte=last_day).values_list(*KEY, *SUMS)
    }
    return {
        key: (records.get(key), rolled.get(key))
        for key in records.keys() | rolled.keys()
        if records.get(key) != rolled.get(key)
    }


def _key(row: Sequence, width: int = len(KEY)) -> tuple:
    """A rollup key as a dict key: the group ids (a list) as a tuple."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in row[:width])


def record_days() -> tuple[dt.date, dt.date] | None:
    """The first and last billing-timezone day that has call records, or None."""
    found = CallRecord.objects.aggregate(first=Min("started_at"), last=Max("started_at"))
    if found["first"] is None:
        return None
    tz = billing_tz()
    return found["first"].astimezone(tz).date(), found["last"].astimezone(tz).date()


def rollups_cover(month: dt.date) -> bool:
    """Whether the rollups of the calendar month containing `month` (billing timezone) account
    for every call record of that month: their calls add up to its records' count. False when
    records were loaded without their rollups (rebuild them first). One count over the month's
    records (the `started_at` index or the month's partition) and one over its rollup rows."""
    first = month.replace(day=1)
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    records = CallRecord.objects.filter(started_at__gte=_midnight(first), started_at__lt=_midnight(following)).count()
    return records == rolled_calls(first)


def rolled_calls(month: dt.date) -> int:
    """The calls the daily rollups of the calendar month containing `month` hold (one index range
    over the rollup rows of its days)."""
    first = month.replace(day=1)
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return DailyRollup.objects.filter(day__gte=first, day__lt=following).aggregate(n=Sum("calls"))["n"] or 0


# --- the hourly rollups: a window of the last few days ------------------------------------------------

HOUR = dt.timedelta(hours=1)
# How long hourly rollups are kept (beat deletes older ones, `hourly_rollups_prune`): the overview
# takes hours over at most two days, the anomaly check looks back 24 hours.
HOURLY_KEEP = dt.timedelta(days=3)


def hour_floor(at: dt.datetime) -> dt.datetime:
    """The start of the billing-timezone hour holding `at`."""
    return at.astimezone(billing_tz()).replace(minute=0, second=0, microsecond=0)


def hour_ceil(at: dt.datetime) -> dt.datetime:
    """`at` if an hour starts there, else the start of the next billing-timezone hour."""
    floor = hour_floor(at)
    return at if floor == at else (floor.astimezone(dt.UTC) + HOUR).astimezone(billing_tz())


def hourly_kept_from(now: dt.datetime) -> dt.datetime:
    """The first hour the hourly rollups keep at `now`: earlier rows may be deleted."""
    return hour_floor(now).astimezone(dt.UTC) - HOURLY_KEEP


def hourly_exact_from(now: dt.datetime) -> dt.datetime:
    """The first hour whose hourly rollup reads may trust at `now` (an hour after the first one
    kept: a pruning clock ahead of this one deletes no hour read here)."""
    return hourly_kept_from(now) + HOUR


def hourly_rollups_rebuild(*, start: dt.datetime, end: dt.datetime | None = None) -> int:
    """Recomputes the hourly rollups of the hours from the one holding `start` up to `end` (the
    hour holding it included; no end: every later hour) from the call records, replacing what was
    there; returns the rows written. Exact beside live traffic by the same lock as
    `rollups_rebuild`, on the hourly table only (its own transaction: a settlement takes the
    daily rollup's row locks before the hourly ones)."""
    first = hour_floor(start)
    bounds, params = "started_at >= %s", [first]
    if end is not None:
        bounds, params = bounds + " AND started_at < %s", [first, hour_ceil(end + dt.timedelta(microseconds=1))]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {HOURLY_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"DELETE FROM {HOURLY_TABLE} WHERE {bounds.replace('started_at', 'hour')}", params)  # noqa: S608
        source = f"(SELECT * FROM {CALL_TABLE} WHERE {bounds}) AS r"  # noqa: S608
        cursor.execute(HOURLY.insert() + HOURLY.grouped(tz="%s", source=source), [timezone_name(), *params])
        return cursor.rowcount


def hourly_rollups_rebuild_window(*, now: dt.datetime | None = None) -> int:
    """`hourly_rollups_rebuild` of the window kept at `now` (HOURLY_KEEP), the rows before it deleted."""
    now = now or timezone.now()
    hourly_rollups_prune(now=now)
    return hourly_rollups_rebuild(start=hourly_kept_from(now))


def hourly_rollups_prune(*, now: dt.datetime | None = None) -> int:
    """Deletes the hourly rollups of the hours before the window kept at `now`; returns the rows."""
    kept_from = hourly_kept_from(now or timezone.now())
    return HourlyRollup.objects.filter(hour__lt=kept_from).delete()[0]


def record_hours() -> tuple[dt.datetime, dt.datetime] | None:
    """The start of the first hour that has call records and the end of the last, or None."""
    found = CallRecord.objects.aggregate(first=Min("started_at"), last=Max("started_at"))
    if found["first"] is None:
        return None
    return hour_floor(found["first"]), hour_ceil(found["last"] + dt.timedelta(microseconds=1))


def hourly_drift(*, start: dt.datetime, end: dt.datetime) -> dict[tuple, tuple]:
    """`rollup_drift` for the hourly rollups of the hours [start, end) (whole hours)."""
    source = f"(SELECT * FROM {CALL_TABLE} WHERE started_at >= %s AND started_at < %s) AS r"  # noqa: S608
    width = len(HOURLY_KEY)
    with connection.cursor() as cursor:
        cursor.execute(HOURLY.grouped(tz="%s", source=source), [timezone_name(), start, end])
        records = {_key(row, width): tuple(row[width:]) for row in cursor.fetchall()}
    rolled = {
        _key(row, width): tuple(row[width:])
        for row in HourlyRollup.objects.filter(hour__gte=start, hour__lt=end).values_list(*HOURLY_KEY, *HOURLY_SUMS)
    }
    return {
        key: (records.get(key), rolled.get(key))
        for key in records.keys() | rolled.keys()
        if records.get(key) != rolled.get(key)
    }


# --- reads -------------------------------------------------------------------------------------------


def _record_sums() -> dict:
    return {
        "calls": Count("id"),
        **{c: Sum(c) for c in TOKENS},
        "quantity": Sum("quantity"),
        "cost_usd": Sum("cost_usd", filter=Q(priced=True)),
        "priced_calls": Count("id", filter=Q(priced=True)),
        "unpriced_calls": Count("id", filter=Q(priced=False) & CARRIES_USAGE),
    }


def whole_days(start: dt.datetime, end: dt.datetime) -> tuple[dt.date, dt.date] | None:
    """The billing-timezone days lying wholly inside [start, end), as (first, last), or None."""
    tz = billing_tz()
    local = start.astimezone(tz)
    first = local.date() if _midnight(local.date()) == start else local.date() + dt.timedelta(days=1)
    last = end.astimezone(tz).date() - dt.timedelta(days=1)  # the day before the one holding `end`
    return (first, last) if first <= last else None


def usage_sums(*, start: dt.datetime, end: dt.datetime, keys: Sequence[str], where: Q | None = None) -> list[dict]:
    """Usage of [start, end) grouped by `keys`: one dict per group with the keys and SUMS
    (`cost_usd` None when no call of the group was priced). `keys` and `where` are ORM lookups
    both models share (`allocation_id`, `member__username`, `model__provider__name`, `outcome`,
    `allocation__member`, ...) and `day`, the billing-timezone day. The days wholly inside the
    range come from the rollups; a partial day at either edge from its records."""
    where = where or Q()
    days = whole_days(start, end)
    parts: list[Iterable[dict]] = []
    if days is None:
        parts.append(_records(start, end, keys, where))
    else:
        first, last = days
        if start < _midnight(first):
            parts.append(_records(start, _midnight(first), keys, where))
        parts.append(
            DailyRollup.objects.filter(where, day__gte=first, day__lte=last)
            .values(*keys)
            .annotate(**{f"sum_{c}": Sum(c) for c in SUMS})
            .order_by()
        )
        tail = _midnight(last + dt.timedelta(days=1))
        if tail < end:
            parts.append(_records(tail, end, keys, where))
    return _fold(parts, keys)


def _records(
    start: dt.datetime, end: dt.datetime, keys: Sequence[str], where: Q, sums: Sequence[str] = SUMS
) -> QuerySet[CallRecord, dict[str, Any]]:
    qs = CallRecord.objects.in_period(start, end).filter(where)
    if "day" in keys:
        qs = qs.annotate(day=TruncDate("started_at", tzinfo=billing_tz()))
    if "hour" in keys:  # as the hourly rollup's bucket
        hour = Func(Value("hour"), F("started_at"), Value(timezone_name()), function="date_trunc")
        qs = qs.annotate(hour=ExpressionWrapper(hour, output_field=DateTimeField()))
    aggregates = _record_sums()
    return qs.values(*keys).annotate(**{f"sum_{c}": aggregates[c] for c in sums}).order_by()


def hourly_sums(
    *, start: dt.datetime, end: dt.datetime, keys: Sequence[str], now: dt.datetime, where: Q | None = None
) -> list[dict]:
    """`usage_sums` by hour: usage of [start, end) grouped by `keys` (lookups both CallRecord and
    HourlyRollup have, and `hour`, the start of a billing-timezone hour), with HOURLY_SUMS. The
    whole hours inside the range and the window kept at `now` come from the hourly rollups; a
    partial hour at either edge, and hours before the window, from their records."""
    where = where or Q()
    first, last = max(hour_ceil(start), hourly_exact_from(now)), hour_floor(end)
    parts: list[Iterable[dict]] = []
    if last <= first:
        parts.append(_records(start, end, keys, where, HOURLY_SUMS))
    else:
        if start < first:
            parts.append(_records(start, first, keys, where, HOURLY_SUMS))
        parts.append(
            HourlyRollup.objects.filter(where, hour__gte=first, hour__lt=last)
            .values(*keys)
            .annotate(**{f"sum_{c}": Sum(c) for c in HOURLY_SUMS})
            .order_by()
        )
        if last < end:
            parts.append(_records(last, end, keys, where, HOURLY_SUMS))
    return _fold(parts, keys, HOURLY_SUMS)


def _fold(parts: Iterable[Iterable[dict]], keys: Sequence[str], sums: Sequence[str] = SUMS) -> list[dict]:
    folded: dict[tuple, dict] = {}
    for part in parts:
        for row in part:
            key = tuple(tuple(v) if isinstance(v := row[k], list) else v for k in keys)
            into = folded.get(key)
            if into is None:
                into = folded[key] = {**dict(zip(keys, key, strict=True)), **dict.fromkeys(sums, 0), "cost_usd": ZERO}
            for c in sums:
                into[c] += row[f"sum_{c}"] or 0
    for row in folded.values():
        row["cost_usd"] = Decimal(row["cost_usd"]) if row["priced_calls"] else None
    return list(folded.values())


def sort_key(value: object) -> tuple[bool, object]:
    """Orders the groups of `usage_sums` as SQL's ORDER BY ... ASC does: NULL last."""
    return (value is None, value if value is not None else 0)
