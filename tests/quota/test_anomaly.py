"""Anomaly quarantine (SPEC section 8): the rule's boundaries, exemptions, the switch and the audit."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from allocations.models import Allocation, AuditEvent
from allocations.services import allocation_unquarantine
from quota.anomaly import Figures, anomalies_detect, anomaly_config_update, anomaly_reason, is_anomalous
from quota.models import CallRecord
from quota.pool_models import AnomalyConfig
from tests.factories import AllocationFactory, roll_up_records

NOW = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def calls(allocation, n, *, ago, outcome="success"):
    """`n` records of the allocation's calls: the first through the ORM, the rest copies of it made
    by the database (request ids r1, r2, …), which writes thousands in milliseconds where building
    and sending them from Python took seconds."""
    if n:
        first = CallRecord.objects.create(
            request_id="r0", allocation=allocation, endpoint="chat.completions", started_at=NOW - ago, outcome=outcome
        )
        columns = [f.column for f in CallRecord._meta.concrete_fields if f.name not in ("id", "request_id")]
        names = ", ".join(connection.ops.quote_name(c) for c in columns)
        table = connection.ops.quote_name(CallRecord._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (request_id, {names}) SELECT 'r' || i, {names} "  # noqa: S608 (model's columns)
                f"FROM {table}, generate_series(1, %s) AS i WHERE id = %s",
                [n - 1, first.pk],
            )
    roll_up_records()  # the check reads the hourly rollups of the whole hours


def world(*, last_hour, baseline, **extra):
    allocation = AllocationFactory(**extra)
    calls(allocation, last_hour, ago=dt.timedelta(minutes=30))
    calls(allocation, baseline, ago=dt.timedelta(hours=5))
    return allocation


def status(allocation):
    return Allocation.objects.get(pk=allocation.pk).status


# --- the pure rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_hour", "baseline", "expected"),
    [
        (99, 207, False),  # 99 < min_calls, although 99 ≥ 10 × 9/h
        (100, 207, True),
        (198, 460, False),  # 9.9 × 20/h
        (199, 460, False),
        (200, 460, True),  # exactly 10 × 20/h
        (9999, 199, False),  # sparse baseline: absolute 10,000
        (10000, 199, True),
        (100, 200, True),  # 200 calls is not sparse: 10 × 8.7/h = 87
        (10000, 0, True),
        (5000, 0, False),
    ],
)
def test_the_rule_at_its_boundaries(last_hour, baseline, expected):
    assert is_anomalous(Figures(last_hour, baseline), AnomalyConfig()) is expected


def test_the_thresholds_come_from_the_config():
    config = AnomalyConfig(min_calls=10, multiplier=Decimal("2.5"), sparse_baseline_calls=0)
    assert is_anomalous(Figures(25, 230), config)  # 2.5 × 10/h
    assert not is_anomalous(Figures(24, 230), config)
    assert not is_anomalous(Figures(9, 0), config)


def test_the_reason_is_readable():
    assert anomaly_reason(Figures(250, 230)) == "250 calls in the last hour, baseline 10.0/h"
    assert anomaly_reason(Figures(100, 207)) == "100 calls in the last hour, baseline 9.0/h"


# --- detection on PostgreSQL -------------------------------------------------------------------------


@pytest.mark.django_db
def test_100_calls_over_a_9_per_hour_baseline_quarantine_and_99_do_not():
    hot = world(last_hour=100, baseline=207)
    calm = world(last_hour=99, baseline=207)
    anomalies_detect(now=NOW)
    assert status(hot) == "quarantined"
    assert status(calm) == "active"
    assert Allocation.objects.get(pk=hot.pk).status_reason == "100 calls in the last hour, baseline 9.0/h"


@pytest.mark.django_db
def test_ten_times_the_baseline_quarantines_and_nine_point_nine_does_not():
    ten = world(last_hour=200, baseline=460)
    nine_nine = world(last_hour=198, baseline=460)
    anomalies_detect(now=NOW)
    assert (status(ten), status(nine_nine)) == ("quarantined", "active")


@pytest.mark.django_db
def test_a_sparse_baseline_needs_the_absolute_threshold():
    at_threshold = world(last_hour=10000, baseline=199)
    below = world(last_hour=9999, baseline=199)
    anomalies_detect(now=NOW)
    assert (status(at_threshold), status(below)) == ("quarantined", "active")


@pytest.mark.django_db
def test_calls_outside_the_24_hours_window_do_not_count():
    allocation = AllocationFactory()
    calls(allocation, 300, ago=dt.timedelta(hours=25))  # would make the baseline non-sparse
    calls(allocation, 100, ago=dt.timedelta(minutes=10))
    calls(allocation, 5000, ago=-dt.timedelta(minutes=1))  # after `now`
    assert anomalies_detect(now=NOW) == []
    assert status(allocation) == "active"


@pytest.mark.django_db
def test_only_successful_calls_count_so_retries_against_refusals_never_quarantine():
    retrier = world(last_hour=99, baseline=207)
    for outcome in ("rejected_quota_busy", "rejected_paused", "rejected_cost_quota_exceeded", "upstream_error"):
        calls(retrier, 3000, ago=dt.timedelta(minutes=10), outcome=outcome)
    assert anomalies_detect(now=NOW) == []
    assert status(retrier) == "active"
    calls(retrier, 1, ago=dt.timedelta(minutes=5))  # the 100th successful call
    assert [d.figures for d in anomalies_detect(now=NOW)] == [Figures(100, 207)]
    assert status(retrier) == "quarantined"


@pytest.mark.django_db
def test_service_allocations_and_inactive_ones_are_exempt():
    service = world(last_hour=10000, baseline=0, is_service_allocation=True)
    paused = world(last_hour=10000, baseline=0, status=Allocation.Status.PAUSED)
    assert anomalies_detect(now=NOW) == []
    assert (status(service), status(paused)) == ("active", "paused")


@pytest.mark.django_db
def test_quarantine_is_audited_with_the_figures_and_a_second_run_changes_nothing():
    hot = world(last_hour=250, baseline=230)
    assert [d.quarantined for d in anomalies_detect(now=NOW)] == [True]
    event = AuditEvent.objects.get(action="allocation_quarantined", target_id=str(hot.pk))
    assert event.actor_label == "system"
    assert event.after["status_reason"] == "250 calls in the last hour, baseline 10.0/h"
    figures = AuditEvent.objects.get(action="allocation_anomaly_detected", target_id=str(hot.pk)).after
    assert (figures["calls_last_hour"], figures["baseline_calls_23h"], figures["baseline_per_hour"]) == (
        250,
        230,
        "10.0",
    )
    assert figures["multiplier"] == "10"
    assert anomalies_detect(now=NOW) == []
    assert AuditEvent.objects.filter(action__in=["allocation_quarantined", "allocation_anomaly_detected"]).count() == 2


@pytest.mark.django_db
def test_an_unquarantined_allocation_is_quarantined_again_only_if_it_is_still_running_away(staff):
    hot = world(last_hour=250, baseline=230)
    anomalies_detect(now=NOW)
    allocation_unquarantine(allocation=Allocation.objects.get(pk=hot.pk), actor=staff)
    assert status(hot) == "active"
    anomalies_detect(now=NOW + dt.timedelta(hours=2))  # the burst is now part of the baseline
    assert status(hot) == "active"


@pytest.mark.django_db
def test_switched_off_or_paused_detection_does_nothing_and_the_pause_expires_by_itself(staff):
    hot = world(last_hour=250, baseline=230)
    anomaly_config_update(changes={"enabled": False}, actor=staff)
    assert anomalies_detect(now=NOW) == []
    anomaly_config_update(changes={"enabled": True, "paused_until": NOW + dt.timedelta(minutes=5)}, actor=staff)
    assert anomalies_detect(now=NOW) == []
    assert status(hot) == "active"
    assert [d.quarantined for d in anomalies_detect(now=NOW + dt.timedelta(minutes=5))] == [True]
    events = AuditEvent.objects.filter(action="anomaly_config_updated").order_by("id")
    assert [e.after for e in events] == [
        {"enabled": False},
        {"enabled": True, "paused_until": (NOW + dt.timedelta(minutes=5)).isoformat()},
    ]


@pytest.mark.django_db
def test_detect_anomalies_command_reports_what_it_quarantined(capsys, time_machine):
    time_machine.move_to(NOW)
    hot = world(last_hour=250, baseline=230)
    call_command("detect_anomalies")
    out = capsys.readouterr().out
    assert f"{hot.pk}: quarantined: 250 calls in the last hour, baseline 10.0/h" in out
    assert "1 allocation(s) quarantined" in out
    AnomalyConfig.objects.filter(pk=1).update(enabled=False)
    call_command("detect_anomalies")
    assert "switched off" in capsys.readouterr().out
