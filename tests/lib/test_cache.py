"""The auth generation read from the event loop: shared GETs that never hide an earlier bump, on
a minimal Redis connection that reconnects after a failure."""

import asyncio

import pytest
from django.conf import settings

from lib import cache
from lib.cache import auth_generation, auth_generation_async, bump_auth_generation

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the shared reads are Redis GETs")


@pytest.fixture
def gets(monkeypatch):
    """Every GET the event loop's reader sends: (value at the time it was sent)."""
    sent: list = []
    delay = {"s": 0.0}

    async def run():
        auth_generation()  # make sure the key exists
        original = cache.RespConnection.request

        def request(self, *parts, **kwargs):
            reply = original(self, *parts, **kwargs)
            if parts[0] != b"GET":
                return reply
            loop = asyncio.get_running_loop()
            late = loop.create_future()

            def answered(reply):
                sent.append(reply.result())  # the value when the GET reached Redis...
                loop.call_later(delay["s"], late.set_result, reply.result())  # ...answered late

            reply.add_done_callback(answered)
            return late

        monkeypatch.setattr(cache.RespConnection, "request", request)

    sent.clear()
    return sent, delay, run


async def test_concurrent_reads_share_a_few_gets(gets):
    sent, delay, install = gets
    await install()
    delay["s"] = 0.01
    values = await asyncio.gather(*(auth_generation_async() for _ in range(50)))
    assert len(set(values)) == 1 and values[0] == auth_generation()
    assert 1 <= len(sent) <= 2  # one GET out, the rest wait for the next one


async def test_a_read_that_starts_after_a_bump_sees_it_even_while_an_older_get_is_out(gets):
    sent, delay, install = gets
    await install()
    delay["s"] = 0.05
    before = auth_generation()
    early = asyncio.ensure_future(auth_generation_async())
    while not sent:  # the first GET has read the old value and is still out
        await asyncio.sleep(0.001)
    bump_auth_generation()
    late = await auth_generation_async()
    assert await early == before
    assert late == auth_generation() != before


async def test_a_cancelled_reader_does_not_cancel_the_others(gets):
    sent, delay, install = gets
    await install()
    delay["s"] = 0.02
    first = asyncio.ensure_future(auth_generation_async())
    second = asyncio.ensure_future(auth_generation_async())
    await asyncio.sleep(0.005)
    first.cancel()
    assert await second == auth_generation()


async def test_the_reader_selects_the_database_and_reconnects_after_a_broken_connection():
    expected = auth_generation()  # REDIS_URL names a database other than 0 under xdist, often
    assert await auth_generation_async() == expected
    reads = cache._shared_reads[asyncio.get_running_loop()]
    reads.conn.transport.abort()  # the server went away
    await asyncio.sleep(0.01)
    assert await auth_generation_async() == expected


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


async def test_counters_count_every_concurrent_increment_and_expire_from_the_first():
    from django.core.cache import cache as django_cache

    key = "gw:test-counter"
    django_cache.delete(key)
    counts = await asyncio.gather(*(cache.counter_incr(key, ttl_s=30) for _ in range(40)))
    assert sorted(counts) == list(range(1, 41))
    assert await cache.counter_read(key) == 40 == int(django_cache.get(key))
    ttl = django_cache._cache.get_client().ttl(django_cache.make_and_validate_key(key))
    assert 0 < ttl <= 30  # set by the first increment, kept by the others


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
