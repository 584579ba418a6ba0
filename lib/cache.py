"""Invalidation of what the request path caches (key -> allocation, model, provider, price), and
the event loop's minimal Redis connection (rate limits, failed-auth counters, response owners).

Every service that changes something a proxied call reads bumps one generation number, kept in
PostgreSQL (one row, GENERATION_TABLE); request-path caches key their entries by it, so a
revocation is seen by every process on its next call. A warm call does not read it at all: its
admission statement carries the number its caches were read under as one more guard
(GENERATION_GUARD), so the reservation is made only while that number is still current, in the
same statement and the same snapshot as the caps (quota.admission). Realtime sessions poll it.

The bump is a write of that row in the transaction of the change itself (`bump_auth_generation`,
called inside the writer's atomic block): the new number becomes visible exactly when the change
does. A reader that loads state after reading a number therefore always loads state at least as
new as that number, never older, and nothing can keep old state under a new number. (When the
number lived in Redis it could only move after the commit, `transaction.on_commit`, and a bump
lost between the commit and Redis left every process on its old state.) One thing remains: a
transaction that bumped and then reads the number sees its own uncommitted bump, which a rollback
could hand to a later change; such a read gets a number no process holds instead.
"""

import asyncio
import collections
import logging
import ssl as ssl_module
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from redis.connection import parse_url
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

GENERATION_TABLE = "gw_auth_generation"  # made by allocations' migration 0016
GENERATION_READ = f"SELECT n FROM {GENERATION_TABLE} WHERE id = 1"  # noqa: S608 - a constant name
# The admission's guard (quota.ledger.statements): its reservation is made only under this number.
GENERATION_GUARD = f" AND (SELECT n FROM {GENERATION_TABLE} WHERE id = 1) = %s"  # noqa: S608 - a constant name
_GENERATION_START = f"INSERT INTO {GENERATION_TABLE} (id, n) VALUES (1, %s) ON CONFLICT (id) DO NOTHING"  # noqa: S608
_GENERATION_BUMP = (
    f"INSERT INTO {GENERATION_TABLE} AS g (id, n) VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET n = g.n + 1"  # noqa: S608
)
_MOVED_HERE = "_auth_generation_moved"  # set on a connection whose open transaction bumped the number


def auth_generation() -> int:
    """The current auth generation, read on this thread's database connection (the thread path
    of a call, the services). Errors of the database propagate."""
    if getattr(connection, _MOVED_HERE, False):
        if connection.in_atomic_block:
            return _fresh_generation()  # this transaction's own bump is not a number to cache under
        setattr(connection, _MOVED_HERE, False)
    with connection.cursor() as cursor:
        cursor.execute(GENERATION_READ)
        row = cursor.fetchone()
        if row is None:  # never set (a new database): started where no process can hold a number
            cursor.execute(_GENERATION_START, [_fresh_generation()])
            cursor.execute(GENERATION_READ)
            row = cursor.fetchone()
    value = int(row[0])
    generation_seen(value)
    return value


def bump_auth_generation() -> None:
    """Moves the auth generation in the current transaction: call it inside the atomic block of
    the change (the row stays locked until that commits, so writers of it queue; call it last).
    Outside one it commits at once: call it after the change committed."""
    with connection.cursor() as cursor:
        cursor.execute(_GENERATION_BUMP, [_fresh_generation()])
    if connection.in_atomic_block:
        setattr(connection, _MOVED_HERE, True)


def _fresh_generation() -> int:
    # A number no process holds: the start of a new row (a new or restored database must not
    # repeat a number a process still holds), and what a transaction that bumped reads.
    return time.time_ns()


