"""The event loop's accounting connections (quota.ledger.loop.Pool) and its group commit of settlements."""

import asyncio
import dataclasses
import time
from decimal import Decimal

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from lib.cache import auth_generation
from quota import ledger
from quota.ledger import loop as aio
from quota.ledger import threads
from quota.ledger.statements import reservation_row
from quota.models import CallRecord, Reservation, UsageCounter
from quota.periods import period_start_date
from quota.pricing import Usage
from tests.factories import AllocationFactory, PriceVersionFactory

from .conftest import admit, settlement

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_pool_opens_at_most_its_size_and_reuses_connections():
    pool = aio.Pool(2)
    peak = 0

    async def use():
        nonlocal peak
        async with pool.connection() as conn:
            peak = max(peak, pool.opened)
            await conn.execute("SELECT pg_sleep(0.01)")

    await asyncio.gather(*(use() for _ in range(10)))
    assert (peak, pool.opened, len(pool.idle)) == (2, 2, 2)
    await pool.close()
    assert (pool.opened, pool.idle) == (0, [])


async def test_a_connection_that_failed_is_dropped_and_replaced():
    pool = aio.Pool(1)
    with pytest.raises(psycopg.OperationalError):
        async with pool.connection() as conn:
            await conn.close()  # as if the server went away mid-statement
            await conn.execute("SELECT 1")
    assert (pool.opened, pool.idle) == (0, [])
    async with pool.connection() as conn:  # the slot is free again: a new connection
        assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
    await pool.close()


async def test_a_block_that_raises_closes_its_connection_rather_than_giving_it_back():
    pool = aio.Pool(1)
    with pytest.raises(LookupError):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            raise LookupError  # the connection itself is fine, but its state after a failure is unknown
    assert conn.closed and (pool.opened, pool.idle) == (0, [])
    async with pool.connection() as again:
        assert again is not conn
    assert pool.idle == [again]
    await pool.close()


async def test_closing_waits_for_a_connection_in_use_then_closes_it():
    pool = aio.Pool(1)
    entered = asyncio.Event()

    async def settling():
        async with pool.connection() as conn:
            entered.set()
            await conn.execute("SELECT pg_sleep(0.05)")
        return conn

    task = asyncio.ensure_future(settling())
    await entered.wait()
    await pool.close()
    assert task.done() and task.result().closed
    assert (pool.opened, pool.idle) == (0, [])


async def test_a_caller_cancelled_while_waiting_does_not_lose_the_next_turn():
    pool = aio.Pool(1)
    release = asyncio.Event()

    async def holder():
        async with pool.connection():
            await release.wait()

    async def user():
        async with pool.connection() as conn:
            return (await (await conn.execute("SELECT 2")).fetchone())[0]

    held = asyncio.ensure_future(holder())
    await asyncio.sleep(0.05)  # the one connection is taken
    leaving, staying = asyncio.ensure_future(user()), asyncio.ensure_future(user())
    await asyncio.sleep(0.01)
    leaving.cancel()
    release.set()
    assert await asyncio.wait_for(staying, 5) == 2
    await held
    assert leaving.cancelled() and (pool.opened, len(pool.idle)) == (1, 1)
    await pool.close()


def _admitted(calls: int):
    allocation = AllocationFactory()
    price = PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("1"), output_per_1m=Decimal("1"))
    return allocation, price, [admit(allocation, tokens=50, cost="0.5") for _ in range(calls)]


async def test_settlements_that_meet_are_written_in_one_statement_each_with_its_own_record(loop_statements):
    allocation, price, admissions = await sync_to_async(_admitted)(4)
    pool = aio.Pool(1)
    usages = [Usage(input_tokens=10 * (i + 1)) for i in range(4)]
    made = await sync_to_async(
        lambda: [
            settlement(allocation, a, f"g-{i}", u, price)
            for i, (a, u) in enumerate(zip(admissions, usages, strict=True))
        ]
    )()
    ids = await asyncio.gather(*(pool.settlements.add(s) for s in made))  # added in one step: one writer takes all
    assert len(loop_statements) == 1
    rows = await sync_to_async(lambda: {r.pk: (r.request_id, r.input_tokens) for r in CallRecord.objects.all()})()
    assert [rows[pk] for pk in ids] == [("g-0", 10), ("g-1", 20), ("g-2", 30), ("g-3", 40)]
    counter = await UsageCounter.objects.aget(pk=admissions[0].counter_id)
    assert (counter.calls, counter.tokens_used, counter.tokens_reserved, counter.cost_reserved) == (4, 100, 0, 0)
    await pool.close()


