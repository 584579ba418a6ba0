"""Rate limits per allocation and per model (SPEC 3 step 5): requests per minute, tokens per
minute and calls in flight, held across every gateway process.

The counters live in Redis and one Lua script (ratelimit.lua) checks and takes every limit of a
call in one round trip: sliding windows for requests and tokens (exact: a log of the window's
entries, timed by Redis' clock), and a set of calls in flight whose entries carry a deadline, so a
process that dies gives its slots back after the lease. A call's tokens are counted from its
reservation's estimate at admission and corrected to what it used when it settles.

From the event loop the script goes out on a pipelined minimal connection per loop
(lib.cache.RespConnection), sent before the call's admission in PostgreSQL and read after
it (quota.admission), so the two round trips overlap.
The accounting threads and realtime's database steps use redis-py. When Redis does not answer,
limits fail open (money is still guarded by the caps in PostgreSQL), with a warning at most once
per GATEWAY_RATE_LIMIT_WARN_INTERVAL_S and a counter.
Without a Redis URL (`make run`) the same windows are kept in this process's memory (ratelimit_memory).
"""

import asyncio
import functools
import hashlib
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings

from lib.cache import LoopConnection, RespConnection

from .ratelimit_memory import MemoryWindows

logger = logging.getLogger(__name__)

SCRIPT = (Path(__file__).with_name("ratelimit.lua")).read_text().encode()
SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest().encode()
TIMEOUT_S = 0.5
RETRY_DOWN_S = 1.0  # after a failure, Redis is not asked again for this long (calls pass)

Limits = tuple[tuple[str, int | None, int | None, int | None], ...]  # access.ScopedAllocation.limits


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_ms: int
    headers: dict[str, str]

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / 1000))


@dataclass(frozen=True)
class Ticket:
    """An admitted call's place in the windows, given back (settle) when it ends."""

    id: str
    limits: Limits


PASS = Decision(True, 0, {})
stats = {"fail_open": 0}  # calls let through because Redis did not answer (per process)


def _duration(ms: int) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def decision_from(reply: str) -> Decision:
    allowed, wait, rpm, req_left, req_reset, tpm, tok_left, tok_reset = (int(float(v)) for v in reply.split())
    headers = {}
    if rpm >= 0:
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(req_left)
        headers["x-ratelimit-reset-requests"] = _duration(req_reset)
    if tpm >= 0:
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(tok_left)
        headers["x-ratelimit-reset-tokens"] = _duration(tok_reset)
    return Decision(allowed == 1, wait, headers)


@functools.lru_cache(maxsize=4096)
def _scope_parts(limits: Limits) -> tuple[list[bytes], list[bytes]]:
    """The script's keys and per-scope limit arguments of one `limits`, encoded once."""
    keys = [f"gw:rl:{name}:{part}".encode() for name, *_ in limits for part in ("r", "t", "h", "p")]
    values = [b"" if v is None else str(v).encode() for _, *numbers in limits for v in numbers]
    return keys, values


def _parts(
    mode: bytes, ticket: str, limits: Limits, *, tokens: int, count: bool, hold: bool, lease_s: float
) -> list[bytes]:
    """EVALSHA's arguments: the script, its keys, then ARGV as ratelimit.lua reads it."""
    keys, values = _scope_parts(limits)
    window_ms = b"%d" % int(settings.GATEWAY_RATE_LIMIT_WINDOW_S * 1000)
    head = [mode, ticket.encode(), window_ms, b"%d" % int(lease_s * 1000), b"%d" % max(int(tokens), 0)]
    return [b"EVALSHA", SHA, b"%d" % len(keys), *keys, *head, b"1" if count else b"0", b"1" if hold else b"0", *values]


_TICKETS = itertools.count()
_TICKET_PREFIX = os.urandom(6).hex()  # unique per process; the counter makes it unique per call


def _new_ticket() -> str:
    return f"{_TICKET_PREFIX}{next(_TICKETS):x}"


def _lease_s() -> float:
    return settings.GATEWAY_UPSTREAM_TIMEOUT_S + 60


# --- failing open -----------------------------------------------------------------------------------

_down = {"until": 0.0, "warned": -math.inf}