class SharedReads:
    """Reads of one value for one event loop, one at a time: the callers that arrive while a read
    is out wait together for the next one, which starts after they arrived (so none of them can
    miss a change made before it arrived). Under load that is one round trip for many callers."""

    def __init__(self, read: Callable[[], Awaitable[Any]]) -> None:
        self.read = read
        self.running: asyncio.Task | None = None
        self.waiting: asyncio.Future | None = None

    def begin(self) -> asyncio.Future:
        """The shared future of the read the caller waits for (one that starts after this call).
        Awaited shielded, never cancelled."""
        future = self.waiting
        if future is None:
            future = self.waiting = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if all left
            if self.running is None:
                self._start()
        return asyncio.shield(future)  # a caller cancelled leaves the read to the others

    def _start(self) -> None:
        future, self.waiting = self.waiting, None
        if future is not None:
            self.running = asyncio.ensure_future(self._run(future))

    async def _run(self, future: asyncio.Future) -> None:
        try:
            future.set_result(await self.read())
        except Exception as error:  # noqa: BLE001 - handed to every waiter
            future.set_exception(error)
        finally:
            self.running = None
            if self.waiting is not None:
                self._start()


# The generation this process last read: a warm call is admitted under it, its admission
# statement checking that it is still current (quota.admission).
_known: list = []


def known_generation() -> int | None:
    """The auth generation as this process last read it, or None (none read yet)."""
    return _known[0] if _known else None


def generation_seen(value: int) -> None:
    """A generation just read (here, or on an event loop: quota.ledger.loop): the one warm calls
    are admitted under."""
    _known[:] = [value]


def forget_generation() -> None:
    """The next call reads the generation again (tests)."""
    _known.clear()


