"""Hourly rollups: written with the records by every settlement path (the write paths' tests in
test_rollups.py and test_group_rollups.py compare both rollups with the records), kept for a
window that beat trims and `rebuild_rollups` rebuilds, and read by the overview by hour and the
anomaly check with the answers the records gave."""

import datetime as dt
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour

from allocations.models import Allocation, Group
from backoffice.admin.spend import GROUPS, Period, _spend, period_from, spend_rows
from quota import ledger
from quota.anomaly import HOUR, anomaly_figures
from quota.group_budgets import spend_by_group_buckets
from quota.models import CallRecord, HourlyRollup, PriceVersion
from quota.periods import billing_tz
from quota.pricing import Usage
from quota.rollups import (
    HOURLY_KEEP,
    hour_floor,
    hourly_drift,
    hourly_kept_from,
    hourly_rollups_rebuild_window,
    record_hours,
)
from quota.tasks import call_record_partitions
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, PriceVersionFactory

from .test_group_budgets import member_groups
from .test_group_rollups import _month_partition, _records_spend_by_group

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 20, 12, 37, 15, tzinfo=dt.UTC)
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _call(allocation, rid: str, when: dt.datetime, *, outcome="success", admitted=True, tokens=(100, 50)):
    price = PriceVersion.objects.in_force(model=allocation.model_id, at=when)
    admission = None
    if admitted:
        admission = ledger.admit(
            allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=500,
            est_cost=Decimal("0.01") if price else None, request_id=rid, now=when,
            groups=member_groups(allocation.member),
        )  # fmt: skip
    record = {"request_id": rid, "allocation": allocation, "member": allocation.member, "model": allocation.model,
              "endpoint": "chat.completions", "started_at": when, "outcome": outcome, "status_code": 200}  # fmt: skip
    return ledger.settle(
        admission=admission, record=record, usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]), price=price
    )


@pytest.fixture
def traffic():
    """Three days up to NOW of calls at every minute offset: four allocations of two members (one
    in a group) on a priced model of one provider, an unpriced model and a model of another
    provider; successes, upstream errors, refusals; a service allocation and a paused one."""
    for month in (dt.date(2026, 11, 1), dt.date(2026, 12, 1)):
        _month_partition(month)
    team = Group.objects.create(name="Team", slug="team")
    mei, ken = MemberFactory(username="mei"), MemberFactory(username="ken")
    team.members.add(mei)
    priced, free = CatalogModelFactory(slug="a/priced"), CatalogModelFactory(slug="a/free")
    other = CatalogModelFactory(slug="b/other")
    for model, price in ((priced, "1"), (other, "3")):
        PriceVersionFactory(model=model, effective_from=SINCE, input_per_1m=Decimal(price), output_per_1m=Decimal("2"))
    allocations = [
        AllocationFactory(member=mei, model=priced),
        AllocationFactory(member=ken, model=other),
        AllocationFactory(member=ken, model=free),
        AllocationFactory(member=mei, model=other),
        AllocationFactory(member=ken, model=priced, is_service_allocation=True),
    ]
    for n in range(160):
        allocation = allocations[n % len(allocations)]
        when = NOW - dt.timedelta(minutes=(n * 26 + n % 7) % (3 * 24 * 60), seconds=n % 50)
        outcome = "upstream_error" if n % 9 == 0 else "success"
        _call(allocation, f"c{n}", when, outcome=outcome, admitted=n % 4 != 0, tokens=(100 + n, n))
    # A burst in the last hour (and the minutes just before it) on two allocations.
    for n in range(30):
        _call(allocations[n % 2], f"burst{n}", NOW - dt.timedelta(minutes=n * 2 + 1))
    for n in range(5):
        ledger.record_reject(
            record={"request_id": f"no{n}", "allocation": allocations[0], "member": mei, "model": priced,
                    "endpoint": "chat.completions", "started_at": NOW - dt.timedelta(hours=n * 5, minutes=3),
                    "outcome": "rejected_paused", "status_code": 403}
        )  # fmt: skip
    Allocation.objects.filter(pk=allocations[3].pk).update(status=Allocation.Status.PAUSED)
    return allocations


# --- the answers of the records (what the reads by hour gave when they read them) --------------------------