async def test_settlements_that_meet_a_writer_not_yet_run_start_no_writer_of_their_own(loop_statements):
    """With connections to spare, the settlements added before the first writer runs are all its
    batch: no other writer is started for them (it would find nothing left to write)."""
    allocation, price, admissions = await sync_to_async(_admitted)(3)
    pool = aio.Pool(4)
    made = [
        await sync_to_async(settlement)(allocation, a, f"s-{i}", Usage(input_tokens=1), price)
        for i, a in enumerate(admissions)
    ]
    futures = [pool.settlements.add(s) for s in made]
    assert len(pool.settlements.writers) == 1 and pool.settlements.at_work == 1
    assert len(set(await asyncio.gather(*futures))) == 3
    assert len(loop_statements) == 1
    late = await sync_to_async(_admitted)(1)  # the writer gone: the next settlement starts one
    one = await sync_to_async(settlement)(late[0], late[2][0], "late", Usage(input_tokens=1), late[1])
    assert await asyncio.wait_for(pool.settlements.add(one), 5)
    assert (pool.settlements.at_work, pool.settlements.starting) == (0, 0)
    assert await CallRecord.objects.acount() == 4


async def test_settlement_batches_of_every_size_are_one_prepared_statement_planned_once():
    """The number of calls of a batch is a parameter of its statement, not part of its text: a
    connection prepares the settlement batch once for every size, and after its first executions
    runs the generic plan, while each batch still settles exactly its own calls."""
    sizes = (2, 3, 5, 2, 4, 3, 6, 2)
    allocation, price, admissions = await sync_to_async(_admitted)(sum(sizes))
    pool = aio.Pool(1)
    made = await sync_to_async(
        lambda: [
            settlement(allocation, a, f"s-{i}", Usage(input_tokens=i + 1), price) for i, a in enumerate(admissions)
        ]
    )()
    for size in sizes:
        batch, made = made[:size], made[size:]
        ids = await asyncio.gather(*(pool.settlements.add(s) for s in batch))
        assert len(set(ids)) == size and None not in ids
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH s AS %'"
        )
        assert await cursor.fetchall() == [(len(sizes) - 5, 5)]
    assert await CallRecord.objects.filter(allocation=allocation).acount() == sum(sizes)
    counter = await UsageCounter.objects.aget(pk=admissions[0].counter_id)
    assert (counter.calls, counter.tokens_used, counter.tokens_reserved) == (sum(sizes), sum(range(1, 28)), 0)
    await pool.close()


async def test_a_failing_statement_fails_every_settlement_in_it_and_writes_none():
    allocation, price, admissions = await sync_to_async(_admitted)(2)
    pool = aio.Pool(1)
    good = await sync_to_async(settlement)(allocation, admissions[0], "ok", Usage(input_tokens=1), price)
    bad = await sync_to_async(settlement)(allocation, admissions[1], "bad", Usage(input_tokens=1), price)
    bad.values["request_id"] = "x" * 65  # longer than its column: fails the whole statement
    results = await asyncio.gather(pool.settlements.add(good), pool.settlements.add(bad), return_exceptions=True)
    assert all(isinstance(r, psycopg.errors.StringDataRightTruncation) for r in results)
    assert not await CallRecord.objects.aexists()
    assert await Reservation.objects.acount() == 2  # still held: the callers settle on the thread path
    await pool.close()


