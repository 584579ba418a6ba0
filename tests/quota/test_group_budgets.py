"""Group budgets in the ledger (SPEC 10): the admission reserves on the allocation and on every
capped group of the member in one statement, all or none; settlement, release, the sweeper, the
spool and reconcile_usage move the groups with the allocation."""

import asyncio
import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from allocations.access import GroupBudget
from allocations.models import AuditEvent, Group
from quota import ledger
from quota.exceptions import CostQuotaExceeded, GroupCostQuotaExceeded, GroupQuotaExceeded, QuotaBusy
from quota.group_budgets import group_cap_error, group_spend, group_usage_reconcile
from quota.ledger import loop as aio
from quota.ledger.spool import _from_payload, settle_payload
from quota.models import CallRecord, GroupUsageCounter, Reservation, UsageCounter
from quota.periods import period_start_date
from quota.pricing import Usage
from quota.services import usage_reconcile
from tests.factories import AllocationFactory, MemberFactory, PriceVersionFactory

from .conftest import record_of_call

pytestmark = pytest.mark.django_db

# $1 per 1M input tokens: 1,000 input tokens cost $0.001.
PER_1M = Decimal("1")


def budget(group: Group) -> GroupBudget:
    return GroupBudget(
        id=str(group.pk),
        slug=group.slug,
        name=group.name,
        token_cap=group.quota_tokens_per_month,
        cost_cap=group.quota_cost_usd_per_month,
    )


def member_groups(member) -> tuple[GroupBudget, ...]:
    return tuple(budget(g) for g in Group.objects.filter(members=member).order_by("pk"))


def admit(allocation, *, tokens=10, cost="0.01", request_id="req", ttl_s=None):
    return ledger.admit(
        allocation_id=allocation.pk,
        token_cap=allocation.quota_tokens_per_month,
        cost_cap=allocation.quota_cost_usd_per_month,
        est_tokens=tokens,
        est_cost=None if cost is None else Decimal(cost),
        request_id=request_id,
        now=timezone.now(),
        ttl_s=ttl_s,
        groups=member_groups(allocation.member),
    )


def admit_from_threads(allocations, *, calls=30, cost="0.3") -> list[str]:
    """`calls` threads released together, thread n admitting a call on allocations[n % len]:
    "ok" or "busy" (QuotaBusy) per call."""
    results: list[str] = []
    barrier = threading.Barrier(calls)

    def worker(n):
        barrier.wait()
        try:
            admit(allocations[n % len(allocations)], cost=cost, request_id=f"t{n}")
            results.append("ok")
        except QuotaBusy:
            results.append("busy")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def settle(allocation, admission, usage, price, rid="req"):
    return ledger.settle(admission=admission, record=record_of_call(allocation, rid), usage=usage, price=price)


def group_counter(group) -> GroupUsageCounter:
    return GroupUsageCounter.objects.get(group=group, period_start=period_start_date(timezone.now()))


def alloc_counter(allocation) -> UsageCounter:
    return UsageCounter.objects.filter(allocation=allocation).first() or UsageCounter(allocation=allocation)


@pytest.fixture
def team():
    """Three members in one group capped at $1 and a second, uncapped group of the first."""
    group = Group.objects.create(name="Research", slug="research", quota_cost_usd_per_month=Decimal("1"))
    loose = Group.objects.create(name="Everyone", slug="everyone")
    members = [MemberFactory() for _ in range(3)]
    group.members.add(*members)
    loose.members.add(members[0])
    allocations = [AllocationFactory(member=m) for m in members]
    price = PriceVersionFactory(model=allocations[0].model, input_per_1m=PER_1M, output_per_1m=PER_1M)
    for a in allocations[1:]:
        PriceVersionFactory(model=a.model, input_per_1m=PER_1M, output_per_1m=PER_1M)
    return group, loose, allocations, price


