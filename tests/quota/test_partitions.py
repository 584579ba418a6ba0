"""Call records by month: the table is partitioned, a query naming a period reads only its months
(EXPLAIN), beat's task creates the months ahead once and moves stray rows out of DEFAULT, records
far off the calendar are still recorded, and ids stay unique and ordered across months."""

import datetime as dt
import functools
import re

import pytest
from django.db import connection
from django.utils import timezone

from quota import partitions
from quota.models import CallRecord
from quota.periods import period_bounds
from quota.tasks import call_record_partitions
from tests.factories import AllocationFactory, call_record

record = functools.partial(call_record, input_tokens=5)


def rows_in(table: str) -> int:
    with connection.cursor() as c:
        c.execute(f'SELECT count(*) FROM "{table}"')  # noqa: S608 (a test's table name)
        return c.fetchone()[0]


def scanned_tables(queryset) -> set[str]:
    """The partitions a query's plan reads ("... Scan [using <index>] on <table>"; a bitmap scan
    names its index after "on", which is no partition)."""
    found = re.findall(r"\bon (quota_callrecord\w*)", queryset.explain())
    return {name for name in found if re.fullmatch(r"quota_callrecord_(p\d{4}_\d{2}|default)", name)}


@pytest.fixture
def allocation(db):
    return AllocationFactory()


def test_the_table_is_partitioned_by_month_with_months_ahead_and_a_default(db):
    assert partitions.is_partitioned()
    this_month = timezone.now().date().replace(day=1)
    names = {p.name for p in partitions.partitions()}
    for n in range(partitions.AHEAD + 1):
        assert partitions.partition_name(partitions.add_months(this_month, n)) in names
    with connection.cursor() as c:
        c.execute("SELECT to_regclass(%s) IS NOT NULL", [partitions.DEFAULT])
        assert c.fetchone()[0]


def test_a_period_query_reads_only_its_months_partitions(allocation):
    now = timezone.now()
    record(allocation, now)
    this_month = partitions.partition_name(now.date().replace(day=1))
    start, end = period_bounds(now)
    assert scanned_tables(CallRecord.objects.in_period(start, end).filter(allocation=allocation)) == {this_month}
    assert scanned_tables(CallRecord.objects.in_period(start, end)) == {this_month}
    day = CallRecord.objects.filter(started_at__gte=start, started_at__lt=start + dt.timedelta(days=1))
    assert scanned_tables(day) == {this_month}
    # A query that names no period reads every month (and the default partition).
    everything = scanned_tables(CallRecord.objects.filter(outcome="x"))
    assert len(everything) >= partitions.AHEAD + 2 and partitions.DEFAULT in everything


def test_a_record_off_the_calendar_is_kept_in_default_and_moves_when_its_month_is_made(allocation):
    far = dt.datetime(2031, 5, 17, 12, tzinfo=dt.UTC)
    kept = record(allocation, far)
    assert rows_in(partitions.DEFAULT) == 1
    name = partitions.create_partition(dt.date(2031, 5, 1))
    assert rows_in(partitions.DEFAULT) == 0 and rows_in(name) == 1
    assert CallRecord.objects.get(pk=kept.pk).started_at == far


def test_beat_creates_missing_months_once(allocation, monkeypatch):
    later = timezone.now() + dt.timedelta(days=200)
    monkeypatch.setattr(timezone, "now", lambda: later)
    created = call_record_partitions()
    assert created  # months 7 to 10 from now did not exist
    assert call_record_partitions() == []  # idempotent
    names = {p.name for p in partitions.partitions()}
    assert partitions.partition_name(partitions.add_months(later.date().replace(day=1), partitions.AHEAD)) in names


def test_ids_are_unique_and_increase_across_months(allocation):
    now = timezone.now()
    made = [record(allocation, now - dt.timedelta(days=40 * n)) for n in range(4)]
    ids = [r.pk for r in made]
    assert ids == sorted(ids) and len(set(ids)) == 4
    # Django's id-based lookups and updates work on the partitioned table.
    CallRecord.objects.filter(pk=ids[2]).update(error_code="x")
    assert CallRecord.objects.get(pk=ids[2]).error_code == "x"
    moved = CallRecord.objects.get(pk=ids[0])
    moved.started_at = now - dt.timedelta(days=400)  # a row may even change month
    moved.save(update_fields=["started_at"])
    assert CallRecord.objects.get(pk=ids[0]).started_at == moved.started_at


def test_a_rare_outcome_is_found_by_its_partial_index(allocation):
    record(allocation, timezone.now(), input_tokens=0)
    listed = CallRecord.objects.filter(outcome="rejected_model_kind").order_by("-started_at", "-id")[:51]
    with connection.cursor() as c:
        c.execute("SET LOCAL enable_seqscan = off")  # a tiny table is read whole otherwise
        plan = listed.explain()
    assert "outcome_started_at_idx" in plan  # the partial index proves it covers any outcome but success
    assert list(listed) == []