async def test_a_settlement_added_as_the_last_writer_stops_still_gets_written():
    """The writer count drops in the step that finds nothing waiting: a settlement added by the
    caller its last result wakes (a step before a done-callback would run) starts a new writer."""
    allocation, price, admissions = await sync_to_async(_admitted)(2)
    pool = aio.Pool(1)
    first, second = [
        await sync_to_async(settlement)(allocation, a, f"w-{i}", Usage(input_tokens=1), price)
        for i, a in enumerate(admissions)
    ]
    await pool.settlements.add(first)
    await asyncio.wait_for(pool.settlements.add(second), 5)
    assert await CallRecord.objects.acount() == 2
    await pool.close()


async def test_a_settlement_alone_is_written_in_its_callers_step_and_hands_those_that_met_it_to_a_writer():
    """With no writer at work and every connection idle (one call at a time), a settlement's
    statement is written by its caller before the caller first yields, with no writer task; one
    that arrives while it is at work waits as usual and is written once it ends."""
    allocation, price, admissions = await sync_to_async(_admitted)(2)
    pool = aio.Pool(1)
    async with pool.connection():
        pass  # one connection open and idle
    first, second = [
        await sync_to_async(settlement)(allocation, a, f"a-{i}", Usage(input_tokens=1), price)
        for i, a in enumerate(admissions)
    ]
    assert pool.settlements.alone()
    alone = asyncio.ensure_future(pool.settlements.write_alone(first))
    await asyncio.sleep(0)  # its first step: the statement is out, the one connection taken
    assert not pool.settlements.alone() and not pool.idle
    met = pool.settlements.add(second)  # every writer's place taken: it waits
    assert not pool.settlements.writers
    ids = [await asyncio.wait_for(alone, 5), await asyncio.wait_for(met, 5)]
    rows = await sync_to_async(lambda: dict(CallRecord.objects.values_list("pk", "request_id")))()
    assert [rows[pk] for pk in ids] == ["a-0", "a-1"]
    assert pool.settlements.at_work == 0 and pool.settlements.alone()
    await pool.close()


async def test_a_settlement_alone_that_fails_raises_to_its_caller_and_writes_nothing():
    allocation, price, admissions = await sync_to_async(_admitted)(1)
    pool = aio.Pool(1)
    async with pool.connection():
        pass
    bad = await sync_to_async(settlement)(allocation, admissions[0], "bad", Usage(input_tokens=1), price)
    bad.values["request_id"] = "x" * 65  # longer than its column: fails the statement
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        await pool.settlements.write_alone(bad)
    assert pool.settlements.at_work == 0
    assert not await CallRecord.objects.aexists()
    assert await Reservation.objects.acount() == 1  # still held: its caller settles on the thread path
    await pool.close()


async def test_a_connection_watches_its_socket_with_one_reader_for_all_its_statements(monkeypatch):
    loop = asyncio.get_running_loop()
    added: list[int] = []
    add_reader = loop.add_reader
    monkeypatch.setattr(loop, "add_reader", lambda fd, *args: added.append(fd) or add_reader(fd, *args))
    pool = aio.Pool(1)
    try:
        for n in range(6):
            async with pool.connection() as conn, conn.cursor() as cursor:
                await cursor.execute("SELECT %s::int, pg_sleep(0.005)", (n,))
                assert (await cursor.fetchone())[0] == n
                if n == 0:
                    added.clear()  # connecting watches the socket its own way
        assert added == []  # psycopg's own wait adds (and removes) a reader per statement
        assert pool.opened == 1
    finally:
        await pool.close()


