"""Applying a rebalance on PostgreSQL: guarded updates, the log, the audit trail, cost caps, dedup."""

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from allocations.exceptions import BadRequest
from allocations.models import Allocation, AuditEvent
from allocations.services import allocation_pause, allocation_update
from quota.models import UsageCounter
from quota.pool import (
    pool_apply_plan,
    pool_config_update,
    pool_plan,
    pool_rebalance,
    pool_rebalance_scheduled,
    pool_state,
)
from quota.pool_models import PoolConfig, RebalanceLog
from tests.factories import AllocationFactory

NOW = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)
LAST_PERIOD = dt.date(2026, 11, 1)


def used(allocation, tokens, period=LAST_PERIOD):
    UsageCounter.objects.create(allocation=allocation, period_start=period, tokens_used=tokens)


def configure(total, floor):
    PoolConfig.objects.update_or_create(pk=1, defaults={"total_tokens_per_month": total, "floor_per_allocation": floor})


def fresh(allocation):
    return Allocation.objects.get(pk=allocation.pk)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def pool(db):
    """Three pool allocations used 5:3:2 last period, with cost caps; plus reserved and inactive ones."""
    a = AllocationFactory(quota_tokens_per_month=10, quota_cost_usd_per_month=Decimal("12.50"))
    b = AllocationFactory(quota_tokens_per_month=None, quota_cost_usd_per_month=Decimal("0"))
    c = AllocationFactory(quota_tokens_per_month=999, quota_cost_usd_per_month=Decimal("3.000000001"))
    for allocation, tokens in ((a, 5000), (b, 3000), (c, 2000)):
        used(allocation, tokens)
        used(allocation, 10**9, period=dt.date(2026, 12, 1))  # this period's usage does not count
    service = AllocationFactory(is_service_allocation=True, quota_tokens_per_month=500)
    locked = AllocationFactory(quota_locked=True, quota_tokens_per_month=300)
    unlimited_service = AllocationFactory(is_service_allocation=True, quota_tokens_per_month=None)
    paused = AllocationFactory(status=Allocation.Status.PAUSED, quota_tokens_per_month=7)
    configure(total=1800, floor=100)
    return {
        "a": a,
        "b": b,
        "c": c,
        "service": service,
        "locked": locked,
        "unlimited": unlimited_service,
        "paused": paused,
    }


def test_it_applies_the_contract_split_and_leaves_reserved_and_inactive_allocations_alone(pool):
    result = pool_rebalance(trigger="command", now=NOW)
    assert not result.refused
    assert [fresh(pool[k]).quota_tokens_per_month for k in "abc"] == [450, 310, 240]
    assert fresh(pool["service"]).quota_tokens_per_month == 500
    assert fresh(pool["locked"]).quota_tokens_per_month == 300
    assert fresh(pool["unlimited"]).quota_tokens_per_month is None
    assert fresh(pool["paused"]).quota_tokens_per_month == 7


def test_cost_caps_of_pool_members_are_never_changed(pool):
    caps = {k: fresh(pool[k]).quota_cost_usd_per_month for k in "abc"}
    pool_rebalance(trigger="command", now=NOW)
    assert {k: fresh(pool[k]).quota_cost_usd_per_month for k in "abc"} == caps
    assert caps == {"a": Decimal("12.5"), "b": Decimal("0"), "c": Decimal("3.000000001")}
    assert not AuditEvent.objects.filter(action="allocation_cost_quota_updated").exists()


def test_the_log_holds_every_allocations_before_after_usage_and_reason(pool):
    log = pool_rebalance(trigger="command", now=NOW).log
    assert (log.outcome, log.total_tokens, log.reserved_tokens, log.distributable_tokens) == (
        "applied",
        1800,
        800,
        1000,
    )
    assert (log.pool_size, log.total_usage, log.usage_period_start, log.skipped) == (3, 10000, LAST_PERIOD, 0)
    rows = {e.allocation_id: (e.quota_before, e.quota_after, e.usage, e.applied) for e in log.entries.all()}
    assert rows == {
        pool["a"].pk: (10, 450, 5000, True),
        pool["b"].pk: (None, 310, 3000, True),
        pool["c"].pk: (999, 240, 2000, True),
    }
    assert all(e.reason.startswith("floor + usage share") for e in log.entries.all())


def test_it_audits_the_rebalance_and_each_quota_change(pool):
    log = pool_rebalance(trigger="command", now=NOW).log
    summary = AuditEvent.objects.get(action="quota_pool_rebalanced")
    assert (summary.target_type, summary.target_id) == ("rebalancelog", str(log.pk))
    assert summary.after["reserved"] == 800
    assert summary.after["distributable"] == 1000
    changes = AuditEvent.objects.filter(action="allocation_token_quota_updated", target_id=str(pool["b"].pk)).get()
    assert changes.before == {"quota_tokens_per_month": None}
    assert changes.after["quota_tokens_per_month"] == 310


