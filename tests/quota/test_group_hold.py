"""The admission of a member with one capped group (one guarded UPDATE of the group's counter, then
the allocation's) and the settlement by the held counter's key: all or none under races, a
statement undone whole is a plain miss on both paths, and members of shared groups calling at
once do not deadlock."""

import asyncio
import importlib
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from allocations.models import Group
from quota import ledger
from quota.exceptions import QuotaBusy
from quota.group_budgets import group_usage_reconcile
from quota.ledger import groups as group_sql
from quota.ledger import loop as aio
from quota.models import CallRecord, GroupUsageCounter, Reservation, UsageCounter
from quota.periods import period_start_date
from quota.pricing import Usage
from quota.services import usage_reconcile
from tests.factories import AllocationFactory, MemberFactory, PriceVersionFactory

from .conftest import record_of_call
from .test_group_budgets import admit, admit_from_threads, member_groups

pytestmark = pytest.mark.django_db


def group_counter(group) -> GroupUsageCounter:
    return GroupUsageCounter.objects.get(group=group, period_start=period_start_date(timezone.now()))


def test_the_function_the_migration_made_is_the_ledgers():
    migration = importlib.import_module("quota.migrations.0019_group_hold_whole")
    assert migration.CREATE == group_sql.HOLD_WHOLE_FUNCTION


@pytest.fixture
def capped():
    """A member in one roomy capped group, its allocation capped at $1 (priced at $1 per 1M)."""
    group = Group.objects.create(name="Lab", slug="lab", quota_cost_usd_per_month=Decimal("100"))
    allocation = AllocationFactory(member=MemberFactory(), quota_cost_usd_per_month=Decimal("1"))
    group.members.add(allocation.member)
    price = PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("1"), output_per_1m=Decimal("1"))
    ledger.release(admission=admit(allocation, cost="0.1", request_id="warm"))  # counters made, id cached
    return group, allocation, price


class _Blocker:
    """Another session's transaction that takes the allocation's whole headroom and holds its row
    until told to commit: an admission that read the row before sees room, then finds none."""

    def __init__(self, allocation) -> None:
        self.counter_id = UsageCounter.objects.get(allocation=allocation).pk
        params = connection.get_connection_params()
        for name in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
            params.pop(name, None)
        self.conn = psycopg.connect(**params)
        # A transaction sees pg_stat_activity as it was at its first look: the watch has its own.
        self.watch = psycopg.connect(**params, autocommit=True)
        self.conn.execute(
            "UPDATE quota_usagecounter SET cost_reserved = cost_reserved + 1 WHERE id = %s", [self.counter_id]
        )

    def waiter_seen(self) -> bool:
        """A statement of this database waits on a row lock (the admission, behind this one)."""
        found = self.watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        return bool(found and found[0])

    def commit(self) -> None:
        if not self.conn.closed:
            self.conn.commit()
            self.conn.close()


@pytest.fixture
def blocker(capped):
    """_Blocker of the `capped` allocation, let go of at the end whatever happened."""
    found = _Blocker(capped[1])
    yield found
    if not found.conn.closed:
        found.conn.rollback()
        found.conn.close()
    found.watch.close()


@pytest.mark.django_db(transaction=True)
def test_a_group_reserved_without_its_allocation_is_undone_whole_on_the_event_loop(capped, blocker, loop_statements):
    group, allocation, _ = capped
    groups = member_groups(allocation.member)

    async def race():
        call = asyncio.ensure_future(
            ledger.admit_async(
                allocation_id=str(allocation.pk),
                token_cap=None,
                cost_cap=Decimal("1"),
                est_tokens=10,
                est_cost=Decimal("0.1"),
                request_id="raced",
                now=timezone.now(),
                groups=groups,
            )
        )
        for _ in range(500):
            await asyncio.sleep(0.01)
            if blocker.waiter_seen():
                break
        else:
            raise AssertionError("the admission never waited for the allocation's row")
        blocker.commit()
        admission = await call
        pool = aio.pool()
        kept = (pool.opened, len(pool.idle), pool.idle[0].closed if pool.idle else None)
        await aio.pool_close()
        return admission, kept

    admission, kept = asyncio.run(race())
    assert admission is None  # a miss: the thread path decides (429 here)
    assert kept == (1, 1, False)  # the connection stays in the pool: not a database failure
    assert len(loop_statements) == 1
    counter = group_counter(group)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)  # the group's hold was undone
    assert not Reservation.objects.filter(request_id="raced").exists()
    with pytest.raises(QuotaBusy):
        admit(allocation, cost="0.1", request_id="thread")
    assert group_counter(group).cost_reserved == 0


