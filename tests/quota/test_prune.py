"""Retention: `prune_call_records --before YYYY-MM [--archive DIR]` drops whole months after their
rollups exist (refusing otherwise, nothing dropped), archives them as gzip CSV that holds every row,
audits each month, never touches the current month, and leaves an allocation with pruned history
deletable. Beat's run follows GATEWAY_RETENTION_MONTHS and does nothing while it is unset."""

import csv
import datetime as dt
import gzip
import io

import pytest
from django.core.management import CommandError, call_command
from django.db.models import ProtectedError
from django.utils import timezone

from allocations.models import Allocation, AuditEvent
from quota import partitions, retention
from quota.models import CallRecord
from quota.tasks import call_records_prune
from tests.factories import AllocationFactory, call_record

NOW = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)


def months_ago(n: int) -> dt.date:
    return partitions.add_months(NOW.date().replace(day=1), -n)


record = call_record


@pytest.fixture
def history(db, monkeypatch):
    """Records in the months 5, 4 and 3 before NOW (two each) and this month (one)."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    allocation = AllocationFactory()
    for n in (5, 4, 3):
        month = months_ago(n)
        if partitions.partition_name(month) not in {p.name for p in partitions.partitions()}:
            partitions.create_partition(month)
        start = partitions.month_bounds(month)[0]
        record(allocation, start + dt.timedelta(days=2))
        record(allocation, start + dt.timedelta(days=20, hours=3))
    record(allocation, NOW)
    return allocation


@pytest.fixture
def rollups(monkeypatch):
    covered: set[dt.date] = set()
    monkeypatch.setattr(retention, "rollups_cover", lambda month, records=None: month in covered)
    return covered


def test_a_month_without_rollups_is_refused_and_nothing_is_dropped(history):
    before = CallRecord.objects.count()
    with pytest.raises(CommandError, match="no daily rollups"):
        call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}")
    assert CallRecord.objects.count() == before == 7
    assert not AuditEvent.objects.filter(action="call_records_pruned").exists()


def test_one_month_lacking_rollups_stops_the_whole_run(history, rollups):
    rollups.add(months_ago(5))  # month 4 has none
    with pytest.raises(CommandError, match=f"{months_ago(4):%Y-%m}"):
        call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}")
    assert CallRecord.objects.count() == 7


def test_months_with_rollups_are_archived_dropped_and_audited(history, rollups, tmp_path):
    rollups.update({months_ago(5), months_ago(4)})
    expected = {
        m: sorted(
            CallRecord.objects.filter(
                started_at__gte=partitions.month_bounds(m)[0], started_at__lt=partitions.month_bounds(m)[1]
            ).values_list("request_id", flat=True)
        )
        for m in (months_ago(5), months_ago(4))
    }
    out = io.StringIO()
    call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}", "--archive", str(tmp_path), stdout=out)
    assert (
        "[1/2]" in out.getvalue()
        and "[2/2]" in out.getvalue()
        and "Pruned 2 month(s), 4 call records" in out.getvalue()
    )
    assert CallRecord.objects.count() == 3
    left = {p.name for p in partitions.partitions()}
    for month, ids in expected.items():
        name = partitions.partition_name(month)
        assert name not in left
        with gzip.open(tmp_path / f"{name}.csv.gz", "rt") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["request_id"] for r in rows) == ids
        assert {r["input_tokens"] for r in rows} == {"7"} and "started_at" in rows[0]
        assert {(r["member_name"], r["model_slug"]) for r in rows} == {(history.member.username, history.model.slug)}
        event = AuditEvent.objects.get(action="call_records_pruned", target_id=f"{month:%Y-%m}")
        assert event.target_type == "call_records" and event.before["rows"] == 2
        assert event.after["archive"].endswith(f"{name}.csv.gz") and event.request_id.startswith("cmd-prune")
    assert not list(tmp_path.glob(".*partial"))
    # Run again: nothing left before that month, nothing happens.
    again = io.StringIO()
    call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}", stdout=again)
    assert "nothing to prune" in again.getvalue()


def test_an_empty_month_needs_no_rollups(history, rollups):
    empty = months_ago(8)
    partitions.create_partition(empty)
    call_command("prune_call_records", "--before", f"{months_ago(7):%Y-%m}", stdout=io.StringIO())
    assert partitions.partition_name(empty) not in {p.name for p in partitions.partitions()}
    assert CallRecord.objects.count() == 7


def test_the_current_month_is_never_pruned_and_bad_months_are_refused(history, rollups):
    with pytest.raises(CommandError, match="never pruned"):
        call_command("prune_call_records", "--before", f"{partitions.add_months(months_ago(0), 1):%Y-%m}")
    for bad in ("2026-3", "March", "2026-13"):
        with pytest.raises(CommandError, match="YYYY-MM"):
            call_command("prune_call_records", "--before", bad)
    assert CallRecord.objects.count() == 7


def test_an_allocation_with_pruned_history_can_be_deleted(history, rollups):
    rollups.update({months_ago(5), months_ago(4), months_ago(3), months_ago(0)})
    with pytest.raises(ProtectedError):
        Allocation.objects.get(pk=history.pk).delete()  # its records are still the evidence
    CallRecord.objects.filter(started_at__gte=partitions.month_bounds(months_ago(0))[0]).delete()
    call_command("prune_call_records", "--before", f"{months_ago(0):%Y-%m}", stdout=io.StringIO())
    Allocation.objects.get(pk=history.pk).delete()
    assert not Allocation.objects.filter(pk=history.pk).exists()


def test_beat_follows_the_retention_setting(history, rollups, settings):
    rollups.update({months_ago(5), months_ago(4), months_ago(3)})
    settings.GATEWAY_RETENTION_MONTHS = None
    assert call_records_prune() == 0 and CallRecord.objects.count() == 7
    settings.GATEWAY_RETENTION_MONTHS = 4  # keep the four months before this one: month 5 goes
    assert call_records_prune() == 1
    assert CallRecord.objects.count() == 5
    rollups.clear()
    settings.GATEWAY_RETENTION_MONTHS = 1  # months 4 and 3 lack rollups now: refused, logged
    assert call_records_prune() == 0 and CallRecord.objects.count() == 5


def test_the_retention_cutoff_counts_whole_months_before_the_current_one():
    assert retention.retention_cutoff(NOW, 12) == dt.date(2025, 12, 1)
    assert retention.retention_cutoff(dt.datetime(2026, 1, 31, 23, tzinfo=dt.UTC), 1) == dt.date(2025, 12, 1)


def test_the_real_rollup_check_lets_a_month_go_once_its_rollups_are_rebuilt(history):
    """No stub: records written without the ledger have no rollups, so the months are refused;
    `rebuild_rollups` makes them, the months are dropped and their rollups stay."""
    from quota.models import DailyRollup

    with pytest.raises(CommandError, match="no daily rollups"):
        call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}")
    call_command("rebuild_rollups", stdout=io.StringIO())
    assert retention.rollups_cover(months_ago(5)) and retention.rollups_cover(months_ago(4))
    call_command("prune_call_records", "--before", f"{months_ago(3):%Y-%m}", stdout=io.StringIO())
    assert CallRecord.objects.count() == 3
    assert DailyRollup.objects.filter(day__lt=months_ago(3)).count() == 4  # two days in each pruned month