async def test_a_connection_the_server_ends_while_idle_is_unwatched_and_replaced():
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            pid = conn.info.backend_pid
        params = aio.Pool._conninfo()

        def terminate() -> None:
            with psycopg.connect(**params, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        await asyncio.to_thread(terminate)
        for _ in range(50):  # the reader sees the end while nobody waits, and lets the socket go
            if conn._fd is None:
                break
            await asyncio.sleep(0.02)
        assert conn._fd is None
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as same:
                assert same is conn
                await same.execute("SELECT 1")
        assert conn._broken and conn.closed
        async with pool.connection() as fresh:  # the failed one was dropped: a new one serves
            assert fresh is not conn
            assert await (await fresh.execute("SELECT 2")).fetchone() == (2,)
    finally:
        await pool.close()


def test_a_ledger_statement_gets_postgresqls_own_placeholders_once():
    converted = aio.native("UPDATE t SET a = %s WHERE id = %s AND b IN (%s)")
    assert converted == "UPDATE t SET a = $1 WHERE id = $2 AND b IN ($3)"
    assert aio.native("SELECT 1") == "SELECT 1"
    with pytest.raises(ValueError, match="not a placeholder"):
        aio.native("SELECT '100%' WHERE a = %s")


async def _prepared(conn) -> list[str]:
    rows = await (await conn.execute("SELECT name FROM pg_prepared_statements ORDER BY name")).fetchall()
    return [r[0] for r in rows]


async def test_a_statement_is_prepared_once_per_parameter_types_under_a_name_of_the_connection():
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            query = aio.native("SELECT %s::bigint + 1, %s::text")
            assert conn.rows(await conn.run_statement(query, (1, "a"), prepare=True)) == [(2, "a")]
            assert conn.rows(await conn.run_statement(query, (41, None), prepare=True)) == [(42, None)]
            assert await _prepared(conn) == ["_gw_0"]  # the same text and parameter types: prepared once
            result = await conn.run_statement(query, (2**40, "b"), prepare=True)  # an int8: other types
            assert conn.rows(result) == [(2**40 + 1, "b")] and await _prepared(conn) == ["_gw_0", "_gw_1"]
            assert len(conn._statements) == 1  # one text kept
            result = await conn.run_statement(aio.native("SELECT %s::numeric * 2"), (Decimal("1.25"),), prepare=True)
            assert conn.rows(result) == [(Decimal("2.50"),)]
            result = await conn.run_statement(
                "UPDATE quota_usagecounter SET calls = calls WHERE false", (), prepare=True
            )
            assert result.command_tuples == 0 and conn.rows(result) == []
    finally:
        await pool.close()


async def test_a_statement_sent_unprepared_leaves_nothing_prepared():
    """Behind PgBouncer in transaction mode (GATEWAY_PGBOUNCER) no statement is prepared."""
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            query = aio.native("SELECT %s::int * 3")
            for n in range(3):
                assert conn.rows(await conn.run_statement(query, (n,), prepare=False)) == [(3 * n,)]
            assert await _prepared(conn) == []
    finally:
        await pool.close()


async def test_a_statements_own_error_is_psycopgs_and_leaves_its_connection_usable():
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                await conn.run_statement(aio.native("SELECT 1 / %s::int"), (0,), prepare=True)
            with pytest.raises(psycopg.errors.UndefinedTable):  # its PREPARE fails: nothing named
                await conn.run_statement("SELECT * FROM no_such_table", (), prepare=True)
            assert await _prepared(conn) == ["_gw_0"]
            assert not conn._broken and conn._fd is not None
            assert conn.rows(await conn.run_statement(aio.native("SELECT 1 / %s::int"), (1,), prepare=True)) == [(1,)]
        assert pool.idle == [conn]  # given back: the errors were the statements', not the connection's
    finally:
        await pool.close()


async def test_past_its_limit_a_connection_sends_new_statements_unprepared(monkeypatch):
    monkeypatch.setattr(aio.LoopConnection, "PREPARED_MAX", 2)
    monkeypatch.setattr(aio.LoopConnection, "STATEMENTS_MAX", 2)
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            for n in range(4):
                result = await conn.run_statement(aio.native(f"SELECT {n} + %s::int"), (1,), prepare=True)
                assert conn.rows(result) == [(n + 1,)]
            assert await _prepared(conn) == ["_gw_0", "_gw_1"] and len(conn._statements) <= 2
            result = await conn.run_statement(aio.native("SELECT 0 + %s::int"), (5,), prepare=True)
            assert conn.rows(result) == [(5,)]  # the first text again: still its prepared name
    finally:
        await pool.close()


async def test_a_statement_larger_than_the_sockets_buffer_is_sent_whole():
    pool = aio.Pool(1)
    try:
        async with pool.connection() as conn:
            big = "x" * (8 * 1024 * 1024)
            result = await conn.run_statement(aio.native("SELECT length(%s::text)"), (big,), prepare=True)
            assert conn.rows(result) == [(len(big),)]
            assert conn.rows(await conn.run_statement(aio.native("SELECT %s::int"), (7,), prepare=True)) == [(7,)]
    finally:
        await pool.close()


def _terminate_when_waiting(dsn_params: dict, pid: int) -> None:
    """Ends backend `pid` once it waits for a lock (its statement is in the database)."""
    with psycopg.connect(**dsn_params, autocommit=True) as admin:
        for _ in range(500):
            row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row and row[0] == "Lock":
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the statement never waited for the lock")
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_connection_lost_mid_statement_fails_it_and_is_dropped_unwatched():
    allocation, _, admissions = await sync_to_async(_admitted)(1)
    params = aio.Pool._conninfo()
    pool = aio.Pool(1)
    holder = await psycopg.AsyncConnection.connect(**params)
    try:
        await holder.execute("SELECT 1 FROM quota_usagecounter WHERE id = %s FOR UPDATE", (admissions[0].counter_id,))
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        update = aio.native("UPDATE quota_usagecounter SET calls = calls + 1 WHERE id = %s")
        ending = asyncio.ensure_future(asyncio.to_thread(_terminate_when_waiting, params, pid))
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.run_statement(update, (admissions[0].counter_id,), prepare=True)
        await ending
        assert conn._broken and conn._fd is None and conn.closed
        assert (pool.opened, pool.idle) == (0, [])
        await holder.rollback()
        async with pool.connection() as fresh:
            assert fresh is not conn
            assert fresh.rows(await fresh.run_statement(aio.native("SELECT %s::int"), (3,), prepare=True)) == [(3,)]
    finally:
        await holder.close()
        await pool.close()


async def test_a_connection_lost_mid_batch_fails_every_settlement_in_it_and_the_thread_path_records_each_once():
    """The settlements of a batch whose connection ends while the statement waits in the database
    all fail (none written: one statement); ledger.settle_async then settles each on the thread
    path, which looks for its record first: every call recorded once, its reservation gone."""
    allocation, price, admissions = await sync_to_async(_admitted)(3)
    params = aio.Pool._conninfo()
    holder = await psycopg.AsyncConnection.connect(**params)
    statements: list[int] = []
    settle_statement = aio.settle_statement

    def counted(settlements):
        statements.append(len(settlements))
        return settle_statement(settlements)

    aio.settle_statement = counted
    try:
        await holder.execute("SELECT 1 FROM quota_usagecounter WHERE id = %s FOR UPDATE", (admissions[0].counter_id,))
        found = aio.pool()
        async with found.connection() as conn:  # the loop's connection, opened first: the batch takes it
            pid = conn.info.backend_pid
        ending = asyncio.ensure_future(asyncio.to_thread(_terminate_when_waiting, params, pid))

        async def settled(n: int) -> None:
            record = {
                "request_id": f"lost-{n}",
                "allocation_id": allocation.pk,
                "member_id": allocation.member_id,
                "model_id": allocation.model_id,
                "endpoint": "chat.completions",
                "started_at": timezone.now(),
                "outcome": "success",
                "status_code": 200,
            }
            await ledger.settle_async(admission=admissions[n], record=record, usage=Usage(input_tokens=10), price=price)

        tasks = [asyncio.ensure_future(settled(n)) for n in range(3)]
        await ending
        await holder.rollback()  # the row free again: the thread path writes
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert statements == [3]  # one batch on the loop, lost with its connection
        assert conn.closed and conn not in found.idle
        records = await sync_to_async(lambda: sorted(CallRecord.objects.values_list("request_id", flat=True)))()
        assert records == ["lost-0", "lost-1", "lost-2"]
        counter = await UsageCounter.objects.aget(pk=admissions[0].counter_id)
        assert (counter.calls, counter.tokens_used, counter.tokens_reserved) == (3, 30, 0)
        assert not await Reservation.objects.aexists()
    finally:
        aio.settle_statement = settle_statement
        await holder.close()
        await aio.pool_close()
        await asyncio.to_thread(threads.pool_close_connections)  # before the test database is dropped


# --- admissions that meet: one statement ----------------------------------------------------------


def _counter(token_cap: int | None = None, cost_cap: str | None = None, tokens_used: int = 0):
    allocation = AllocationFactory(
        quota_tokens_per_month=token_cap, quota_cost_usd_per_month=None if cost_cap is None else Decimal(cost_cap)
    )
    now = timezone.now()
    counter = UsageCounter.objects.create(
        allocation=allocation, period_start=period_start_date(now), tokens_used=tokens_used
    )
    caps = aio._Caps(
        str(allocation.pk), counter.pk, allocation.quota_tokens_per_month, allocation.quota_cost_usd_per_month, True
    )
    return caps


def _reservation(n: int, tokens: int, cost: str = "0.5") -> dict:
    return reservation_row(request_id=f"a-{n}", tokens=tokens, cost=Decimal(cost), now=timezone.now(), context={"n": n})


async def _admitted_while_busy(caps, reservations, return_exceptions: bool = False) -> list:
    """Admissions added while the pool's one connection is taken, then let through together."""
    pool = aio.Pool(1)
    release, taken = asyncio.Event(), asyncio.Event()

    async def holder():
        async with pool.connection():
            taken.set()
            await release.wait()

    held = asyncio.ensure_future(holder())
    await taken.wait()
    waiting = [pool.admissions.add(caps, r) for r in reservations]
    release.set()
    try:
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=return_exceptions), 5)
    finally:
        await held
        await pool.close()