def test_allocations_that_changed_since_the_plan_was_made_keep_their_quota(pool):
    state = pool_state(now=NOW)
    shares = pool_plan(state)
    allocation_update(allocation=fresh(pool["a"]), changes={"is_service_allocation": True})
    allocation_update(allocation=fresh(pool["b"]), changes={"quota_locked": True})
    allocation_pause(allocation=fresh(pool["c"]))
    log = pool_apply_plan(state=state, shares=shares, trigger="admin", actor=None, now=NOW)
    assert [fresh(pool[k]).quota_tokens_per_month for k in "abc"] == [10, None, 999]
    assert log.skipped == 3
    assert set(log.entries.values_list("applied", flat=True)) == {False}
    assert all(e.reason.startswith("skipped") for e in log.entries.all())
    assert not AuditEvent.objects.filter(action="allocation_token_quota_updated").exists()


def test_only_the_changed_allocation_is_skipped(pool):
    state = pool_state(now=NOW)
    shares = pool_plan(state)
    Allocation.objects.filter(pk=pool["c"].pk).update(status=Allocation.Status.QUARANTINED)
    log = pool_apply_plan(state=state, shares=shares, trigger="admin", actor=None, now=NOW)
    assert [fresh(pool[k]).quota_tokens_per_month for k in "abc"] == [450, 310, 999]
    assert log.skipped == 1


@pytest.mark.parametrize(
    ("total", "floor", "expected"),
    [(0, 100, "pool is off"), (1099, 100, "distributable 299"), (500, 0, "distributable -300")],
)
def test_a_refused_rebalance_writes_no_quota_and_is_audited(pool, total, floor, expected):
    configure(total=total, floor=floor)
    result = pool_rebalance(trigger="command", now=NOW)
    assert expected in result.refused
    assert [fresh(pool[k]).quota_tokens_per_month for k in "abc"] == [10, None, 999]
    event = AuditEvent.objects.get(action="quota_pool_rebalance_refused")
    assert expected in event.after["reason"]
    assert result.log.outcome == "refused"
    assert not result.log.entries.exists()


def test_an_empty_pool_is_refused(db):
    AllocationFactory(is_service_allocation=True, quota_tokens_per_month=5)
    configure(total=1000, floor=0)
    assert "no allocation in the pool" in pool_rebalance(trigger="command", now=NOW).refused


def test_cold_start_splits_evenly_when_no_pool_member_used_anything(db):
    members = sorted((AllocationFactory() for _ in range(3)), key=lambda a: a.pk.int)
    configure(total=1001, floor=100)
    pool_rebalance(trigger="command", now=NOW)
    assert [fresh(a).quota_tokens_per_month for a in members] == [333, 333, 335]
    assert RebalanceLog.objects.get().cold_start


def test_the_schedule_acts_once_in_the_first_hour_of_the_period_in_the_billing_timezone(pool, settings):
    settings.GATEWAY_BILLING_TIMEZONE = "Asia/Taipei"
    first_minute = dt.datetime(2026, 11, 30, 16, 0, 30, tzinfo=dt.UTC)  # 2026-12-01 00:00:30 in Taipei
    assert pool_rebalance_scheduled(now=first_minute - dt.timedelta(minutes=1)) is None  # November, 23:59 local
    result = pool_rebalance_scheduled(now=first_minute)
    assert result.log.period_key == "2026-12"
    assert result.log.trigger == "schedule"
    assert pool_rebalance_scheduled(now=first_minute + dt.timedelta(minutes=1)).duplicate
    assert pool_rebalance_scheduled(now=dt.datetime(2026, 12, 1, 0, 0, 30, tzinfo=dt.UTC)) is None  # 08:00 local
    assert RebalanceLog.objects.count() == 1
    assert AuditEvent.objects.filter(action="quota_pool_rebalanced").count() == 1


