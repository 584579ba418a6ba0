"""The daily rollups carry the groups each call counted toward (and its API key): every write path
keeps them equal to the records, and the group reports (usage by group, spend by group, the group
half of reconcile_usage) and the member page's per-key spend read them with the answers the
records give, across a member moved between groups, a deleted group and a pruned month."""

import datetime as dt
import uuid
from collections import defaultdict
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations.models import Group
from quota import ledger, partitions, retention
from quota.group_budgets import _record_sums, group_usage_reconcile, spend_by_group_buckets, usage_by_group
from quota.ledger.spool import spool_replay
from quota.ledger.statements import Settlement, settle_statement, settle_values
from quota.models import CARRIES_USAGE, CallRecord, DailyRollup, GroupUsageCounter, PriceVersion
from quota.periods import billing_tz, period_bounds
from quota.pricing import Usage
from quota.rollups import hourly_drift, record_days, record_hours, rollup_drift, rollups_rebuild_range
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, PriceVersionFactory

from .test_group_budgets import member_groups
from .test_spool import _database_down, _database_up, empty_spool  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _no_drift() -> dict:
    """The daily and the hourly rollups' keys that differ from their records' sums."""
    days, hours = record_days(), record_hours()
    if days is None or hours is None:
        return {}
    daily = rollup_drift(first_day=days[0], last_day=days[1])
    hourly = hourly_drift(start=hours[0], end=hours[1])
    return {**{("day", *k): v for k, v in daily.items()}, **{("hour", *k): v for k, v in hourly.items()}}


def _month_partition(month: dt.date) -> None:
    if partitions.is_partitioned() and partitions.partition_name(month) not in {
        p.name for p in partitions.partitions()
    }:
        partitions.create_partition(month)


def _record(allocation, rid: str, when: dt.datetime, outcome: str = "success") -> dict:
    return {
        "request_id": rid,
        "allocation": allocation,
        "member": allocation.member,
        "model": allocation.model,
        "endpoint": "chat.completions",
        "started_at": when,
        "outcome": outcome,
        "status_code": 200,
    }


def _call(allocation, rid: str, when: dt.datetime, *, tokens=(100, 50), priced=True):
    """A call admitted with the member's groups of the moment and settled by the statement."""
    price = PriceVersion.objects.in_force(model=allocation.model_id, at=when) if priced else None
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=500,
        est_cost=Decimal("0.01") if price else None,
        request_id=rid,
        now=when,
        groups=member_groups(allocation.member),
    )
    usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1])
    return ledger.settle(admission=admission, record=_record(allocation, rid, when), usage=usage, price=price)


# --- the answers of the records (what the group reports gave when they read them) --------------------


def _records_usage_by_group(start, end) -> dict:
    per: dict = defaultdict(lambda: [0, 0, 0, 0, None])
    for r in CallRecord.objects.filter(started_at__gte=start, started_at__lt=end):
        for g in r.group_ids:
            row = per[g]
            row[0] += 1
            row[1] += int(not r.priced and CallRecord.objects.filter(CARRIES_USAGE, pk=r.pk).exists())
            row[2] += r.input_tokens
            row[3] += r.output_tokens
            if r.priced:
                row[4] = (row[4] or Decimal(0)) + r.cost_usd
    live = set(Group.objects.values_list("pk", flat=True))
    return {str(g): tuple(v) for g, v in per.items() if g in live}


def _records_spend_by_group(start, end, step) -> dict:
    names = dict(Group.objects.values_list("pk", "name"))
    spend: dict = defaultdict(Decimal)
    tz = billing_tz()
    for r in CallRecord.objects.filter(started_at__gte=start, started_at__lt=end, priced=True):
        local = r.started_at.astimezone(tz)
        at = (
            local.replace(minute=0, second=0, microsecond=0)
            if step == "hour"
            else local.replace(hour=0, minute=0, second=0, microsecond=0)
        )
        for g in r.group_ids:
            if g in names:
                spend[(at, names[g])] += r.cost_usd
    return dict(spend)