async def test_admissions_that_meet_are_made_in_one_statement_each_with_its_reservation(loop_statements):
    caps = await sync_to_async(_counter)(token_cap=1000, cost_cap="100")
    reservations = [_reservation(n, tokens=10 * (n + 1)) for n in range(4)]
    admitted = await _admitted_while_busy(caps, reservations)
    assert len(loop_statements) == 1
    assert [a.reservation_id for a in admitted] == [r["id"] for r in reservations]
    assert [a.tokens for a in admitted] == [10, 20, 30, 40]
    counter = await UsageCounter.objects.aget(pk=caps.counter_id)
    assert (counter.tokens_reserved, counter.cost_reserved) == (100, Decimal("2"))
    rows = {r.pk: r async for r in Reservation.objects.all()}
    assert {rows[r["id"]].request_id for r in reservations} == {"a-0", "a-1", "a-2", "a-3"}
    assert [rows[r["id"]].context for r in reservations] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert all(
        rows[r["id"]].counter_id == caps.counter_id and rows[r["id"]].tokens == r["tokens"] for r in reservations
    )


async def test_admissions_that_meet_near_a_cap_are_decided_one_by_one_as_they_would_have_been(loop_statements):
    """A cap admits while used < cap - reserved: with 90 used of 100, the first call is admitted
    (reserving 5), the second too (95 < 100), the third not (90 < 100 - 10 fails). Together they
    would pass the first call's guard only: the batch's guard (the last call's) does not match,
    writes nothing, and each then takes its own statement."""
    caps = await sync_to_async(_counter)(token_cap=100, tokens_used=90)
    admitted = await _admitted_while_busy(caps, [_reservation(n, tokens=5) for n in range(3)])
    assert [a is not None for a in admitted] == [True, True, False]
    assert len(loop_statements) == 4  # the batch's, then one per call
    counter = await UsageCounter.objects.aget(pk=caps.counter_id)
    assert counter.tokens_reserved == 10
    assert await Reservation.objects.acount() == 2


