"""The auth generation (one row in PostgreSQL, moved in the transaction of each change), its
reads shared on the event loop, and the minimal Redis connection of the loop's other commands."""

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction

from lib import cache
from lib.cache import SharedReads, auth_generation, bump_auth_generation
from quota import ledger
from quota.ledger import loop as aio

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="a real Redis")


class _Source:
    """A value read with a delay: what each read saw when it started."""

    def __init__(self, delay_s: float) -> None:
        self.value, self.delay_s, self.started = 1, delay_s, []

    async def read(self) -> int:
        seen = self.value
        self.started.append(seen)
        await asyncio.sleep(self.delay_s)
        return seen


async def test_concurrent_reads_share_a_few_reads():
    source = _Source(0.01)
    reads = SharedReads(source.read)
    values = await asyncio.gather(*(reads.begin() for _ in range(50)))
    assert values == [1] * 50
    assert 1 <= len(source.started) <= 2  # one read out, the rest wait for the next one


async def test_a_read_that_starts_after_a_change_sees_it_even_while_an_older_read_is_out():
    source = _Source(0.05)
    reads = SharedReads(source.read)
    early = reads.begin()
    while not source.started:  # the first read has seen the old value and is still out
        await asyncio.sleep(0.001)
    source.value = 2
    late = await reads.begin()
    assert (await early, late) == (1, 2)


async def test_a_cancelled_reader_does_not_cancel_the_others():
    reads = SharedReads(_Source(0.02).read)
    first = asyncio.ensure_future(reads.begin())
    second = asyncio.ensure_future(reads.begin())
    await asyncio.sleep(0.005)
    first.cancel()
    assert await second == 1


async def test_a_failed_read_fails_its_waiters_and_the_next_read_starts_anew():
    calls = []

    async def read():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("lost")
        return 7

    reads = SharedReads(read)
    with pytest.raises(ConnectionError):
        await reads.begin()
    assert await reads.begin() == 7


@pytest.mark.django_db(transaction=True)
async def test_the_event_loop_reads_the_committed_generation_and_remembers_it():
    before = await sync_to_async(auth_generation)()
    cache.forget_generation()
    try:
        assert await ledger.generation_begin() == before
        assert cache.known_generation() == before
        await sync_to_async(bump_auth_generation)()  # autocommit: committed at once
        assert await ledger.generation_begin() == before + 1 == cache.known_generation()
    finally:
        await aio.pool_close()


def _elsewhere(read):
    """`read()` on another thread, so on another database connection (another transaction)."""
    found = []
    thread = threading.Thread(target=lambda: (found.append(read()), connection.close()))
    thread.start()
    thread.join()
    return found[0]


@pytest.mark.django_db(transaction=True)
def test_a_bump_moves_with_its_transaction():
    """Visible to others exactly when the change commits; gone with it when it rolls back."""
    before = auth_generation()
    with transaction.atomic():
        bump_auth_generation()
        assert _elsewhere(auth_generation) == before  # not before the change is visible
        inside = auth_generation()
        assert inside not in (before, before + 1)  # its own uncommitted bump is no number to cache under
    assert auth_generation() == before + 1 == _elsewhere(auth_generation)
    with pytest.raises(RuntimeError), transaction.atomic():
        bump_auth_generation()
        raise RuntimeError("the change fails")
    assert auth_generation() == before + 1


@pytest.mark.django_db(transaction=True)
def test_a_lost_row_starts_again_above_any_number_held():
    held = auth_generation()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {cache.GENERATION_TABLE}")  # noqa: S608 - a constant name
    assert auth_generation() > held
    fresh = auth_generation()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {cache.GENERATION_TABLE}")  # noqa: S608 - a constant name
    bump_auth_generation()  # a bump without a row starts it too
    assert auth_generation() > fresh


class _Transport:
    """Collects what the protocol writes; the tests play the server's side by hand."""

    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def _connection():
    conn = cache.RespConnection()
    conn.connection_made(_Transport())
    return conn


async def test_a_value_split_across_packets_is_read_whole_and_nil_is_none():
    conn = _connection()
    reply = asyncio.ensure_future(conn.command(b"GET", b"k"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # commands leave together at the end of the loop's turn
    assert conn.transport.written == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    conn.data_received(b"$5\r\n12")
    await asyncio.sleep(0)
    assert not reply.done()  # the rest of the value is still on its way
    conn.data_received(b"345\r\n")
    assert await reply == b"12345"
    nil = asyncio.ensure_future(conn.command(b"GET", b"k"))
    await asyncio.sleep(0)
    conn.data_received(b"$-1\r\n")
    assert await nil is None


async def test_an_error_reply_a_lost_connection_and_silence_raise():
    conn = _connection()
    refused = asyncio.ensure_future(conn.command(b"SELECT", b"99"))
    await asyncio.sleep(0)
    conn.data_received(b"-ERR DB index is out of range\r\n")
    with pytest.raises(cache.ResponseError, match="out of range"):
        await refused
    lost = asyncio.ensure_future(conn.command(b"GET", b"k"))
    await asyncio.sleep(0)
    conn.connection_lost(None)
    with pytest.raises(ConnectionError):
        await lost
    with pytest.raises(ConnectionError):
        await conn.command(b"GET", b"k")  # closed: no write into the void


async def test_a_redis_that_does_not_answer_times_out(monkeypatch):
    monkeypatch.setattr(cache, "REDIS_TIMEOUT_S", 0.05)
    with pytest.raises(TimeoutError):
        await _connection().command(b"GET", b"k")


@needs_redis
async def test_counters_count_every_concurrent_increment_and_expire_from_the_first():
    from django.core.cache import cache as django_cache

    key = "gw:test-counter"
    django_cache.delete(key)
    counts = await asyncio.gather(*(cache.counter_incr(key, ttl_s=30) for _ in range(40)))
    assert sorted(counts) == list(range(1, 41))
    assert await cache.counter_read(key) == 40 == int(django_cache.get(key))
    ttl = django_cache._cache.get_client().ttl(django_cache.make_and_validate_key(key))
    assert 0 < ttl <= 30  # set by the first increment, kept by the others


@needs_redis
async def test_commands_from_many_callers_share_one_connection_and_a_failure_reconnects():
    await cache.shared_set("gw:test-shared", "a", ttl_s=30)
    values = await asyncio.gather(*(cache.shared_get("gw:test-shared") for _ in range(20)))
    assert values == ["a"] * 20
    counters = cache._shared_counters[asyncio.get_running_loop()]
    counters.conn.close()  # the server went away mid-session
    await asyncio.sleep(0)
    assert await cache.shared_get("gw:test-shared") == "a"


async def test_commands_sent_in_one_turn_of_the_loop_leave_in_one_write():
    conn = _connection()
    writes: list[bytes] = []
    conn.transport.write = writes.append
    first, second = conn.request(b"GET", b"a"), conn.request(b"GET", b"b")
    conn.send_without_reply(b"DEL", b"c")
    assert writes == []
    await asyncio.sleep(0)
    assert len(writes) == 1 and writes[0].index(b"$1\r\na") < writes[0].index(b"$1\r\nb") < writes[0].index(b"DEL")
    conn.data_received(b"$1\r\nx\r\n$-1\r\n")
    assert (await first, await second) == (b"x", None)