def _records_group_sums(start, end) -> dict:
    sums: dict = defaultdict(lambda: [0, Decimal(0)])
    for r in CallRecord.objects.filter(started_at__gte=start, started_at__lt=end):
        for g in r.group_ids:
            sums[g][0] += r.input_tokens + r.output_tokens
            sums[g][1] += r.cost_usd if r.priced else 0
    return {g: tuple(v) for g, v in sums.items()}


def _reports_match_the_records(start, end) -> None:
    got = {
        u.group_id: (u.calls, u.unpriced_calls, u.input_tokens, u.output_tokens, u.priced_cost)
        for u in usage_by_group(start=start, end=end)
    }
    assert got == _records_usage_by_group(start, end)
    step = "hour" if end - start <= dt.timedelta(days=2) else "day"
    spend = {(at, name): cost for at, name, cost in spend_by_group_buckets(start=start, end=end, step=step)}
    assert spend == _records_spend_by_group(start, end, step)
    assert _record_sums(start, end) == _records_group_sums(start, end)


# --- a month of a team whose groups change --------------------------------------------------------------


@pytest.fixture
def team():
    """November 2026: mei in Research and Ops, ken in Research; on the 10th mei moves from Ops to
    Infra; on the 16th Ops is deleted. Priced and unpriced calls, a refusal, calls on the 20th."""
    _month_partition(dt.date(2026, 11, 1))
    research = Group.objects.create(name="Research", slug="research", quota_cost_usd_per_month=Decimal("100"))
    ops = Group.objects.create(name="Ops", slug="ops")
    infra = Group.objects.create(name="Infra", slug="infra", quota_tokens_per_month=10**9)
    mei, ken = MemberFactory(username="mei"), MemberFactory(username="ken")
    research.members.add(mei, ken)
    ops.members.add(mei)
    priced, free = CatalogModelFactory(slug="t/priced"), CatalogModelFactory(slug="t/free")
    PriceVersionFactory(model=priced, effective_from=SINCE, input_per_1m=Decimal("1"), output_per_1m=Decimal("2"))
    mine, theirs, unpriced = (
        AllocationFactory(member=mei, model=priced),
        AllocationFactory(member=ken, model=priced),
        AllocationFactory(member=ken, model=free),
    )
    start = dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC)
    for n in range(8):
        _call(mine, f"a{n}", start + dt.timedelta(hours=13 * n), tokens=(100 + n, n))
        _call(theirs, f"b{n}", start + dt.timedelta(hours=11 * n), tokens=(50, 5))
    _call(unpriced, "free", start + dt.timedelta(days=1), priced=False)
    ops.members.remove(mei)
    infra.members.add(mei)
    for n in range(6):
        _call(mine, f"c{n}", dt.datetime(2026, 11, 11, 8, tzinfo=dt.UTC) + dt.timedelta(hours=17 * n), tokens=(70, 7))
    ledger.record_reject(
        record={**_record(mine, "refused", dt.datetime(2026, 11, 12, tzinfo=dt.UTC)), "status_code": 403,
                "outcome": "rejected_paused"}
    )  # fmt: skip
    ops.delete()
    for n in range(3):
        _call(mine, f"d{n}", NOW - dt.timedelta(hours=1 + 3 * n), tokens=(10, 1))
    return research, infra, mine, theirs


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),  # the month
        (dt.datetime(2026, 11, 3, 13, tzinfo=dt.UTC), NOW),  # partial days at both edges
        (dt.datetime(2026, 11, 19, tzinfo=dt.UTC), dt.datetime(2026, 11, 21, tzinfo=dt.UTC)),  # by hour
    ],
    ids=["month", "edges", "hours"],
)
def test_the_group_reports_are_the_records_answer(team, start, end):
    _reports_match_the_records(start, end)


