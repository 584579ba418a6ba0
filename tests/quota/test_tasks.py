"""Scheduled jobs: the beat schedule, idempotent tasks, and tasks run by a real Celery worker on Redis."""

import datetime as dt
import time
import uuid
from decimal import Decimal

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.conf import settings
from django.db import connection
from django.utils import timezone

from allocations.models import Allocation, AuditEvent
from gateway_project.celery import app
from quota import tasks
from quota.models import CallRecord, Reservation, UsageCounter
from quota.periods import period_start_date
from quota.pool_models import PoolConfig, RebalanceLog
from tests.factories import AllocationFactory, roll_up_records


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def record(allocation, *, tokens, when):
    return CallRecord.objects.create(
        request_id=str(uuid.uuid4()),
        allocation=allocation,
        endpoint="chat.completions",
        started_at=when,
        outcome="success",
        input_tokens=tokens,
        cost_usd=Decimal("0.5"),
        priced=True,
    )


def expired_reservation(allocation, now):
    counter = UsageCounter.objects.create(
        allocation=allocation, period_start=period_start_date(now), tokens_reserved=40, cost_reserved=Decimal("1")
    )
    Reservation.objects.create(
        counter=counter, request_id="r", tokens=40, cost=Decimal("1"), created_at=now, expires_at=now
    )
    return counter


def test_the_beat_schedule_names_registered_tasks():
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert {entry["task"] for entry in schedule.values()} == {
        "quota.pool_rebalance_tick",
        "quota.anomalies_detect",
        "quota.reservations_sweep",
        "quota.usage_reconcile_nightly",
        "quota.settlements_replay",
        "quota.call_record_partitions",
        "quota.call_record_months_check",
        "quota.call_records_prune",
        "notifications.alerts_scan",
    }
    app.loader.import_default_modules()  # what a worker does at start: every app's tasks module
    assert all(entry["task"] in app.tasks for entry in schedule.values())
    assert schedule["anomalies-detect"]["schedule"] == 300.0
    assert schedule["pool-rebalance-tick"]["schedule"] == 60.0


@pytest.mark.django_db
def test_the_pool_tick_rebalances_once_in_the_first_hour_and_never_again(time_machine):
    for _ in range(2):
        AllocationFactory()
    PoolConfig.objects.create(pk=1, total_tokens_per_month=100, floor_per_allocation=10)
    time_machine.move_to(dt.datetime(2026, 12, 1, 0, 0, 20, tzinfo=dt.UTC), tick=False)
    assert tasks.pool_rebalance_tick.delay().get().startswith("applied log")
    assert tasks.pool_rebalance_tick.delay().get() == "already done this period"
    time_machine.move_to(dt.datetime(2026, 12, 1, 1, 0, 0, tzinfo=dt.UTC), tick=False)
    assert tasks.pool_rebalance_tick.delay().get() == "outside window"
    assert RebalanceLog.objects.count() == 1


@pytest.mark.django_db
def test_the_sweeper_task_releases_an_abandoned_reservation_once():
    now = timezone.now() - dt.timedelta(minutes=5)
    counter = expired_reservation(AllocationFactory(), now)
    assert tasks.reservations_sweep_task.delay().get() == 1
    assert tasks.reservations_sweep_task.delay().get() == 0
    counter.refresh_from_db()
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, Decimal("0"))


@pytest.mark.django_db
def test_nightly_reconcile_reports_drift_once_and_does_not_fix_it():
    now = timezone.now()
    allocation = AllocationFactory()
    record(allocation, tokens=70, when=now)
    roll_up_records()
    counter = UsageCounter.objects.create(allocation=allocation, period_start=period_start_date(now), tokens_used=50)
    assert tasks.usage_reconcile_nightly.delay().get() == 1
    assert tasks.usage_reconcile_nightly.delay().get() == 0  # same drift: not reported twice
    event = AuditEvent.objects.get(action="usage_drift_detected")
    assert event.target_id == str(allocation.pk)
    assert (event.after["counter_tokens"], event.after["record_tokens"]) == (50, 70)
    counter.refresh_from_db()
    assert counter.tokens_used == 50
    UsageCounter.objects.filter(pk=counter.pk).update(tokens_used=60)
    assert tasks.usage_reconcile_nightly.delay().get() == 1  # a different drift is news


@pytest.mark.django_db
def test_nightly_reconcile_with_no_drift_writes_nothing():
    assert tasks.usage_reconcile_nightly.delay().get() == 0
    assert not AuditEvent.objects.filter(action="usage_drift_detected").exists()


@pytest.fixture
def real_worker():
    """A Celery worker thread consuming a queue of its own on the Redis broker of REDIS_URL.

    Its tasks use this test's database (same settings, own connection, closed after each task)."""
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs REDIS_URL (the suite runs with Redis on 127.0.0.1)")
    queue = f"test-{uuid.uuid4().hex}"

    def close_db(**kwargs):
        connection.close()

    task_postrun.connect(close_db, weak=False)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=30):
            yield queue
    finally:
        app.conf.task_always_eager = eager
        task_postrun.disconnect(close_db)


def wait_for(predicate, *, limit_s=60):
    """Polls the database until the worker's effect shows (a liveness bound, not a speed assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_quarantines_a_runaway_allocation_and_sweeps_reservations(real_worker):
    now = timezone.now()
    hot = AllocationFactory()
    CallRecord.objects.bulk_create(
        [
            CallRecord(request_id=f"r{i}", allocation=hot, endpoint="chat", started_at=when, outcome="success")
            for i, when in enumerate([now - dt.timedelta(minutes=1)] * 300 + [now - dt.timedelta(hours=5)] * 230)
        ]
    )
    roll_up_records()  # the check reads the hourly rollups
    counter = expired_reservation(AllocationFactory(), now - dt.timedelta(minutes=5))

    tasks.anomalies_detect_task.apply_async(queue=real_worker)
    tasks.reservations_sweep_task.apply_async(queue=real_worker)

    assert wait_for(lambda: Allocation.objects.get(pk=hot.pk).status == "quarantined")
    assert wait_for(lambda: not Reservation.objects.filter(counter=counter).exists())
    assert Allocation.objects.get(pk=hot.pk).status_reason == "300 calls in the last hour, baseline 10.0/h"
    counter.refresh_from_db()
    assert counter.tokens_reserved == 0


@pytest.mark.django_db
def test_nightly_reconcile_reports_a_drifted_group_counter_once():
    from allocations.models import Group
    from quota.models import CallRecord, GroupUsageCounter
    from tests.factories import roll_up_records

    now = timezone.now()
    group = Group.objects.create(name="G", slug="g")
    CallRecord.objects.create(
        request_id="g1", endpoint="chat", started_at=now, outcome="success", input_tokens=30, group_ids=[group.pk]
    )
    roll_up_records()  # written without the ledger: its rollup as the settlement writes it
    GroupUsageCounter.objects.create(group=group, period_start=period_start_date(now), tokens_used=20)
    assert tasks.usage_reconcile_nightly.delay().get() == 1
    assert tasks.usage_reconcile_nightly.delay().get() == 0
    event = AuditEvent.objects.get(action="usage_drift_detected")
    assert (event.target_type, event.target_id) == ("group", str(group.pk))
    assert (event.after["counter_tokens"], event.after["record_tokens"]) == (20, 30)
