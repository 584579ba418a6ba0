"""Retention next to live traffic: a month's detach and its drop are short transactions of their own
that wait briefly for their locks and retry, so a call settling meanwhile is waited out (never
failed, never stalled for long), a long query makes the run stop with nothing half-done, and a
month left detached by a stopped run is dropped and audited by the next one."""

import datetime as dt
import io
import threading
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from allocations.models import AuditEvent
from quota import partitions, retention
from quota.models import CallRecord
from tests.factories import AllocationFactory, call_record

pytestmark = pytest.mark.django_db(transaction=True)


record = call_record


@pytest.fixture
def old_month(monkeypatch):
    """Two records in a month three months back (its rollups taken as written), one this month;
    short lock waits so that the tests run fast."""
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT_MS", 20)
    monkeypatch.setattr(partitions, "LOCK_PAUSE_S", 0.02)
    monkeypatch.setattr(retention, "rollups_cover", lambda month, records=None: True)
    allocation = AllocationFactory()
    this_month = timezone.now().date().replace(day=1)
    month = partitions.add_months(this_month, -3)
    start = partitions.month_bounds(month)[0]
    # Months an earlier test left (empty: the flush between tests empties tables, it drops none)
    # go for the test and come back after it.
    older = [p for p in partitions.partitions() if p.start < start]
    for partition in older:
        partitions.drop_partition(partition)
    existed = partitions.partition_name(month) in {p.name for p in partitions.partitions()}
    if not existed:
        partitions.create_partition(month)
    record(allocation, start + dt.timedelta(days=1))
    record(allocation, start + dt.timedelta(days=9))
    record(allocation, timezone.now())
    yield allocation, month
    with connection.cursor() as c:
        c.execute(f'DROP TABLE IF EXISTS "{partitions.partition_name(month)}"')
    for again in [p.month for p in older] + ([month] if existed else []):
        partitions.create_partition(again)


def holding(sql_or_work, *, until: threading.Event, ready: threading.Event):
    """A thread with its own connection that runs `sql_or_work` in a transaction and keeps the
    transaction (and its locks) open until `until` is set."""

    def run():
        try:
            with transaction.atomic():
                if callable(sql_or_work):
                    sql_or_work()
                else:
                    with connection.cursor() as c:
                        c.execute(sql_or_work)
                ready.set()
                until.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(10)
    return thread


def test_a_prune_waits_out_a_call_settling_meanwhile_and_the_call_is_recorded(old_month):
    allocation, month = old_month
    settled = str(uuid.uuid4())
    release, ready = threading.Event(), threading.Event()

    def settle():  # a settlement's insert into the table, its transaction not committed yet
        CallRecord.objects.create(
            request_id=settled,
            allocation=allocation,
            member=allocation.member,
            model=allocation.model,
            endpoint="chat.completions",
            started_at=timezone.now(),
            outcome="success",
        )

    thread = holding(settle, until=release, ready=ready)
    timer = threading.Timer(0.3, release.set)  # the call commits while the prune keeps retrying
    timer.start()
    try:
        pruned = retention.prune(before=partitions.add_months(month, 1))
    finally:
        release.set()
        thread.join(10)
    assert len(pruned) == 1 and pruned[0].rows == 2
    assert pruned[0].timings["detach_attempts"] > 1  # it had to wait for the settling call
    assert CallRecord.objects.filter(request_id=settled).exists()
    assert CallRecord.objects.count() == 2  # this month's two; the old month's are gone
    assert partitions.partition_name(month) not in {p.name for p in partitions.partitions() + partitions.detached()}
    assert AuditEvent.objects.get(action="call_records_pruned", target_id=f"{month:%Y-%m}").before["rows"] == 2


def test_a_query_holding_the_table_stops_the_run_with_nothing_detached(old_month):
    _, month = old_month
    release, ready = threading.Event(), threading.Event()
    thread = holding("LOCK TABLE quota_callrecord IN ACCESS SHARE MODE", until=release, ready=ready)
    try:
        with pytest.raises(CommandError, match="no lock in 40 attempts of 20 ms"):
            call_command("prune_call_records", "--before", f"{partitions.add_months(month, 1):%Y-%m}")
    finally:
        release.set()
        thread.join(10)
    assert partitions.partition_name(month) in {p.name for p in partitions.partitions()}
    assert CallRecord.objects.count() == 3
    assert not AuditEvent.objects.filter(action="call_records_pruned").exists()


def test_a_long_report_on_members_and_models_does_not_hold_up_the_drop(old_month):
    """The call records carry no foreign key, so dropping a month takes no lock on the members and
    models it names: a report holding both tables lets the whole prune through."""
    _, month = old_month
    release, ready = threading.Event(), threading.Event()
    thread = holding(
        "LOCK TABLE allocations_member, allocations_catalogmodel IN ACCESS SHARE MODE", until=release, ready=ready
    )
    try:
        pruned = retention.prune(before=partitions.add_months(month, 1))
    finally:
        release.set()
        thread.join(10)
    assert [(p.month, p.rows) for p in pruned] == [(month, 2)]
    assert partitions.detached() == []


def test_a_month_left_detached_by_a_stopped_run_is_dropped_and_audited_by_the_next(old_month, monkeypatch):
    """A query that reads the month's table once it is detached (a report on the old month) stops
    the drop, which needs that table alone: the month stays detached, and the next run drops it."""
    _, month = old_month
    name = partitions.partition_name(month)
    release, ready = threading.Event(), threading.Event()
    threads = []
    detach = partitions.detach_partition

    def detach_then_read(partition, **kwargs):
        step = detach(partition, **kwargs)
        threads.append(holding(f'LOCK TABLE "{name}" IN ACCESS SHARE MODE', until=release, ready=ready))
        return step

    monkeypatch.setattr(partitions, "detach_partition", detach_then_read)
    try:
        with pytest.raises(CommandError, match="run the command again later"):
            call_command("prune_call_records", "--before", f"{partitions.add_months(month, 1):%Y-%m}")
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    monkeypatch.setattr(partitions, "detach_partition", detach)
    assert len(threads) == 1
    assert name not in {p.name for p in partitions.partitions()}
    assert [p.name for p in partitions.detached()] == [name]  # detached, its rows still there
    assert not AuditEvent.objects.filter(action="call_records_pruned").exists()
    out = io.StringIO()
    call_command("prune_call_records", "--before", f"{partitions.add_months(month, 1):%Y-%m}", stdout=out)
    assert f"{month:%Y-%m}: 2 records" in out.getvalue() and "left detached by an earlier run" in out.getvalue()
    assert partitions.detached() == []
    event = AuditEvent.objects.get(action="call_records_pruned", target_id=f"{month:%Y-%m}")
    assert event.before["rows"] == 2