def test_a_moved_member_counts_in_the_groups_of_each_calls_admission_and_a_deleted_group_drops_out(team):
    research, infra, mine, _ = team
    start, end = period_bounds(NOW)
    rows = {u.slug: u for u in usage_by_group(start=start, end=end)}
    assert set(rows) == {"research", "infra"}  # ops was deleted
    assert rows["infra"].calls == 9  # mei's calls after the move (6 + 3), none before it
    assert rows["research"].calls == 8 + 8 + 1 + 6 + 3  # every call of both members but the refusal
    assert rows["research"].unpriced_calls == 1 and rows["infra"].unpriced_calls == 0
    # The deleted group's calls are still in the rollups, under the group ids they were admitted with.
    assert DailyRollup.objects.filter(group_ids__len=2).exclude(group_ids__contains=[infra.pk]).exists()


def test_the_group_half_of_reconcile_reads_rollups_and_finds_only_the_deleted_groups_history(team):
    research, infra, *_ = team
    with CaptureQueriesContext(connection) as queries:
        drifts = group_usage_reconcile(now=NOW)
    # Only the deleted group differs (its counters went with it); the live groups' counters hold.
    assert [d.counter_tokens for d in drifts] == [0] and drifts[0].group_id not in {research.pk, infra.pk}
    assert not any("quota_callrecord" in q["sql"] for q in queries.captured_queries)  # the month is whole days
    GroupUsageCounter.objects.filter(group=research).update(tokens_used=1)
    assert {d.group_id for d in group_usage_reconcile(now=NOW)} == {drifts[0].group_id, research.pk}


def test_the_spend_by_group_of_whole_days_reads_no_call_record(team):
    start, end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with CaptureQueriesContext(connection) as queries:
        spend_by_group_buckets(start=start, end=end, step="day")
        usage_by_group(start=start, end=end)
    assert queries.captured_queries and not any("quota_callrecord" in q["sql"] for q in queries.captured_queries)


def test_the_rollups_carry_each_calls_sorted_groups_and_the_rebuild_keeps_them(team):
    research, infra, mine, _ = team
    assert _no_drift() == {}
    after_move = DailyRollup.objects.get(day=dt.date(2026, 11, 20), allocation=mine, outcome="success")
    assert after_move.group_ids == sorted([research.pk, infra.pk])
    before = _reports_snapshot()
    rollups_rebuild_range()
    assert _no_drift() == {} and _reports_snapshot() == before


def _reports_snapshot():
    start, end = period_bounds(NOW)
    return (
        usage_by_group(start=start, end=end),
        sorted(spend_by_group_buckets(start=start, end=end, step="day")),
        _record_sums(start, end),
    )


# --- every write path, with groups ------------------------------------------------------------------------


@pytest.fixture
def grouped():
    """A member in two groups (one capped), a member in one, a member in none; priced."""
    capped = Group.objects.create(name="Capped", slug="capped", quota_cost_usd_per_month=Decimal("50"))
    loose = Group.objects.create(name="Loose", slug="loose")
    members = [MemberFactory() for _ in range(3)]
    capped.members.add(members[0], members[1])
    loose.members.add(members[0])
    model = CatalogModelFactory()
    price = PriceVersionFactory(
        model=model, effective_from=SINCE, input_per_1m=Decimal("1"), output_per_1m=Decimal("1")
    )
    return [AllocationFactory(member=m, model=model) for m in members], price, (capped, loose)


def _admit(allocation, rid, *, ttl_s=None, context=None):
    return ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=300,
        est_cost=Decimal("0.001"),
        request_id=rid,
        now=timezone.now(),
        ttl_s=ttl_s,
        context=context,
        groups=member_groups(allocation.member),
    )


def test_a_batch_settlement_of_members_in_different_groups_rolls_each_up_under_its_groups(grouped):
    allocations, price, (capped, loose) = grouped
    batch = []
    for n, allocation in enumerate(allocations * 2):
        admission, usage = _admit(allocation, f"r{n}"), Usage(input_tokens=100 * (n + 1))
        values, cost = settle_values(
            record=_record(allocation, f"r{n}", timezone.now()),
            usage=usage,
            price=price,
            now=timezone.now(),
            groups=admission.groups,
        )
        batch.append(Settlement(values, admission, usage.total_tokens, cost or Decimal(0)))
    with connection.cursor() as cursor:
        cursor.execute(*settle_statement(batch))
        assert len(cursor.fetchall()) == 6
    assert _no_drift() == {}
    by_groups = {tuple(r.group_ids): r.calls for r in DailyRollup.objects.all()}
    assert by_groups == {tuple(sorted([capped.pk, loose.pk])): 2, (capped.pk,): 2, (): 2}