def _records_spend(period: Period, group: str) -> dict:
    rows = (
        CallRecord.objects.in_period(period.start, period.end)
        .filter(priced=True)
        .annotate(bucket=TruncHour("started_at", tzinfo=billing_tz()))
        .values("bucket", group)
        .annotate(cost=Sum("cost_usd"))
        .order_by()
    )
    return {(r["bucket"], r[group]): r["cost"] for r in rows}


def _records_figures(now: dt.datetime) -> dict:
    hour_ago, day_ago = now - HOUR, now - 24 * HOUR
    rows = (
        CallRecord.objects.filter(
            started_at__gte=day_ago, started_at__lt=now, outcome="success", allocation__isnull=False
        )
        .values("allocation_id")
        .annotate(
            last_hour=Count("id", filter=Q(started_at__gte=hour_ago)),
            baseline=Count("id", filter=Q(started_at__lt=hour_ago)),
        )
        .filter(last_hour__gt=0)
    )
    found = {r["allocation_id"]: (r["last_hour"], r["baseline"]) for r in rows}
    watched = Allocation.objects.filter(
        pk__in=list(found), status=Allocation.Status.ACTIVE, is_service_allocation=False
    ).values_list("pk", flat=True)
    return {pk: found[pk] for pk in watched}


# --- exact, kept, rebuilt ----------------------------------------------------------------------------------


def test_the_hourly_rollups_are_the_records_sums(traffic):
    start, end = record_hours()
    assert hourly_drift(start=start, end=end) == {}
    assert HourlyRollup.objects.aggregate(n=Sum("calls"))["n"] == CallRecord.objects.count() == 195
    # Keyed narrowly: one row per hour × allocation × outcome here (each allocation one member,
    # one model and one group set).
    keys = CallRecord.objects.annotate(hour=TruncHour("started_at")).values("hour", "allocation_id", "outcome")
    assert HourlyRollup.objects.count() == keys.distinct().count()


def test_beat_trims_the_window_and_the_rebuild_restores_it_exactly(traffic):
    later = NOW + dt.timedelta(days=1)
    with time_machine.travel(later, tick=False):
        call_record_partitions()
    kept_from = hourly_kept_from(later)
    assert kept_from == hour_floor(later) - HOURLY_KEEP
    assert not HourlyRollup.objects.filter(hour__lt=kept_from).exists()
    assert HourlyRollup.objects.filter(hour__gte=kept_from).exists()
    assert hourly_drift(start=kept_from, end=NOW + HOUR) == {}
    # Lost or wrong rows of the window come back from the records.
    HourlyRollup.objects.filter(hour__gte=NOW - 6 * HOUR).delete()
    HourlyRollup.objects.filter(hour__lt=NOW - 20 * HOUR).update(calls=7)
    assert hourly_drift(start=kept_from, end=NOW + HOUR) != {}
    with time_machine.travel(later, tick=False):
        call_command("rebuild_rollups", "--from", "2026-11-19")
    assert hourly_drift(start=kept_from, end=NOW + HOUR) == {}
    assert not HourlyRollup.objects.filter(hour__lt=kept_from).exists()
    assert hourly_rollups_rebuild_window(now=NOW) > 0
    assert hourly_drift(start=hourly_kept_from(NOW), end=NOW + HOUR) == {}


# --- the overview by hour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["model", "provider", "member"])
@pytest.mark.parametrize(
    "now",
    [NOW, NOW + dt.timedelta(days=2), NOW + dt.timedelta(days=9)],
    ids=["in the window", "across its start", "before it: the records"],
)
def test_the_overview_by_hour_is_the_records_answer(traffic, by, now):
    params = {"period": "custom", "from": "2026-11-19", "to": "2026-11-20", "step": "hour"}
    period = period_from(params, now=now)
    got: dict = {}
    for at, name, cost in _spend(period, GROUPS[by], now):
        got[(at, name)] = got.get((at, name), Decimal(0)) + (cost or 0)
    assert got == _records_spend(period, GROUPS[by]) and len(got) > 40
    names, rows = spend_rows(period=period, by=by, now=now)
    assert len(rows) == 48 and sum(r["total"] for r in rows) == sum(got.values())


@pytest.mark.parametrize("now", [NOW, NOW + dt.timedelta(days=2), NOW + dt.timedelta(days=9)])
def test_the_overview_by_hour_and_group_is_the_records_answer(traffic, now):
    start, end = dt.datetime(2026, 11, 19, tzinfo=dt.UTC), dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    spend = {(at, name): cost for at, name, cost in spend_by_group_buckets(start=start, end=end, step="hour", now=now)}
    assert spend == _records_spend_by_group(start, end, "hour") and spend


