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