@pytest.mark.django_db(transaction=True)
def test_a_group_reserved_without_its_allocation_is_undone_whole_on_a_thread(capped, blocker):
    group, allocation, _ = capped
    outcome: list = []

    def call():
        try:
            outcome.append(admit(allocation, cost="0.1", request_id="raced"))
        except Exception as error:  # noqa: BLE001 - the test looks at it
            outcome.append(error)
        finally:
            connection.close()

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 5
    while not blocker.waiter_seen():
        assert time.monotonic() < deadline, "the admission never waited for the allocation's row"
        time.sleep(0.01)
    blocker.commit()
    worker.join()
    assert len(outcome) == 1 and isinstance(outcome[0], QuotaBusy)  # the headroom is held in flight: 429
    counter = group_counter(group)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    assert Reservation.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_of_an_allocation_at_its_cap_hold_the_same_amounts_on_its_group(capped):
    """30 threads, one allocation capped at $1 in a roomy group: exactly 4 calls of $0.3 admitted,
    each held on the group too; the others held nothing anywhere (some may have been undone whole)."""
    group, allocation, _ = capped
    results = admit_from_threads([allocation])
    assert (results.count("ok"), results.count("busy")) == (4, 26)
    assert group_counter(group).cost_reserved == Decimal("1.2")
    assert UsageCounter.objects.get(allocation=allocation).cost_reserved == Decimal("1.2")
    assert Reservation.objects.count() == 4


def test_a_call_whose_group_was_deleted_meanwhile_still_settles(capped):
    group, allocation, price = capped
    admission = admit(allocation, cost="0.1", request_id="orphan")
    group.delete()  # its counters go with it (cascade)
    record = ledger.settle(
        admission=admission, record=record_of_call(allocation, "orphan"), usage=Usage(input_tokens=1000), price=price
    )
    assert record is not None and not Reservation.objects.exists()
    counter = UsageCounter.objects.get(allocation=allocation)
    assert (counter.calls, counter.cost_used, counter.cost_reserved) == (1, Decimal("0.001"), 0)
    assert not GroupUsageCounter.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_members_of_two_shared_capped_groups_calling_at_once_do_not_deadlock():
    """Three members: one in both capped groups (its admission locks both rows in group order), one
    in each alone (one UPDATE of its group's row); each calls from threads on the thread path and
    from an event loop whose settlements are batched across members, all at once. Every call is
    admitted and settled, nothing stays held, and the counters agree with the records."""
    groups = [Group.objects.create(name=n, slug=n, quota_cost_usd_per_month=Decimal("1000")) for n in ("ga", "gb")]
    members = [MemberFactory() for _ in range(3)]
    groups[0].members.add(members[0], members[1])
    groups[1].members.add(members[0], members[2])
    allocations = [AllocationFactory(member=m) for m in members]
    prices = [
        PriceVersionFactory(model=a.model, input_per_1m=Decimal("1"), output_per_1m=Decimal("1")) for a in allocations
    ]
    for a in allocations:
        ledger.release(admission=admit(a, cost="0.001", request_id=f"warm-{a.pk}"))
    budgets = [member_groups(a.member) for a in allocations]
    errors: list[BaseException] = []
    rounds = 12

    def on_threads(n: int) -> None:
        a, price = allocations[n % 3], prices[n % 3]
        try:
            for i in range(rounds):
                held = admit(a, tokens=100, cost="0.001", request_id=f"th{n}-{i}")
                ledger.settle(
                    admission=held, record=record_of_call(a, f"th{n}-{i}"), usage=Usage(input_tokens=50), price=price
                )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    def admit_closing(a, rid):
        try:
            return admit(a, tokens=100, cost="0.001", request_id=rid)
        finally:
            connection.close()

    async def one_call(n: int, i: int) -> None:
        a, price = allocations[n % 3], prices[n % 3]
        rid = f"lp{n}-{i}"
        held = await ledger.admit_async(
            allocation_id=str(a.pk),
            token_cap=None,
            cost_cap=None,
            est_tokens=100,
            est_cost=Decimal("0.001"),
            request_id=rid,
            now=timezone.now(),
            groups=budgets[n % 3],
        )
        if held is None:  # a miss on the loop: the thread path, as the gateway does
            held = await asyncio.to_thread(admit_closing, a, rid)
        await aio.settle(
            admission=held, record=record_of_call(a, rid), usage=Usage(input_tokens=50), price=price, now=timezone.now()
        )

    def on_a_loop() -> None:
        async def calls():
            try:
                for i in range(rounds):
                    await asyncio.gather(*(one_call(n, i) for n in range(6)))
            finally:
                await aio.pool_close()

        try:
            asyncio.run(calls())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=on_threads, args=(n,)) for n in range(6)]
    workers.append(threading.Thread(target=on_a_loop))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert CallRecord.objects.filter(outcome="success").count() == 12 * rounds
    assert Reservation.objects.count() == 0
    for g in groups:
        counter = group_counter(g)
        assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
        assert counter.calls == 8 * rounds  # two of the three members' calls: 4 of the 12 callers each
    assert group_usage_reconcile() == [] and usage_reconcile() == []