async def test_admissions_that_meet_are_made_only_under_the_current_auth_generation(loop_statements):
    """The batch carries the generation its calls' caches were read under, as one call's
    statement does: current, all admitted in one statement; moved, none (and none alone either)."""
    base = await sync_to_async(_counter)(token_cap=1000)
    current = await sync_to_async(auth_generation)()
    caps = dataclasses.replace(base, generation=current)
    admitted = await _admitted_while_busy(caps, [_reservation(n, tokens=5) for n in range(3)])
    assert all(a is not None for a in admitted) and len(loop_statements) == 1
    assert "gw_auth_generation" in loop_statements[0]
    loop_statements.clear()
    stale = dataclasses.replace(base, generation=current - 1)
    admitted = await _admitted_while_busy(stale, [_reservation(n, tokens=5) for n in range(3, 6)])
    assert admitted == [None, None, None]
    assert len(loop_statements) == 4  # the batch's, then one per call: every one a miss
    assert (await UsageCounter.objects.aget(pk=base.counter_id)).tokens_reserved == 15


async def test_an_admission_alone_takes_the_statement_of_one_call(loop_statements):
    caps = await sync_to_async(_counter)(token_cap=100)
    [admitted] = await _admitted_while_busy(caps, [_reservation(0, tokens=5)])
    assert admitted is not None and len(loop_statements) == 1
    assert "jsonb_to_recordset" not in loop_statements[0]