def test_a_refused_scheduled_run_is_not_retried_in_the_same_period(pool):
    configure(total=0, floor=0)
    start = dt.datetime(2026, 12, 1, 0, 0, 5, tzinfo=dt.UTC)
    assert pool_rebalance_scheduled(now=start).refused
    assert pool_rebalance_scheduled(now=start + dt.timedelta(minutes=1)).duplicate
    assert AuditEvent.objects.filter(action="quota_pool_rebalance_refused").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_scheduled_runs_at_the_same_time_apply_once():
    members = [AllocationFactory() for _ in range(4)]
    for i, allocation in enumerate(members):
        used(allocation, 1000 * (i + 1))
    configure(total=10_000, floor=100)
    start = dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt.UTC)
    barrier, results, errors = threading.Barrier(2), [], []

    def run():
        try:
            barrier.wait()
            results.append(pool_rebalance_scheduled(now=start))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.duplicate for r in results) == [False, True]
    assert RebalanceLog.objects.count() == 1
    assert AuditEvent.objects.filter(action="quota_pool_rebalanced").count() == 1
    assert AuditEvent.objects.filter(action="allocation_token_quota_updated").count() == 4
    assert sum(fresh(a).quota_tokens_per_month for a in members) == 10_000


def test_config_update_is_audited_and_validated(db, staff):
    pool_config_update(changes={"total_tokens_per_month": "5000000000", "floor_per_allocation": 10}, actor=staff)
    event = AuditEvent.objects.get(action="pool_config_updated")
    assert event.before == {"total_tokens_per_month": 0, "floor_per_allocation": 0}
    assert event.after == {"total_tokens_per_month": 5_000_000_000, "floor_per_allocation": 10}
    assert event.actor_label == "admin"
    pool_config_update(changes={"total_tokens_per_month": 5_000_000_000}, actor=staff)
    assert AuditEvent.objects.filter(action="pool_config_updated").count() == 1  # no change, no event
    for bad in ({"total_tokens_per_month": -1}, {"floor_per_allocation": "ten"}, {"floor_per_allocation": True}):
        with pytest.raises(BadRequest) as info:
            pool_config_update(changes=bad, actor=staff)
        assert set(info.value.fields) == set(bad)
    with pytest.raises(BadRequest):
        pool_config_update(changes={"quota_cost_usd_per_month": 1}, actor=staff)
    assert PoolConfig.load().total_tokens_per_month == 5_000_000_000


def test_rebalance_pool_dry_run_prints_the_plan_and_writes_nothing(pool, capsys, time_machine):
    time_machine.move_to(NOW)
    call_command("rebalance_pool", "--dry-run")
    out = capsys.readouterr().out
    assert "reserved=800 distributable=1000 pool=3" in out
    assert str(pool["a"].pk) in out and " 450 " in out and "unlimited" in out
    assert "dry run" in out
    assert not RebalanceLog.objects.exists()
    assert fresh(pool["a"]).quota_tokens_per_month == 10


def test_rebalance_pool_applies_and_says_so(pool, capsys, time_machine):
    time_machine.move_to(NOW)
    call_command("rebalance_pool")
    assert "applied: rebalance log" in capsys.readouterr().out
    assert fresh(pool["a"]).quota_tokens_per_month == 450
    assert RebalanceLog.objects.get().trigger == "command"


def test_rebalance_pool_fails_with_the_reason_when_refused(pool):
    configure(total=0, floor=0)
    with pytest.raises(CommandError, match="pool is off"):
        call_command("rebalance_pool")
    with pytest.raises(CommandError, match="pool is off"):
        call_command("rebalance_pool", "--dry-run")


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        # Inside a transaction the activity view is a snapshot taken at its first read: drop it.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_a_rebalance_racing_an_admin_edit_skips_the_allocation_the_admin_took_out_of_the_pool():
    """The admin's transaction holds the row while the rebalance, which planned with the old row,
    reaches its guarded UPDATE; PostgreSQL re-checks the guard on the committed row: skipped."""
    members = [AllocationFactory(quota_tokens_per_month=1) for _ in range(3)]
    for allocation in members:
        used(allocation, 10)
    configure(total=3000, floor=0)
    target = members[0]
    admin_holds_row, results, errors = threading.Event(), [], []

    def admin_edit():
        try:
            with transaction.atomic():
                row = Allocation.objects.select_for_update().get(pk=target.pk)
                row.is_service_allocation = True
                row.save(update_fields=["is_service_allocation"])
                admin_holds_row.set()
                deadline = time.monotonic() + 60
                while not _waiting_on_a_lock() and time.monotonic() < deadline:
                    time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def rebalance_run():
        try:
            admin_holds_row.wait(60)
            results.append(pool_rebalance(trigger="admin", now=NOW))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=admin_edit), threading.Thread(target=rebalance_run)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = results[0].log
    entry = log.entries.get(allocation=target)
    assert (entry.applied, entry.quota_after, log.skipped) == (False, 1, 1)
    assert fresh(target).quota_tokens_per_month == 1
    assert fresh(target).is_service_allocation
    assert [fresh(a).quota_tokens_per_month for a in members[1:]] == [1000, 1000]