def _admit_on_loop(allocation, *, request_id: str):
    groups = member_groups(allocation.member)

    async def call():
        try:
            return await ledger.admit_async(
                allocation_id=str(allocation.pk),
                token_cap=None,
                cost_cap=allocation.quota_cost_usd_per_month,
                est_tokens=10,
                est_cost=Decimal("0.1"),
                request_id=request_id,
                now=timezone.now(),
                groups=groups,
            )
        finally:
            await aio.pool_close()

    return asyncio.run(call())


@pytest.mark.django_db(transaction=True)
def test_a_cached_counter_id_whose_row_is_gone_is_a_miss_when_the_period_has_another_counter(capped):
    """The one-group admission writes the allocation's counter by an upsert on the cached id: when
    that row is gone and the allocation has another counter of the period, the insert fails on the
    (allocation, period) index and nothing is written (a miss); the thread path admits on the
    period's counter."""
    group, allocation, _ = capped
    stale = UsageCounter.objects.get(allocation=allocation)
    period = stale.period_start
    stale.delete()
    current = UsageCounter.objects.create(allocation=allocation, period_start=period)
    assert _admit_on_loop(allocation, request_id="stale") is None
    assert group_counter(group).cost_reserved == 0
    assert not Reservation.objects.exists()
    assert list(UsageCounter.objects.filter(allocation=allocation).values_list("pk", flat=True)) == [current.pk]
    admission = admit(allocation, cost="0.1", request_id="thread")
    assert admission.counter_id == current.pk
    assert group_counter(group).cost_reserved == Decimal("0.1")


@pytest.mark.django_db(transaction=True)
def test_a_cached_counter_id_whose_row_is_gone_writes_nothing_on_the_event_loop(capped):
    """No counter of the period left: the statement's read of the allocation's row finds none, so
    neither the group nor a new counter is written (a miss); the thread path makes the counter."""
    group, allocation, _ = capped
    UsageCounter.objects.filter(allocation=allocation).delete()
    assert _admit_on_loop(allocation, request_id="gone") is None
    assert not UsageCounter.objects.filter(allocation=allocation).exists()
    assert group_counter(group).cost_reserved == 0
    admission = admit(allocation, cost="0.1", request_id="thread")
    assert UsageCounter.objects.get(allocation=allocation).pk == admission.counter_id
    assert group_counter(group).cost_reserved == Decimal("0.1")


def test_an_admission_error_on_the_counters_period_index_is_a_miss():
    """The one-group admission's upsert of a cached counter id inserts only when that row was deleted
    after the statement's snapshot: the period's other counter then fails it on the (allocation,
    period) index, which the callers take as a miss; any other unique violation stays an error."""

    class Diag:
        def __init__(self, name):
            self.constraint_name = name

    class Violation(Exception):
        sqlstate = "23505"

        def __init__(self, name):
            self.diag = Diag(name)

    assert group_sql.admission_missed(Violation(group_sql.COUNTER_ONCE_PER_PERIOD))
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = Violation(group_sql.COUNTER_ONCE_PER_PERIOD)
    assert group_sql.admission_missed(wrapped)
    assert not group_sql.admission_missed(Violation("quota_reservation_pkey"))
    assert not group_sql.admission_missed(RuntimeError("other"))
