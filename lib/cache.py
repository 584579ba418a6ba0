"""Invalidation of what the request path caches (key -> allocation, model, provider, price).

Every service that changes something a proxied call reads bumps one generation number in the
shared cache; request-path caches key their entries by it, so a revocation is seen by every
process on its next call. Realtime sessions poll it to notice changes within their watch tick.

The bump happens once the change has committed (`transaction.on_commit`), never before: a call
that read the new number while the change was still uncommitted would load the old state, keep
it under the new number, and nothing would invalidate it again (the Django admin saves inside a
transaction of its own, so "after the service's atomic block" is not enough).
"""

import asyncio
import collections
import logging
import ssl as ssl_module
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, SupportsInt

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from redis.connection import parse_url
from redis.exceptions import RedisError, ResponseError

GENERATION_KEY = "gw:auth-generation"
logger = logging.getLogger(__name__)
_unavailable_logged = [0.0]


def _log_unavailable() -> None:
    now = time.monotonic()
    if now - _unavailable_logged[0] > 10:  # once per outage, not once per call
        _unavailable_logged[0] = now
        logger.warning("the shared cache (Redis) is unavailable: reading keys and prices from the database")


_local = threading.local()


def _read() -> object:
    """cache.get(GENERATION_KEY), on Redis without Django's per-call client construction and key
    validation (this runs on every proxied call): the Redis client is kept per thread and backend."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return backend.get(GENERATION_KEY)
    held = getattr(_local, "redis", None)
    if held is None or held[0] is not backend:
        key = backend.make_and_validate_key(GENERATION_KEY)
        held = _local.redis = (backend, backend._cache.get_client(key), key)
    raw = held[1].get(held[2])
    # RedisCacheClient._serializer is set in its __init__ but missing from django-stubs
    return None if raw is None else backend._cache._serializer.loads(raw)  # type: ignore[union-attr]


def auth_generation() -> int:
    try:
        value = _read()
        if value is None:
            cache.add(GENERATION_KEY, _fresh_generation(), timeout=None)
            value = cache.get(GENERATION_KEY) or _fresh_generation()
    except RedisError:
        # Without the shared cache no process can tell whether its snapshots are current. A number
        # no process holds makes this call read the database, so calls go on (a little slower)
        # and a revocation still takes effect at once.
        _local.redis = None
        _log_unavailable()
        return _fresh_generation()
    if type(value) is int:
        return value
    if isinstance(value, str | bytes | SupportsInt):
        return int(value)
    raise TypeError(f"the auth generation is not a number: {value!r}")


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

    def request(self, *parts: bytes, at_once: bool = False) -> asyncio.Future:
        """Sends a command; the future of its reply, unbounded (`command` bounds the wait; a caller
        of this one watches the connection instead). `at_once`: written now, not at the end of the
        loop's turn, when nothing else waits to be written."""
        if self.transport is None:
            raise ConnectionError("Redis connection closed")
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        if at_once and not self.outgoing:
            self.transport.write(_encode(parts))
        else:
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


class _SharedReads:
    """GETs of the generation for one event loop, one at a time: the calls that arrive while a GET
    is out wait together for the next one, which starts after they arrived (so none of them can
    miss a bump made before it arrived). Under load that is one Redis round trip for many calls,
    on one connection, instead of a GET and a pooled connection per call."""

    def __init__(self, url: str, key: str, loads: Callable[[bytes], Any]) -> None:
        self.url, self.key, self.loads = url, key.encode(), loads
        self.conn: RespConnection | None = None
        self.running: asyncio.Task | None = None
        self.waiting: asyncio.Future | None = None

    def begin(self) -> asyncio.Future:
        """The shared future of the GET the caller waits for (one that starts after this call):
        the caller does other work meanwhile. Awaited shielded, never cancelled."""
        future = self.waiting
        if future is None:
            future = self.waiting = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if all left
            if self.running is None:
                self._start()
        return future

    def _start(self) -> None:
        future, self.waiting = self.waiting, None
        if future is not None:
            # On an open connection the GET leaves now, before the caller's next command (an
            # admission sent meanwhile), not when the task first runs two turns of the loop later.
            conn = self.conn
            sent = None if conn is None or conn.transport is None else conn.request(b"GET", self.key, at_once=True)
            self.running = asyncio.ensure_future(self._get(future, sent))

    async def _get(self, future: asyncio.Future, sent: asyncio.Future | None) -> None:
        try:
            if sent is None:
                if self.conn is None or self.conn.transport is None:
                    self.conn = await RespConnection.open(self.url)
                sent = self.conn.request(b"GET", self.key, at_once=True)
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                raw = await sent
            value = None if raw is None else self.loads(raw)
            _known[:] = [value, self.url, self.key] if type(value) is int else []
            future.set_result(value)
        except Exception as error:  # noqa: BLE001 - handed to every waiter
            _known.clear()  # calls read it first again, until a read succeeds
            if self.conn is not None:
                self.conn.close()
                self.conn = None  # a fresh connection for the next GET
            future.set_exception(error)
        finally:
            self.running = None
            if self.waiting is not None:
                self._start()


_shared_reads: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedReads]" = weakref.WeakKeyDictionary()
_last_reads: tuple = (None, None)  # (event loop, its reader): the usual lookup, without the weak mapping


async def auth_generation_async() -> int | None:
    """auth_generation from the event loop (quota.admission's fast path), or None when it is not
    set yet (the thread path sets it). On Redis through _SharedReads; other cache backends are
    in-process and read directly."""
    value = await auth_generation_begin()
    return value if type(value) is int else None


def auth_generation_begin() -> asyncio.Future:
    """auth_generation_async with its read already started when this returns (a future to await,
    or to leave: nothing else waits on it): the caller sends other commands meanwhile. Its value
    is the generation, None when it is not set, or another type when it is not a number."""
    # caches["default"] builds a new backend object in every request's context: the reader is
    # kept per event loop (the cache settings do not change while a process runs).
    global _last_reads
    loop = asyncio.get_running_loop()
    reads = _last_reads[1] if _last_reads[0] is loop else _shared_reads.get(loop)
    if reads is None:
        backend = caches["default"]
        if not isinstance(backend, RedisCache):
            done = loop.create_future()
            done.set_result(backend.get(GENERATION_KEY))
            return done
        url, key = backend._cache._servers[0], backend.make_and_validate_key(GENERATION_KEY)  # type: ignore[attr-defined]
        loads = backend._cache._serializer.loads  # type: ignore[attr-defined]
        reads = _shared_reads[loop] = _SharedReads(url, key, loads)
    _last_reads = (loop, reads)
    return asyncio.shield(reads.begin())  # a caller cancelled leaves the GET to the others


# The generation this process last read from Redis, with the server and raw key it lives under:
# a warm call is admitted under it without reading it first (quota.admission), a rate-limited one
# checking it inside its rate-limit script (quota.ratelimit), any other reading it meanwhile.
_known: list = []


def known_generation() -> tuple[int, str, bytes] | None:
    """(generation, Redis URL, raw key) as last read on an event loop, or None (none read yet,
    the last read failed or found none, or a check found it had moved)."""
    return (_known[0], _known[1], _known[2]) if _known else None


def forget_generation() -> None:
    """The next call reads the generation again (a check found it had moved)."""
    _known.clear()


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


def bump_auth_generation() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:
        cache.set(GENERATION_KEY, _fresh_generation(), timeout=None)


def _fresh_generation() -> int:
    # After the shared cache lost the key (flush, restart, eviction) the number must not repeat
    # one a process already holds, or that process would keep serving a stale snapshot.
    return time.time_ns()
