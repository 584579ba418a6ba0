"""The event loop's accounting connections (quota.aio.Pool)."""

import asyncio

import psycopg
import pytest

from quota import aio

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