async def test_a_failing_admission_statement_fails_every_admission_in_it():
    caps = await sync_to_async(_counter)(token_cap=100)
    reservations = [_reservation(n, tokens=5) for n in range(3)]
    reservations[2]["request_id"] = "x" * 200  # longer than the column: the whole statement fails
    results = await _admitted_while_busy(caps, reservations, return_exceptions=True)
    assert all(isinstance(r, psycopg.errors.StringDataRightTruncation) for r in results)
    assert not await Reservation.objects.aexists()
    assert (await UsageCounter.objects.aget(pk=caps.counter_id)).tokens_reserved == 0


async def test_an_admission_joins_the_others_only_while_every_connection_is_busy(loop_statements):
    """Through ledger.loop.admit: with a connection free, its own statement at once."""
    caps = await sync_to_async(_counter)(token_cap=100)
    admitted = await aio.admit(
        allocation_id=caps.allocation_id,
        counter_id=caps.counter_id,
        token_cap=100,
        cost_cap=None,
        est_tokens=5,
        est_cost=Decimal("0.5"),
        request_id="alone",
        now=timezone.now(),
    )
    assert admitted is not None and "jsonb_to_recordset" not in loop_statements[-1]
    await aio.pool_close()


# --- one admission statement of a counter in the database at a time -------------------------------


def _admit(caps, n: int, tokens: int = 5, request_id: str | None = None):
    return aio.admit(
        allocation_id=caps.allocation_id,
        counter_id=caps.counter_id,
        token_cap=caps.token_cap,
        cost_cap=caps.cost_cap,
        est_tokens=tokens,
        est_cost=Decimal("0.5"),
        request_id=request_id or f"c-{n}",
        now=timezone.now(),
    )


class _RowHeld:
    """A counter row locked by another transaction: an admission statement of that counter sent
    meanwhile waits in PostgreSQL until `release`."""

    def __init__(self, counter_id: int) -> None:
        self.counter_id = counter_id

    async def __aenter__(self):
        self.conn = await psycopg.AsyncConnection.connect(**aio.Pool._conninfo())
        table = UsageCounter._meta.db_table
        await self.conn.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [self.counter_id])  # noqa: S608
        return self

    async def release(self) -> None:
        if not self.conn.closed:
            await self.conn.commit()
            await self.conn.close()

    async def __aexit__(self, *exc) -> None:
        await self.release()