def _fail_open(error: BaseException) -> None:
    stats["fail_open"] += 1
    now = time.monotonic()
    _down["until"] = now + RETRY_DOWN_S
    if now - _down["warned"] >= settings.GATEWAY_RATE_LIMIT_WARN_INTERVAL_S:
        _down["warned"] = now
        logger.warning(
            "rate limits are not enforced: Redis did not answer (%s: %s); calls pass until it is back",
            type(error).__name__,
            error,
        )


def _skipping() -> bool:
    return time.monotonic() < _down["until"]


def _url() -> str:
    return settings.GATEWAY_RATE_LIMIT_REDIS_URL


_memory: MemoryWindows | None = None


def memory() -> MemoryWindows:
    global _memory
    if _memory is None:
        _memory = MemoryWindows()
        logger.warning("no Redis URL: rate limits are kept per process, in memory (each process admits its own)")
    return _memory


# --- from the event loop ----------------------------------------------------------------------------


class _LoopScripts(LoopConnection):
    """The scripts of one event loop, on its one pipelined connection, watched for silence."""

    open_timeout_s = TIMEOUT_S

    def opened(self, conn: RespConnection) -> None:
        self._watch(conn, None)

    def _watch(self, conn: RespConnection, head: asyncio.Future | None) -> None:
        """Every TIMEOUT_S: a reply still first in line since the last look means Redis stopped
        answering; closing the connection fails every call waiting on it (they pass, fail-open).
        One timer per connection instead of one per call."""
        if conn.transport is None:
            return
        first = conn.replies[0] if conn.replies else None
        if first is not None and first is head:
            conn.close()
            return
        asyncio.get_running_loop().call_later(TIMEOUT_S, self._watch, conn, first)

    async def send(self, parts: list[bytes]) -> None:
        (await self.connection()).send_without_reply(*parts)

    async def run(self, parts: list[bytes]) -> bytes:
        conn = await self.connection()
        try:
            return await conn.request(*parts)
        except redis.exceptions.ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            await conn.command(b"SCRIPT", b"LOAD", SCRIPT, timeout_s=TIMEOUT_S)
            return await conn.command(*parts, timeout_s=TIMEOUT_S)
        except asyncio.CancelledError:
            raise  # the caller left; its reply is skipped when it comes
        except BaseException:
            conn.close()  # the next call starts on a fresh connection
            raise


_loop_scripts: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopScripts]" = weakref.WeakKeyDictionary()


async def _run_async(parts: list[bytes], *, reply: bool = True) -> str | None:
    loop = asyncio.get_running_loop()
    scripts = _loop_scripts.get(loop)
    if scripts is None or scripts.url != _url():
        scripts = _loop_scripts[loop] = _LoopScripts(_url())
    if _skipping():
        _fail_open(ConnectionError("Redis was unreachable a moment ago"))
        return None
    try:
        if not reply:
            await scripts.send(parts)
            return None
        return (await scripts.run(parts)).decode()
    except (OSError, TimeoutError, redis.exceptions.RedisError) as error:
        _fail_open(error)
        return None


def _decided(ticket: str, limits: Limits, reply: "str | Decision | None") -> tuple[Decision, Ticket | None]:
    if reply is None:
        return PASS, None  # not enforced: Redis did not answer
    decision = reply if isinstance(reply, Decision) else decision_from(reply)
    return decision, (Ticket(ticket, limits) if decision.allowed else None)


async def admit_async(
    limits: Limits, *, tokens: int, count: bool = True, hold: bool = True, lease_s: float | None = None
) -> tuple[Decision, Ticket | None]:
    """Checks and takes every limit of `limits` at once: (the decision, the ticket to settle with,
    None when refused or not enforced). `count` takes a request, `hold` a slot in flight."""
    return await admit_begin(limits, tokens=tokens, count=count, hold=hold, lease_s=lease_s)


def admit_begin(
    limits: Limits,
    *,
    tokens: int,
    count: bool = True,
    hold: bool = True,
    lease_s: float | None = None,
) -> Awaitable[tuple[Decision, Ticket | None]]:
    """admit_async with the script already on its way when this returns: the caller does other
    work meanwhile (the admission in PostgreSQL) and then awaits the answer, which by then has
    usually arrived. Awaited exactly once."""
    ticket, lease = _new_ticket(), lease_s or _lease_s()
    if not _url():
        decided = _decided(
            ticket, limits, memory().admit(ticket, limits, tokens=tokens, count=count, hold=hold, lease_s=lease)
        )
        return _ready(decided)
    parts = _parts(b"admit", ticket, limits, tokens=tokens, count=count, hold=hold, lease_s=lease)
    return _answer(ticket, limits, parts, _sent_now(parts))