def test_the_admission_holds_on_the_allocation_and_each_capped_group_and_the_settlement_moves_both(team):
    group, loose, allocations, price = team
    admission = admit(allocations[0], tokens=2000, cost="0.25")
    assert set(admission.groups) == {str(group.pk), str(loose.pk)}
    assert admission.held == (group_counter(group).pk,)  # the uncapped group holds nothing
    assert (group_counter(group).tokens_reserved, group_counter(group).cost_reserved) == (2000, Decimal("0.25"))
    assert not GroupUsageCounter.objects.filter(group=loose).exists()
    reservation = Reservation.objects.get(pk=admission.reservation_id)
    assert {str(g) for g in reservation.group_ids} == set(admission.groups)
    assert reservation.group_counter_ids == list(admission.held)

    record = settle(allocations[0], admission, Usage(input_tokens=100_000, output_tokens=50_000), price)
    assert record.cost_usd == Decimal("0.15")
    assert {str(g) for g in CallRecord.objects.get(pk=record.pk).group_ids} == {str(group.pk), str(loose.pk)}
    for g in (group, loose):  # every group of the member counts the call; the capped one releases its hold
        counter = group_counter(g)
        assert (counter.tokens_used, counter.cost_used, counter.calls) == (150_000, Decimal("0.15"), 1)
        assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    assert alloc_counter(allocations[0]).cost_used == Decimal("0.15")
    assert group_usage_reconcile() == [] and usage_reconcile() == []


def test_a_group_at_its_cost_cap_refuses_with_its_name_and_figures_and_holds_nothing_anywhere(team):
    group, _, allocations, price = team
    settle(allocations[1], admit(allocations[1], cost="0.5"), Usage(input_tokens=1_000_000), price)
    with pytest.raises(GroupCostQuotaExceeded, match=r"group 'research'.*\$1 / \$1"):
        admit(allocations[2], cost="0.01")
    assert alloc_counter(allocations[2]).cost_reserved == 0  # not held on the allocation either
    assert group_counter(group).cost_reserved == 0
    assert Reservation.objects.count() == 0


def test_headroom_of_the_group_held_in_flight_is_quota_busy_for_another_members_allocation(team):
    group, _, allocations, _ = team
    admit(allocations[0], cost="0.6")
    admit(allocations[1], cost="0.6")  # 0.6 < 1: admitted (overshoot bounded by one call)
    with pytest.raises(QuotaBusy):
        admit(allocations[2], cost="0.01")
    assert alloc_counter(allocations[2]).cost_reserved == 0
    assert group_counter(group).cost_reserved == Decimal("1.2")


def test_the_allocations_own_cap_comes_before_the_groups_cost_cap():
    group = Group.objects.create(name="G", slug="g", quota_cost_usd_per_month=Decimal("0"))
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("0"))
    group.members.add(allocation.member)
    with pytest.raises(CostQuotaExceeded):
        admit(allocation)


def test_a_group_token_quota_refuses_with_group_quota_exceeded():
    group = Group.objects.create(name="G", slug="g", quota_tokens_per_month=100)
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("0"))
    group.members.add(allocation.member)
    GroupUsageCounter.objects.create(group=group, period_start=period_start_date(timezone.now()), tokens_used=100)
    with pytest.raises(GroupQuotaExceeded, match=r"group 'g'.*100 / 100 tokens"):
        admit(allocation)  # the group's token quota is checked before the allocation's cost cap


def test_an_unpriced_call_is_held_only_by_a_group_cost_cap_of_zero():
    open_group = Group.objects.create(name="Open", slug="open", quota_cost_usd_per_month=Decimal("0.000001"))
    allocation = AllocationFactory()
    open_group.members.add(allocation.member)
    for _ in range(3):
        assert admit(allocation, cost=None).held == ()  # the cap does not hold an unpriced call
    Group.objects.filter(pk=open_group.pk).update(quota_cost_usd_per_month=0)
    with pytest.raises(GroupCostQuotaExceeded):
        admit(allocation, cost=None)