def test_the_sweepers_worker_lost_record_is_rolled_up_under_its_groups(grouped):
    allocations, price, (capped, loose) = grouped
    record = {**_record(allocations[0], "lost", timezone.now()), "allocation_id": str(allocations[0].pk),
              "member_id": str(allocations[0].member_id), "model_id": str(allocations[0].model_id)}  # fmt: skip
    for name in ("allocation", "member", "model"):
        del record[name]
    context = ledger.lost_context(record=record, usage=Usage(input_tokens=200), price=price)
    assert _admit(allocations[0], "lost", ttl_s=1, context=context) is not None
    assert ledger.reservations_sweep(now=timezone.now() + dt.timedelta(seconds=5)) == 1
    row = DailyRollup.objects.get()
    assert (row.outcome, row.group_ids) == ("gateway_error", sorted([capped.pk, loose.pk]))
    assert _no_drift() == {} and group_usage_reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_a_spooled_settlement_is_rolled_up_under_its_groups_when_replayed(grouped, empty_spool):  # noqa: F811
    allocations, price, (capped, _) = grouped
    admission = _admit(allocations[1], "spooled")
    saved = _database_down()
    try:
        ledger.call_settle_durable(
            admission=admission,
            record=_record(allocations[1], "spooled", timezone.now()),
            usage=Usage(input_tokens=40),
            price=price,
        )
    finally:
        _database_up(saved)
    assert not DailyRollup.objects.exists()
    assert spool_replay() == 1
    row = DailyRollup.objects.get()
    assert (row.calls, row.input_tokens, row.group_ids) == (1, 40, [capped.pk])
    assert _no_drift() == {} and group_usage_reconcile() == []


def test_the_plain_insert_and_refusals_roll_up_without_groups_and_drift_is_found_by_groups(grouped):
    allocations, price, _ = grouped
    now = timezone.now()
    ledger.settle(
        admission=None, record=_record(allocations[0], "plain", now), usage=Usage(input_tokens=5), price=price
    )
    ledger.record_reject(record={**_record(allocations[0], "no", now, "rejected_paused"), "status_code": 403})
    assert _no_drift() == {} and list(DailyRollup.objects.values_list("group_ids", flat=True)) == [[], []]
    # A record whose groups were changed by hand no longer matches its rollup row.
    CallRecord.objects.filter(request_id="plain").update(group_ids=[uuid.uuid4()])
    drift = _no_drift()  # in each rollup, the row now missing and the row now unmatched
    assert sorted(k[0] for k in drift) == ["day", "day", "hour", "hour"]


# --- a pruned month ----------------------------------------------------------------------------------------


def test_the_group_reports_of_a_pruned_month_are_what_its_records_gave(grouped, monkeypatch):
    allocations, price, (capped, loose) = grouped
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    october = dt.date(2026, 10, 1)
    _month_partition(october)
    start, end = partitions.month_bounds(october)
    for n, allocation in enumerate(allocations * 3):
        _call(allocation, f"o{n}", start + dt.timedelta(days=n, hours=5), tokens=(1000 * (n + 1), 10))
    before = usage_by_group(start=start, end=end)
    spend = sorted(spend_by_group_buckets(start=start, end=end, step="day"))
    assert [u.slug for u in before] == ["capped", "loose"] and before[0].calls == 6
    assert _record_sums(start, end) == _records_group_sums(start, end)
    pruned = retention.prune(before=dt.date(2026, 11, 1))
    assert [p.month for p in pruned if p.rows] == [october]
    assert not CallRecord.objects.filter(started_at__gte=start, started_at__lt=end).exists()
    assert usage_by_group(start=start, end=end) == before
    assert sorted(spend_by_group_buckets(start=start, end=end, step="day")) == spend
