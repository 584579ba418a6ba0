"""A closed month's rollups are checked once (beat's `quota.call_record_months_check`, stored as
MonthCheck) and the prune trusts that check while the month's rollups still add up to it, reading
no record; without a check, or with one the rollups no longer match, it counts the month as before.
The index drops before the heap pause only after a slow unlink; lock retries back off."""

import datetime as dt
import io
import logging

import pytest
from django.core.management import CommandError, call_command

from allocations.models import AuditEvent
from quota import partitions, retention
from quota.models import CallRecord, DailyRollup, MonthCheck
from quota.tasks import call_record_months_check
from tests.quota.test_prune import NOW, history, months_ago, record  # noqa: F401 (history: a fixture)


@pytest.fixture
def rolled(history):  # noqa: F811 (the fixture imported above)
    call_command("rebuild_rollups", stdout=io.StringIO())
    return history


@pytest.fixture
def no_count(monkeypatch):
    """Fails the test when the prune counts a month's records."""

    def counted(partition):
        raise AssertionError(f"{partition.name} counted")

    monkeypatch.setattr(partitions, "count_rows", counted)


def month_partition(month: dt.date) -> partitions.Partition:
    return next(p for p in partitions.partitions() if p.month == month)


def test_beat_checks_each_closed_month_once_and_stores_its_count(rolled):
    assert call_record_months_check() == 3  # months 5, 4 and 3; this month is not closed
    checks = {c.month: c.records for c in MonthCheck.objects.all()}
    assert {months_ago(5): 2, months_ago(4): 2, months_ago(3): 2}.items() <= checks.items()
    assert months_ago(0) not in checks
    assert MonthCheck.objects.get(month=months_ago(5)).checked_at == NOW
    assert call_record_months_check() == 0  # checked, rollups unchanged: nothing to do


def test_a_month_closed_less_than_a_day_ago_waits(rolled):
    if partitions.partition_name(months_ago(1)) not in {p.name for p in partitions.partitions()}:
        partitions.create_partition(months_ago(1))
    just_closed = partitions.month_bounds(months_ago(0))[0] + dt.timedelta(hours=12)
    due = {p.month for p in retention.months_to_check(just_closed)}
    assert months_ago(1) not in due and months_ago(3) in due


def test_a_month_whose_days_differ_from_its_rollups_keeps_no_check_and_is_logged(rolled, caplog):
    month = months_ago(4)
    day = DailyRollup.objects.filter(day__gte=month, day__lt=months_ago(3)).order_by("day").first()
    DailyRollup.objects.filter(pk=day.pk).update(calls=0)
    other = DailyRollup.objects.filter(day__gte=month, day__lt=months_ago(3)).exclude(pk=day.pk).get()
    DailyRollup.objects.filter(pk=other.pk).update(calls=2)  # the month's sum still 2, its days not
    with caplog.at_level(logging.ERROR, logger="quota.tasks"):
        call_record_months_check()
    assert not MonthCheck.objects.filter(month=month).exists()
    assert f"call records of {month:%Y-%m} differ from their rollups" in caplog.text
    MonthCheck.objects.create(month=month, records=2, checked_at=NOW)  # an earlier check
    result = retention.check_month(month_partition(month))
    assert not result.ok and result.days == {day.day: (1, 0), other.day: (1, 2)}
    assert not MonthCheck.objects.filter(month=month).exists()


def test_the_prune_of_checked_months_reads_no_record(rolled, no_count):
    call_record_months_check()
    out = io.StringIO()
    call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}", stdout=out)
    assert "against its stored check" in out.getvalue() and "Pruned 2 month(s), 4 call records" in out.getvalue()
    assert CallRecord.objects.count() == 3
    assert AuditEvent.objects.get(action="call_records_pruned", target_id=f"{months_ago(5):%Y-%m}").before["rows"] == 2


def test_a_stored_check_the_rollups_no_longer_match_is_counted_again(rolled, monkeypatch):
    call_record_months_check()
    late = record(rolled, partitions.month_bounds(months_ago(5))[0] + dt.timedelta(days=3))
    call_command("rebuild_rollups", stdout=io.StringIO())  # its rollup, as the ledger writes it
    assert retention.stored_count(months_ago(5)) is None and retention.stored_count(months_ago(4)) == 2
    counted = []
    count_rows = partitions.count_rows
    monkeypatch.setattr(partitions, "count_rows", lambda p: counted.append(p.month) or count_rows(p))
    out = io.StringIO()
    call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}", stdout=out)
    assert counted == [months_ago(5)]  # month 4's check still holds
    assert "Pruned 2 month(s), 5 call records" in out.getvalue()
    assert not CallRecord.objects.filter(pk=late.pk).exists()


def test_a_stored_check_never_lets_a_month_without_rollups_go(rolled):
    call_record_months_check()
    DailyRollup.objects.filter(day__gte=months_ago(4), day__lt=months_ago(3)).delete()
    with pytest.raises(CommandError, match=f"no daily rollups for {months_ago(4):%Y-%m}"):
        call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}")
    assert CallRecord.objects.count() == 7


def test_index_drops_pause_only_after_a_slow_unlink(rolled, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(partitions.time, "sleep", slept.append)
    first, second = (month_partition(months_ago(n)) for n in (5, 4))
    indexes = len(partitions._indexes(first.name))
    monkeypatch.setattr(partitions, "UNLINK_SLOW_MS", 1e9)
    partitions.detach_partition(first)
    dropped = partitions.drop_detached(first)
    assert len(dropped.indexes) == indexes > 1 and slept == [] and dropped.paused_ms == 0
    monkeypatch.setattr(partitions, "UNLINK_SLOW_MS", -1.0)  # every unlink slow: a pause after each index
    partitions.detach_partition(second)
    dropped = partitions.drop_detached(second)
    assert len(slept) == indexes
    assert slept == [step.commit_ms / 1000 for step in dropped.indexes]


def test_a_lock_retry_pauses_briefly_first_then_backs_off():
    """A call's transaction holding the lock is over in a few ms: the first retries come soon; a
    report holding it is waited out about LOCK_PAUSE_S apart."""
    pauses = [partitions.lock_pause_s(attempt) for attempt in range(1, 7)]
    assert pauses == [0.05, 0.1, 0.2, 0.25, 0.25, 0.25]
    total = sum(partitions.lock_pause_s(a) for a in range(1, partitions.LOCK_ATTEMPTS))
    assert 9 < total < 10  # the 40 attempts still wait about 10 s in all