async def _ready(decided: tuple[Decision, Ticket | None]) -> tuple[Decision, Ticket | None]:
    return decided


def _sent_now(parts: list[bytes]) -> asyncio.Future | None:
    """The reply of `parts` written at once on this loop's open connection, or None (no connection
    yet, or Redis was unreachable a moment ago: _run_async decides)."""
    scripts = _loop_scripts.get(asyncio.get_running_loop())
    if scripts is None or scripts.url != _url() or scripts.conn is None or _skipping():
        return None
    try:
        return scripts.conn.request(*parts)
    except ConnectionError:
        return None


async def _answer(
    ticket: str, limits: Limits, parts: list[bytes], sent: asyncio.Future | None
) -> tuple[Decision, Ticket | None]:
    if sent is None:
        return _decided(ticket, limits, await _run_async(parts))
    try:
        reply: str | None = (await sent).decode()
    except redis.exceptions.ResponseError as error:
        if not str(error).startswith("NOSCRIPT"):
            raise
        reply = await _run_async(parts)  # loads the script, then runs it
    except (OSError, TimeoutError, redis.exceptions.RedisError) as error:
        _fail_open(error)
        reply = None
    return _decided(ticket, limits, reply)


@functools.lru_cache(maxsize=4096)
def _settles(limits: Limits) -> bool:
    """Whether settling changes anything: a slot in flight to give back or tokens to correct (a
    requests-per-minute limit alone is taken at admission and left to its window)."""
    return any(tpm is not None or parallel is not None for _, _rpm, tpm, parallel in limits)


async def settle_async(ticket: Ticket, *, tokens: int) -> None:
    """Gives back the call's slot and corrects its tokens to what it used. Sent without waiting for
    (or hearing) Redis' reply: nothing waits on it, and a lost settlement only leaves the slot to
    its lease."""
    if not _settles(ticket.limits):
        return None
    if not _url():
        return memory().settle(ticket.id, ticket.limits, tokens=tokens)
    parts = _parts(b"settle", ticket.id, ticket.limits, tokens=tokens, count=False, hold=False, lease_s=0)
    await _run_async(parts, reply=False)
    return None


async def renew_async(ticket: Ticket, *, lease_s: float) -> None:
    """Extends a long call's slot (a realtime session) so that it outlives the lease; sent like
    settle_async, without waiting for the reply."""
    if not _url():
        return memory().renew(ticket.id, ticket.limits, lease_s=lease_s)
    parts = _parts(b"renew", ticket.id, ticket.limits, tokens=0, count=False, hold=False, lease_s=lease_s)
    await _run_async(parts, reply=False)
    return None


# --- from threads (accounting threads, realtime's database steps) ------------------------------------

_thread = threading.local()


def _run(parts: list[bytes]) -> str | None:
    url = _url()
    held = getattr(_thread, "client", None)
    if held is None or held[0] != url:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        held = _thread.client = (url, client, client.register_script(SCRIPT))
    if _skipping():
        _fail_open(ConnectionError("Redis was unreachable a moment ago"))
        return None
    try:
        keys = parts[3 : 3 + int(parts[2])]
        return held[2](keys=keys, args=parts[3 + len(keys) :]).decode()
    except (OSError, redis.exceptions.RedisError) as error:
        _fail_open(error)
        return None


def admit(
    limits: Limits, *, tokens: int, count: bool = True, hold: bool = True, lease_s: float | None = None
) -> tuple[Decision, Ticket | None]:
    """admit_async from a thread."""
    ticket, lease = _new_ticket(), lease_s or _lease_s()
    if not _url():
        return _decided(
            ticket, limits, memory().admit(ticket, limits, tokens=tokens, count=count, hold=hold, lease_s=lease)
        )
    return _decided(
        ticket, limits, _run(_parts(b"admit", ticket, limits, tokens=tokens, count=count, hold=hold, lease_s=lease))
    )


def settle(ticket: Ticket, *, tokens: int) -> None:
    """settle_async from a thread."""
    if not _settles(ticket.limits):
        return None
    if not _url():
        return memory().settle(ticket.id, ticket.limits, tokens=tokens)
    _run(_parts(b"settle", ticket.id, ticket.limits, tokens=tokens, count=False, hold=False, lease_s=0))
    return None