class RespConnection(asyncio.Protocol):
    """A minimal Redis connection for the event loop's hot reads and scripts: commands are
    pipelined (answered in the order sent, so a caller that stopped waiting only leaves its reply
    to be skipped), simple replies only (+OK, -ERR, :n, $bulk, nil). redis-py's asyncio client
    spent ~80 us of CPU per GET in its command, pool and timeout layers, ~6 % of a proxied call's
    CPU."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: collections.deque[asyncio.Future] = collections.deque()
        self.outgoing: list[bytes] = []

    @classmethod
    async def open(cls, url: str, timeout_s: float | None = None) -> "RespConnection":
        params = parse_url(url)
        ssl = ssl_module.create_default_context() if url.startswith("rediss://") else None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s or REDIS_TIMEOUT_S):
            if "path" in params:  # unix://
                _, conn = await loop.create_unix_connection(cls, params["path"])
            else:
                host, port = params.get("host", "localhost"), params.get("port", 6379)
                _, conn = await loop.create_connection(cls, host, port, ssl=ssl)
        if params.get("password"):
            await conn.command(b"AUTH", *[str(params[k]).encode() for k in ("username", "password") if params.get(k)])
        if params.get("db"):
            await conn.command(b"SELECT", str(params["db"]).encode())
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.replies:
            reply = self.replies.popleft()
            if not reply.done():
                reply.set_exception(ConnectionError(f"Redis connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.replies:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            kind, head = self.buffer[:1], bytes(self.buffer[1:end])
            if kind == b"$" and int(head) >= 0:
                size = int(head)
                if len(self.buffer) < end + size + 4:
                    return  # the rest of the value is still on its way
                result: object = bytes(self.buffer[end + 2 : end + 2 + size])
                del self.buffer[: end + size + 4]
            else:
                del self.buffer[: end + 2]
                result = (
                    ResponseError(head.decode(errors="replace")) if kind == b"-" else None if kind == b"$" else head
                )
            reply = self.replies.popleft()
            if reply.done():
                continue  # its caller stopped waiting
            if isinstance(result, ResponseError):
                reply.set_exception(result)
            else:
                reply.set_result(result)  # a value, nil, or +OK / :n

    def request(self, *parts: bytes) -> asyncio.Future:
        """Sends a command; the future of its reply, unbounded (`command` bounds the wait; a caller
        of this one watches the connection instead)."""
        if self.transport is None:
            raise ConnectionError("Redis connection closed")
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        self._write(_encode(parts))
        return reply

    async def command(self, *parts: bytes, timeout_s: float | None = None) -> Any:
        reply = self.request(*parts)
        async with asyncio.timeout(timeout_s or REDIS_TIMEOUT_S):
            return await reply

    def send_without_reply(self, *parts: bytes) -> None:
        """A command whose reply Redis skips (CLIENT REPLY SKIP): one write, nothing to wait for,
        and nothing heard of its errors."""
        if self.transport is None:
            raise ConnectionError("Redis connection closed")
        self._write(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n" + _encode(parts))

    def _write(self, data: bytes) -> None:
        """Commands sent in one turn of the event loop leave together at its end: one system call
        for all the calls that meet there (under load, many), in the order they were sent."""
        if self.outgoing:
            self.outgoing.append(data)
            return
        self.outgoing.append(data)
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(outgoing))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _encode(parts: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


REDIS_TIMEOUT_S = 2.0


class LoopConnection:
    """One pipelined RespConnection for the callers of one event loop (it answers commands in the
    order sent, so callers need not wait for each other), opened once for all that ask meanwhile
    and again after it closed."""

    open_timeout_s: float | None = None  # None: REDIS_TIMEOUT_S

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: RespConnection | None = None
        self.opening: asyncio.Future[RespConnection] | None = None

    async def connection(self) -> RespConnection:
        if self.conn is not None and self.conn.transport is not None:
            return self.conn
        if self.opening is None:
            self.opening = asyncio.ensure_future(RespConnection.open(self.url, timeout_s=self.open_timeout_s))
        opening = self.opening
        try:
            conn: RespConnection = await asyncio.shield(opening)
            if self.conn is not conn:
                self.conn = conn
                self.opened(conn)
        finally:
            if self.opening is opening and opening.done():
                self.opening = None
        return conn

    def opened(self, conn: RespConnection) -> None:
        """Called once for each new connection."""


class _SharedCounters(LoopConnection):
    """The failed-auth counts (refused requests only) and the Responses API id owners (one SET per
    relayed response, one GET per `previous_response_id`)."""

    async def command(self, *commands: tuple[bytes, ...]) -> list:
        """Sends `commands` together (one write, one round trip) and returns their replies."""
        conn = await self.connection()
        try:
            replies = [conn.request(*parts) for parts in commands]
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                return [await reply for reply in replies]
        except (OSError, TimeoutError):
            conn.close()  # the next command starts on a fresh connection
            raise


_shared_counters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedCounters]" = weakref.WeakKeyDictionary()


def _counters(backend: RedisCache) -> _SharedCounters:
    loop = asyncio.get_running_loop()
    counters = _shared_counters.get(loop)
    if counters is None:
        counters = _shared_counters[loop] = _SharedCounters(backend._cache._servers[0])  # type: ignore[attr-defined]
    return counters


async def counter_incr(key: str, *, ttl_s: int) -> int:
    """Increments a counter in the shared cache from the event loop; it expires `ttl_s` after its
    first increment (created with its expiry, then incremented: one round trip). Readable with
    cache.get(key) as well."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        backend.add(key, 0, timeout=ttl_s)
        return backend.incr(key)
    raw_key = backend.make_and_validate_key(key).encode()
    replies = await _counters(backend).command(
        (b"SET", raw_key, b"0", b"EX", str(ttl_s).encode(), b"NX"), (b"INCR", raw_key)
    )
    return int(replies[1])


async def counter_read(key: str) -> int:
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return int(backend.get(key) or 0)
    (raw,) = await _counters(backend).command((b"GET", backend.make_and_validate_key(key).encode()))
    return int(raw) if raw is not None else 0


async def shared_set(key: str, value: str, *, ttl_s: int) -> None:
    """A plain string in the shared cache from the event loop (read back with shared_get)."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        backend.set(key, value, timeout=ttl_s)
        return
    raw_key = backend.make_and_validate_key(key).encode()
    await _counters(backend).command((b"SET", raw_key, value.encode(), b"EX", str(ttl_s).encode()))


async def shared_get(key: str) -> str | None:
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return backend.get(key)
    (raw,) = await _counters(backend).command((b"GET", backend.make_and_validate_key(key).encode()))
    return None if raw is None else raw.decode()


async def shared_get_many(keys: list[str]) -> list[str | None]:
    """Several plain strings of the shared cache in one round trip (pipelined GETs: the connection
    reads simple replies only)."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return [backend.get(key) for key in keys]
    raw_keys = [backend.make_and_validate_key(key).encode() for key in keys]
    replies = await _counters(backend).command(*[(b"GET", key) for key in raw_keys])
    return [None if value is None else value.decode() for value in replies]