async def _until(condition, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_an_admission_waits_while_its_counters_statement_is_in_the_database_even_with_a_connection_idle(
    loop_statements,
):
    """The second admission is not sent while the first waits for the row: it would only queue
    behind it. When the first is answered, the two waiting behind it go in one statement."""
    caps = await sync_to_async(_counter)(token_cap=1000)
    pool = aio.pool()
    async with _RowHeld(caps.counter_id) as held:
        loop_statements.clear()  # the row's lock taken
        first = asyncio.ensure_future(_admit(caps, 0))
        await _until(lambda: len(loop_statements) == 1)
        later = [asyncio.ensure_future(_admit(caps, n)) for n in (1, 2)]
        await asyncio.sleep(0.05)
        assert len(loop_statements) == 1 and not any(t.done() for t in later)
        assert pool.opened < pool.size or pool.idle  # a connection was free all along
        await held.release()
        admitted = await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert all(a is not None for a in admitted)
    assert len(loop_statements) == 2 and "jsonb_to_recordset" in loop_statements[1]
    assert (await UsageCounter.objects.aget(pk=caps.counter_id)).tokens_reserved == 15
    assert not pool.admissions.sent and not pool.admissions.waiting
    await aio.pool_close()


async def test_admissions_of_another_counter_do_not_wait_for_a_counters_statement(loop_statements):
    caps, other = await sync_to_async(_counter)(token_cap=1000), await sync_to_async(_counter)(token_cap=1000)
    async with _RowHeld(caps.counter_id) as held:
        loop_statements.clear()  # the row's lock taken
        blocked = asyncio.ensure_future(_admit(caps, 0))
        await _until(lambda: len(loop_statements) == 1)
        assert await asyncio.wait_for(_admit(other, 1), 5) is not None
        assert not blocked.done()
        await held.release()
        assert await asyncio.wait_for(blocked, 5) is not None
    await aio.pool_close()


async def _behind_a_statement(caps, behind: list[dict], *, tokens: int = 5, leaving: int | None = None) -> list:
    """The results (errors as values) of a first admission of `caps`, held in PostgreSQL by its
    row's lock, then of those added meanwhile (`behind`: `_admit`'s arguments); the one at
    position `leaving` of `behind` cancelled before the lock is let go (its result: the task)."""
    async with _RowHeld(caps.counter_id) as held:
        first = asyncio.ensure_future(_admit(caps, 0, tokens=tokens))
        await _until(lambda: caps.counter_id in aio.pool().admissions.sent)
        later = [asyncio.ensure_future(_admit(caps, tokens=tokens, **kwargs)) for kwargs in behind]
        await asyncio.sleep(0.02)
        if leaving is not None:
            later[leaving].cancel()
        await held.release()
        waited = [t for n, t in enumerate(later) if n != leaving]
        results = await asyncio.wait_for(asyncio.gather(first, *waited, return_exceptions=True), 10)
    if leaving is not None:
        results.insert(leaving + 1, later[leaving])
    return results


async def test_admissions_of_a_wave_reaching_a_cap_admit_exactly_as_many_as_one_by_one():
    """A cap admits while reserved < cap - used: of 30 calls of 7 tokens under a cap of 100, one by
    one admits 15 (reserving 0, 7, …, 98 before each) and refuses the rest, whatever batches the
    wave falls into."""
    caps = await sync_to_async(_counter)(token_cap=100)
    admitted = await _behind_a_statement(caps, [{"n": n} for n in range(1, 30)], tokens=7)
    assert sum(a is not None for a in admitted) == 15
    assert admitted[:15] == [a for a in admitted if a is not None]  # in arrival order, as one by one
    assert (await UsageCounter.objects.aget(pk=caps.counter_id)).tokens_reserved == 105
    assert await Reservation.objects.acount() == 15
    await aio.pool_close()


async def test_an_admission_cancelled_while_it_waits_for_its_counter_is_left_out_of_the_statement():
    caps = await sync_to_async(_counter)(token_cap=1000)
    first, leaving, staying = await _behind_a_statement(caps, [{"n": 1}, {"n": 2}], leaving=0)
    assert first is not None and staying is not None and leaving.cancelled()
    assert {r.request_id async for r in Reservation.objects.all()} == {"c-0", "c-2"}
    assert (await UsageCounter.objects.aget(pk=caps.counter_id)).tokens_reserved == 10
    await aio.pool_close()


async def test_a_failing_statement_behind_a_counters_statement_fails_its_admissions_and_frees_the_counter():
    caps = await sync_to_async(_counter)(token_cap=1000)
    results = await _behind_a_statement(caps, [{"n": 1}, {"n": 2, "request_id": "x" * 200}])
    assert results[0] is not None
    assert all(isinstance(r, psycopg.errors.StringDataRightTruncation) for r in results[1:])
    assert not aio.pool().admissions.sent
    with pytest.raises(psycopg.errors.StringDataRightTruncation):  # one alone that fails frees it too
        await _admit(caps, 3, request_id="x" * 200)
    assert await asyncio.wait_for(_admit(caps, 4), 5) is not None
    assert {r.request_id async for r in Reservation.objects.all()} == {"c-0", "c-4"}
    await aio.pool_close()