def test_release_and_the_sweeper_give_the_group_its_headroom_back(team):
    group, _, allocations, _ = team
    ledger.release(admission=admit(allocations[0], tokens=5, cost="0.3"))
    assert (group_counter(group).tokens_reserved, group_counter(group).cost_reserved) == (0, 0)
    lost = admit(allocations[1], tokens=5, cost="0.3", ttl_s=1)
    record = {**record_of_call(allocations[1], "lost"), "allocation_id": str(allocations[1].pk)}
    del record["allocation"]
    Reservation.objects.filter(pk=lost.reservation_id).update(
        context=ledger.lost_context(record=record, usage=Usage(input_tokens=7), price=None)
    )
    assert ledger.reservations_sweep(now=timezone.now() + dt.timedelta(seconds=5)) == 1
    counter = group_counter(group)
    assert (counter.tokens_reserved, counter.cost_reserved, counter.tokens_used, counter.calls) == (0, 0, 7, 1)
    record = CallRecord.objects.get(request_id="lost")
    assert record.error_code == "worker_lost" and str(group.pk) in {str(g) for g in record.group_ids}
    assert group_usage_reconcile() == []


def test_a_realtime_style_reservation_grows_on_the_group_too(team):
    group, _, allocations, _ = team
    admission = admit(allocations[0], tokens=0, cost="0")
    grown = ledger.adjust(admission=admission, tokens=300, cost=Decimal("0.4"))
    assert grown.held == admission.held and grown.groups == admission.groups
    assert (group_counter(group).tokens_reserved, group_counter(group).cost_reserved) == (300, Decimal("0.4"))
    assert alloc_counter(allocations[0]).cost_reserved == Decimal("0.4")


def test_a_spooled_settlement_keeps_its_groups_and_replays_into_them(team):
    group, loose, allocations, price = team
    admission = admit(allocations[0], tokens=10, cost="0.2")
    record = {**record_of_call(allocations[0], "spooled"), "allocation_id": allocations[0].pk}
    record.pop("allocation")
    payload = settle_payload(admission=admission, record=record, usage=Usage(input_tokens=1000), price=price)
    restored = _from_payload(payload)
    assert restored["admission"] == admission
    ledger.settle(**restored)
    assert group_counter(group).cost_used == Decimal("0.001") and group_counter(loose).tokens_used == 1000
    assert group_counter(group).cost_reserved == 0


def test_group_cap_error_reads_used_and_reserved_and_adds_an_unheld_sessions_own_usage(team):
    group, _, allocations, _ = team
    member = allocations[0].member
    assert group_cap_error(member_id=member.pk, priced=True) is None
    admit(allocations[1], cost="0.7")
    assert group_cap_error(member_id=member.pk, priced=True) is None
    error = group_cap_error(member_id=member.pk, priced=True, tokens=0, cost=Decimal("0.3"))
    assert isinstance(error, GroupCostQuotaExceeded) and "research" in error.message


def test_reconcile_reports_and_fixes_a_drifted_group_counter_and_audits_it(team):
    group, _, allocations, price = team
    settle(allocations[0], admit(allocations[0]), Usage(input_tokens=10), price)
    GroupUsageCounter.objects.filter(group=group).update(tokens_used=999)
    drifts = group_usage_reconcile()
    assert [(d.group_id, d.counter_tokens, d.record_tokens) for d in drifts] == [(group.pk, 999, 10)]
    group_usage_reconcile(fix=True)
    assert group_usage_reconcile() == []
    event = AuditEvent.objects.get(action="group_usage_reconciled")
    assert (event.target_id, event.before["tokens"], event.after["tokens"]) == (str(group.pk), 999, 10)