def test_the_overview_by_hour_reads_no_call_record_in_the_window(traffic):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    period = period_from({"period": "custom", "from": "2026-11-19", "to": "2026-11-20", "step": "hour"}, now=NOW)
    with CaptureQueriesContext(connection) as queries:
        list(_spend(period, GROUPS["model"], NOW))
        spend_by_group_buckets(start=period.start, end=period.end, step="hour", now=NOW)
    assert queries.captured_queries and not any("quota_callrecord" in q["sql"] for q in queries.captured_queries)


def test_an_hour_repeated_by_a_dst_change_is_one_bucket_as_the_records_gave(settings):
    """New York leaves daylight time on 2026-11-01: 01:00-02:00 comes twice. The rollup keeps two
    rows (two hours); the picker's 24 local hours show them as one, as the records' query did."""
    _month_partition(dt.date(2026, 11, 1))  # the UTC months of the other tests' partitions
    settings.GATEWAY_BILLING_TIMEZONE = "America/New_York"
    allocation = AllocationFactory(model=CatalogModelFactory(slug="dst/m"))
    PriceVersionFactory(model=allocation.model, effective_from=SINCE, input_per_1m=Decimal("1"))
    _call(allocation, "edt", dt.datetime(2026, 11, 1, 5, 30, tzinfo=dt.UTC), tokens=(1000, 0))  # 01:30 EDT
    _call(allocation, "est", dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC), tokens=(3000, 0))  # 01:30 EST
    now = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    period = period_from({"period": "custom", "from": "2026-11-01", "to": "2026-11-01", "step": "hour"}, now=now)
    _, rows = spend_rows(period=period, by="model", now=now)
    assert HourlyRollup.objects.count() == 2
    assert len(rows) == 24 and rows[1]["total"] == Decimal("0.004")
    assert {(at, name): cost for at, name, cost in _spend(period, GROUPS["model"], now)} != {}
    got: dict = {}
    for at, name, cost in _spend(period, GROUPS["model"], now):
        got[(at, name)] = got.get((at, name), Decimal(0)) + cost
    assert got == _records_spend(period, GROUPS["model"])


# --- the anomaly check -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [
        NOW,  # late in its hour: the records after the cuts
        hour_floor(NOW),
        NOW - dt.timedelta(minutes=30),  # early: the records before the cuts
        NOW - dt.timedelta(minutes=41, seconds=3),  # calls after it (in its hour and later)
        NOW + dt.timedelta(hours=1),
        NOW + 3 * HOUR,
    ],
)
def test_the_anomaly_figures_are_the_records_answer(traffic, now):
    expected = _records_figures(now)
    got = {pk: (f.calls_last_hour, f.baseline_calls) for pk, f in anomaly_figures(now=now).items()}
    assert got == expected
    if now <= NOW:
        assert len(got) >= 2 and all(baseline for _, baseline in got.values())


@pytest.mark.parametrize(
    ("now", "cuts"),
    [
        (NOW, ("2026-11-20 11:37:15", "2026-11-20 12:00:00", "2026-11-19 12:37:15", "2026-11-19 13:00:00")),
        (
            NOW - dt.timedelta(minutes=30),
            ("2026-11-20 11:00:00", "2026-11-20 11:07:15", "2026-11-19 12:00:00", "2026-11-19 12:07:15"),
        ),
    ],
)
def test_the_anomaly_check_reads_an_hour_of_records_at_most(traffic, now, cuts):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        anomaly_figures(now=now)
    assert len(queries.captured_queries) == 3
    [records] = [q["sql"] for q in queries.captured_queries if "quota_callrecord" in q["sql"]]
    # The shorter side of the cut in the first and the previous hour, and after `now`.
    assert all(cut in records for cut in cuts)


def test_a_window_shorter_than_the_check_leaves_it_on_the_records(traffic, monkeypatch):
    from quota import rollups

    monkeypatch.setattr(rollups, "HOURLY_KEEP", dt.timedelta(hours=12))
    HourlyRollup.objects.all().delete()  # nothing to read: the answer comes from the records alone
    got = {pk: (f.calls_last_hour, f.baseline_calls) for pk, f in anomaly_figures(now=NOW).items()}
    assert got == _records_figures(NOW) and got