def test_group_spend_answers_zero_for_a_group_without_a_counter(team):
    group, loose, allocations, price = team
    settle(allocations[2], admit(allocations[2]), Usage(input_tokens=4000), price)
    spend = group_spend(group_ids=[group.pk, loose.pk])
    assert spend[str(group.pk)].cost_used == Decimal("0.004") and spend[str(loose.pk)].cost_used == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_admissions_of_three_allocations_hold_the_group_cap_exactly(team):
    """30 threads, three allocations of different members sharing one $1 group: admitted while
    used + reserved < cap, so exactly 4 calls of $0.3 (0.9 < 1 admits the fourth)."""
    group, _, allocations, _ = team
    results = admit_from_threads(allocations)
    assert (results.count("ok"), results.count("busy")) == (4, 26)
    assert group_counter(group).cost_reserved == Decimal("1.2")
    assert sum(UsageCounter.objects.values_list("cost_reserved", flat=True)) == Decimal("1.2")
    assert Reservation.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_event_loops_admission_reserves_on_the_group_in_the_same_statement(team, loop_statements):
    group, _, allocations, price = team
    allocation = allocations[0]
    groups = member_groups(allocation.member)
    first = admit(allocation, cost="0.5")  # the thread path creates the counters and caches the id

    async def on_the_loop():
        admission = await ledger.admit_async(
            allocation_id=str(allocation.pk),
            token_cap=None,
            cost_cap=None,
            est_tokens=10,
            est_cost=Decimal("0.5"),
            request_id="loop",
            now=timezone.now(),
            groups=groups,
        )
        refused = await ledger.admit_async(
            allocation_id=str(allocation.pk),
            token_cap=None,
            cost_cap=None,
            est_tokens=10,
            est_cost=Decimal("0.5"),
            request_id="loop-2",
            now=timezone.now(),
            groups=groups,
        )
        await aio.pool_close()
        return admission, refused

    admission, refused = asyncio.run(on_the_loop())
    assert admission is not None and admission.held == first.held
    assert refused is None  # 0.5 + 0.5 held reach the $1 cap: not admitted there (the thread path decides)
    assert len(loop_statements) == 2
    assert group_counter(group).cost_reserved == Decimal("1")
    assert Reservation.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_one_settlement_statement_of_a_batch_moves_each_group_row_once_and_releases_every_hold(team, loop_statements):
    """Calls of three members of a capped group (one also in an uncapped group) and of a member in
    no group, settled together on the event loop: one statement; each group's counter gets the
    usage of the calls counted toward it and loses every hold it had."""
    from quota.models import PriceVersion

    group, loose, allocations, _ = team
    loner = AllocationFactory()
    PriceVersionFactory(model=loner.model, input_per_1m=PER_1M, output_per_1m=PER_1M)
    calls = [*allocations, loner]
    admissions = [admit(a, tokens=1000, cost="0.1", request_id=f"b{i}") for i, a in enumerate(calls)]
    assert group_counter(group).cost_reserved == Decimal("0.3")
    prices = [PriceVersion.objects.get(model=a.model) for a in calls]

    async def settle_all():
        now = timezone.now()
        ids = await asyncio.gather(
            *(
                aio.settle(
                    admission=admission,
                    record=record_of_call(a, f"b{i}"),
                    usage=Usage(input_tokens=1000),
                    price=price,
                    now=now,
                )
                for i, (a, admission, price) in enumerate(zip(calls, admissions, prices, strict=True))
            )
        )
        await aio.pool_close()
        return ids

    ids = asyncio.run(settle_all())
    assert all(ids) and len(loop_statements) == 1
    counter = group_counter(group)
    assert (counter.tokens_used, counter.cost_used, counter.calls) == (3000, Decimal("0.003"), 3)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    counter = group_counter(loose)
    assert (counter.tokens_used, counter.cost_used, counter.calls, counter.tokens_reserved) == (
        1000,
        Decimal("0.001"),
        1,
        0,
    )
    assert all(alloc_counter(a).cost_reserved == 0 for a in calls)
    assert Reservation.objects.count() == 0
    assert group_usage_reconcile() == [] and usage_reconcile() == []
