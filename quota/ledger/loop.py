"""Admission and settlement from the event loop (the hot path of a call).

The accounting threads (ledger.threads) run every step with Django's connection; handing a step
to a thread and back costs about as much CPU as the statement itself, and the threads fight the
event loop for the GIL. When everything a call needs is already cached (key scope, price, counter
id), its two statements run here instead: the same SQL (ledger.statements) on a few psycopg async
connections owned by the event loop, prepared once per connection (not behind PgBouncer in
transaction mode: GATEWAY_PGBOUNCER).

Nothing here refuses a call or spools a settlement: admit returns None when the guarded UPDATE
did not match, and any error propagates; the caller then takes the thread path, which tells 403
from 429, writes the refusal record, or settles durably (ledger.spool).
"""

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import uuid
import weakref
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import psycopg
from django.conf import settings
from django.db import connections
from psycopg import generators, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result
from psycopg.waiting import READY_R, WAIT_W

from lib.cache import GENERATION_READ, SharedReads, generation_seen
from lib.conf import setting
from lib.frozen import quick_init

from ..billing.bill import Bill
from ..models import PriceVersion
from ..pricing import Usage
from .groups import Budget, admission_missed
from .statements import (
    COUNTER_READ,
    COUNTERS_READ,
    Admission,
    Settlement,
    admit_many_statement,
    admit_statement,
    reservation_row,
    settle_statement,
    settle_values,
)

if TYPE_CHECKING:
    from psycopg.abc import RV, PQGen
    from psycopg.abc import Transformer as Adapters
    from psycopg.waiting import Wait


class LoopConnection(psycopg.AsyncConnection):
    """A pooled connection that watches its socket with one reader for its whole life. psycopg
    adds a reader, a timer and a future for every wait and removes them after (two epoll_ctl
    calls and a timer per statement); here a statement's wait is one future, woken by the reader.

    libpq closes the socket itself when it finds the connection ended, so the reader is removed
    before anything that may find it (input read while no statement waits, a statement's step
    that failed) and only put back while the connection is sound: a closed descriptor is never
    left in the event loop, where its number could come back for another socket."""

    _fd: int | None = None  # the socket watched, while it is
    _broken = False  # the connection failed: psycopg's own wait from now on (its statements fail)
    _waiter: asyncio.Future | None = None
    _statements: "dict[str, _Statement] | None" = None  # run_statement's, by text
    _named: dict[tuple, bytes]  # (statement, parameter types) -> its prepared name on this connection
    _transformer: "Adapters"

    STATEMENTS_MAX = 64  # texts kept (encoded); past it, let go and encoded again
    PREPARED_MAX = 256  # past it, a new (statement, types) is sent unprepared (names are never reused)

    async def run_statement(self, sql: str, params: Sequence, *, prepare: bool) -> "pq.abc.PGresult":
        """One ledger statement (PostgreSQL's placeholders, `native`) in autocommit: its result, or
        its error raised as psycopg raises it (the connection still usable). What a raw cursor's
        `execute` and `fetch` do for these few fixed texts, without their machinery (a cursor's
        reset and lock, its query and prepare generators, psycopg's prepared-statement cache and
        its maintenance, the result checks, the row maker): the parameters dumped by one
        Transformer of the connection (its dumpers found once per type), the statement prepared
        once per (text, parameter types) under a name of this connection (psycopg's own are
        `_pg3_*`), then sent with its Sync in one write and its result read when the socket is
        readable (the connection's one reader). Any failure but the statement's own error leaves
        the connection unusable (the pool drops it): a statement sent is never read by another."""
        if self._broken:
            raise psycopg.OperationalError("the connection failed")
        pgconn = self.pgconn
        statements = self._statements
        if statements is None:
            statements = self._statements = {}
            self._named = {}
            self._transformer = Transformer(self)
        found = statements.get(sql)
        if found is None:
            if len(statements) >= self.STATEMENTS_MAX:
                statements.clear()
            found = statements[sql] = _Statement(sql.encode(self._transformer.encoding))
        tx = self._transformer
        formats = found.formats
        if len(formats) != len(params):
            formats = found.formats = [PyFormat.AUTO] * len(params)
        values = tx.dump_sequence(params, formats)
        types, value_formats = tx.types or (), tx.formats
        result = name = None
        try:
            if prepare:
                named = self._named
                name = named.get((found.query, types))
                if name is None and len(named) < self.PREPARED_MAX:
                    name = f"_gw_{len(named)}".encode()
                    pgconn.send_prepare(name, found.query, param_types=types)
                    result = await self._result()
                    if result.status != pq.ExecStatus.COMMAND_OK:
                        name = None  # its error is the statement's (raised below)
                    else:
                        named[(found.query, types)] = name
                        result = None
            if result is None:
                if name is not None:
                    pgconn.send_query_prepared(name, values, param_formats=value_formats)
                else:
                    pgconn.send_query_params(found.query, values, param_types=types, param_formats=value_formats)
                result = await self._result()
        except BaseException:
            self._unwatch()
            self._broken = True
            raise
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise error_from_result(result, encoding=tx.encoding)
        return result

    def rows(self, result: "pq.abc.PGresult") -> list[tuple]:
        """A result's rows as tuples of Python values (the connection's loaders)."""
        tx = self._transformer
        tx.set_pgresult(result)
        return tx.load_rows(0, result.ntuples, tuple)

    async def _result(self) -> "pq.abc.PGresult":
        """The result of the statement just sent (its error's, if any), read up to the end of its
        results. A send that did not go out whole is finished by psycopg's generator and wait (a
        statement larger than the socket's buffer)."""
        pgconn = self.pgconn
        if pgconn.flush():
            await self.wait(generators.send(pgconn))
        found = None
        while True:
            if pgconn.is_busy():
                try:
                    await self._watched(asyncio.get_running_loop())
                finally:
                    self._waiter = None
                pgconn.consume_input()
                continue
            result = pgconn.get_result()
            if result is None:
                if found is None:
                    raise psycopg.OperationalError("the statement returned no result")
                return found
            if found is None or result.status == pq.ExecStatus.FATAL_ERROR:
                found = result

    async def wait(self, gen: "PQGen[RV]", interval: float = 0.1, timeout: float | None = None) -> "RV":  # noqa: ASYNC109 - psycopg's
        if timeout is not None or self._broken:
            self._unwatch()
            return await super().wait(gen, interval, timeout)
        try:
            state = next(gen)
        except StopIteration as done:
            return done.value
        loop = asyncio.get_running_loop()
        try:
            while True:
                if state & WAIT_W:  # the statement not sent in full: psycopg's own wait, for the rest
                    self._unwatch()  # its reader would replace this one, and remove it after
                    return await super().wait(_resumed(state, gen), interval)
                try:
                    await self._watched(loop)
                finally:
                    self._waiter = None
                state = gen.send(READY_R)
        except StopIteration as done:
            return done.value
        except BaseException:
            self._unwatch()
            self._broken = True
            raise

    def _watched(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """The future the connection's reader sets when the socket is readable (the reader added
        first if it is not watching): the caller awaits it, then clears `_waiter`."""
        if self._fd is None:
            self._fd = self.pgconn.socket
            loop.add_reader(self._fd, self._readable)
        waiter = self._waiter = loop.create_future()
        return waiter

    def _readable(self) -> None:
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
            return
        # Input while no statement waits: a notice, or the end of the connection.
        self._unwatch()
        try:
            self.pgconn.consume_input()
        except Exception:  # noqa: BLE001 - the connection ended: its next statement says so
            self._broken = True

    def _unwatch(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)

    async def close(self) -> None:
        self._unwatch()
        self._broken = True
        self._statements = None
        await super().close()


class _Statement:
    """A statement text of `LoopConnection.run_statement`: its bytes, and a format per parameter."""

    __slots__ = ("query", "formats")

    def __init__(self, query: bytes) -> None:
        self.query = query
        self.formats: list[PyFormat] = []


def _resumed(state: "Wait", gen: "PQGen[RV]") -> "PQGen[RV]":
    """A started psycopg generator as a fresh one that first yields the state it stopped at."""
    ready = yield state
    while True:
        try:
            state = gen.send(ready)
        except StopIteration as done:
            return done.value
        ready = yield state


@functools.lru_cache(maxsize=512)
def native(sql: str) -> str:
    """A ledger statement with PostgreSQL's own placeholders ($1, $2, …), as `run_statement` sends
    it (libpq takes no `%s`): the statements are a few fixed texts (ledger.statements keeps each as
    one object), so each is converted once here. They hold no other `%`."""
    parts = sql.split("%s")
    if any("%" in part for part in parts):
        raise ValueError("a ledger statement holds a % that is not a placeholder")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool]" = weakref.WeakKeyDictionary()


def _prepare() -> bool:
    """psycopg's `prepare` for the two statements: always, or never behind PgBouncer (GATEWAY_PGBOUNCER)."""
    return not setting("GATEWAY_PGBOUNCER")


CLOSE_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 5


class Pool:
    """At most `size` connections of one event loop; a call waits for a free one. A connection that
    failed is dropped and replaced on demand. No transaction is ever left open on one: each
    statement runs in autocommit and is atomic on its own. Used from its event loop only, so its
    bookkeeping needs no lock (an asyncio.Condition here cost ~2 % of the CPU per call)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[LoopConnection] = []
        self.opened = 0
        self.closing = False
        self.drained = asyncio.Event()  # set once closing and the last connection is closed
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.settlements = _Settlements(self)
        self.admissions = _Admissions(self)
        self.generation_reads = SharedReads(self._generation_read)

    async def _generation_read(self) -> int | None:
        async with self.connection() as conn:
            rows = conn.rows(await conn.run_statement(native(GENERATION_READ), (), prepare=_prepare()))
        if not rows:
            return None
        row = rows[0]
        generation_seen(row[0])
        return row[0]

    @staticmethod
    def _conninfo() -> dict:
        params = connections["default"].get_connection_params()
        for name in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
            params.pop(name, None)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)  # a database that is down: fail over to the thread path
        return params

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self) -> LoopConnection:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.opened < self.size:
                self.opened += 1
                try:
                    return await LoopConnection.connect(**self._conninfo(), autocommit=True)
                except BaseException:
                    self.opened -= 1
                    self._wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken but leaving: the turn goes to the next one
                raise

    def connection(self) -> "_Lease":
        """`async with pool.connection() as conn`: a free connection for the block, given back after
        it, or closed when the block raised (or the pool is closing)."""
        return _Lease(self)

    async def _give_back(self, conn: LoopConnection, *, healthy: bool) -> None:
        try:
            if not healthy or self.closing or conn.closed:
                self.opened -= 1
                await conn.close()
                if self.closing and self.opened == 0:
                    self.drained.set()
            else:
                self.idle.append(conn)
        finally:
            self._wake_one()

    async def close(self) -> None:
        """Closes every connection: the idle ones now, those in use when their statement is done
        (waiting up to CLOSE_WAIT_S for them, e.g. a settlement finishing at shutdown)."""
        self.closing = True
        idle, self.idle = self.idle, []
        self.opened -= len(idle)
        for conn in idle:
            await conn.close()
        if self.opened > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self.drained.wait()


class _Lease:
    """Pool.connection's context: a class rather than an @asynccontextmanager generator, which
    ends each use by raising and catching StopAsyncIteration (one or two a call)."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def __aenter__(self) -> LoopConnection:
        self.conn = await self.pool._acquire()
        return self.conn

    async def __aexit__(self, kind: type[BaseException] | None, error: object, trace: object) -> None:
        await self.pool._give_back(self.conn, healthy=kind is None)


_last: tuple = (None, None)  # (event loop, its Pool): the usual lookup, without the weak mapping


def pool() -> Pool:
    global _last
    loop = asyncio.get_running_loop()
    if _last[0] is loop:
        return _last[1]
    found = _pools.get(loop)
    if found is None:
        found = _pools[loop] = Pool(settings.GATEWAY_ACCOUNTING_THREADS)
    _last = (loop, found)
    return found


async def pool_close() -> None:
    """Closes this event loop's connections, waiting briefly for those in use (shutdown, and tests
    before the database is dropped)."""
    global _last
    found = _pools.pop(asyncio.get_running_loop(), None)
    _last = (None, None)
    if found is not None:
        await found.close()


async def admit(
    *,
    allocation_id: str,
    counter_id: int,
    token_cap: int | None,
    cost_cap: Decimal | None,
    est_tokens: int,
    est_cost: Decimal | None,
    request_id: str,
    now: dt.datetime,
    context: dict | None = None,
    reservation_id: uuid.UUID | None = None,
    groups: Sequence[Budget] = (),
    period: dt.date | None = None,
    generation: int | None = None,
) -> Admission | None:
    """ledger.admit's one-statement path with a known counter id; None when not admitted (a cap's
    guard, or `generation` no longer the current auth generation: admit_statement)."""
    cost = est_cost if est_cost is not None else Decimal(0)
    reservation = reservation_row(
        request_id=request_id, tokens=est_tokens, cost=cost, now=now, context=context, reservation_id=reservation_id
    )
    caps = _Caps(str(allocation_id), counter_id, token_cap, cost_cap, est_cost is not None, generation)
    found = pool()
    if groups:
        async with found.connection() as conn:
            return await _admit_on(conn, caps, reservation, groups=groups, period=period)
    admissions = found.admissions
    if counter_id in admissions.sent or (not found.idle and found.opened >= found.size):
        # This counter's statement is in the database (this one would only wait for its row lock
        # there), or every connection is busy: admitted with the calls of this counter waiting too.
        return await admissions.add(caps, reservation)
    admissions.sent.add(counter_id)
    try:
        async with found.connection() as conn:
            return await _admit_on(conn, caps, reservation)
    finally:
        admissions.release(counter_id)


@quick_init
@dataclasses.dataclass(frozen=True)
class _Caps:
    """What an admission's guard is made of: the counter and the caps that hold the call."""

    allocation_id: str
    counter_id: int
    token_cap: int | None
    cost_cap: Decimal | None
    priced: bool
    generation: int | None = None  # the auth generation the call's caches were read under


async def _admit_on(
    conn: LoopConnection,
    caps: _Caps,
    reservation: dict,
    *,
    groups: Sequence[Budget] = (),
    period: dt.date | None = None,
) -> Admission | None:
    """One call's admission statement on `conn`: its reservation, or None when not admitted."""
    sql, params = admit_statement(
        allocation_id=caps.allocation_id,
        counter_id=caps.counter_id,
        token_cap=caps.token_cap,
        cost_cap=caps.cost_cap,
        priced=caps.priced,
        reservation=reservation,
        groups=groups,
        period=period,
        generation=caps.generation,
    )
    try:
        result = await conn.run_statement(native(sql), params, prepare=_prepare())
    except psycopg.DatabaseError as error:
        # Undone whole (a group reserved without its allocation, a stale counter id): a miss
        # like any guard's, on a connection still sound (kept in the pool), and the thread path decides.
        if admission_missed(error):
            return None
        raise
    if result.command_tuples is None or result.command_tuples <= 0:
        return None
    # A statement that returns the group counters held has columns; NULL there: not admitted.
    if result.nfields:
        found = conn.rows(result)[0][0]
        if found is None:
            return None
        held = tuple(found)
    else:
        held = ()
    return _admission(caps, reservation, tuple(g.id for g in groups), held)


def _admission(caps: _Caps, reservation: dict, groups: tuple[str, ...] = (), held: tuple[int, ...] = ()) -> Admission:
    return Admission(reservation["id"], caps.counter_id, reservation["tokens"], reservation["cost"], groups, held)


def generation_begin() -> asyncio.Future:
    """The current auth generation (lib.cache), None when it was never set (the thread path sets
    it): a read already started when this returns, shared with every caller of this event loop
    waiting for one (SharedReads). Errors of the database propagate."""
    return pool().generation_reads.begin()


async def counter_read(counter_id: int) -> tuple[int, int, Decimal, Decimal] | None:
    """(tokens used, tokens reserved, cost used, cost reserved) of a counter row, or None when it is
    gone: one prepared statement, as an admission is one."""
    async with pool().connection() as conn:
        rows = conn.rows(await conn.run_statement(native(COUNTER_READ), (counter_id,), prepare=_prepare()))
    return rows[0] if rows else None  # type: ignore[return-value]


async def counters_read(
    counter_id: int, *, group_ids: Sequence[str], period: dt.date
) -> tuple[tuple[int, int, Decimal, Decimal] | None, dict[str, tuple[int, tuple[int, int, Decimal, Decimal]]]]:
    """counter_read's row of an allocation counter (None when gone) and the counters of `group_ids`
    in `period`, by group id: (counter id, its row), a group without a row absent. One statement."""
    params = (counter_id, "{" + ",".join(group_ids) + "}", period)
    async with pool().connection() as conn:
        rows = conn.rows(await conn.run_statement(native(COUNTERS_READ), params, prepare=_prepare()))
    own = next((tuple(r[2:]) for r in rows if r[0] is None), None)
    return own, {str(r[0]): (r[1], tuple(r[2:])) for r in rows if r[0] is not None}  # type: ignore[misc]


async def settle(
    *,
    admission: Admission,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: dt.datetime,
    alone: bool = False,
    billed: Bill | None = None,
) -> int | None:
    """ledger.settle's one-statement path; returns the call record's id, or None when the
    reservation was settled before (by the sweeper). Settlements that meet here while the
    connections are busy are written together (_Settlements). `alone`: the caller knows no other
    call of its process in flight (one call at a time): with the database idle too, its statement
    is written at once, in the caller's step (_Settlements.write_alone). `billed`: the call's bill
    when its caller made it (statements.settle_values)."""
    values, cost = settle_values(
        record=record, usage=usage, price=price, now=now, groups=admission.groups, billed=billed
    )
    settlement = Settlement(values, admission, usage.total_tokens, cost or Decimal(0))
    settlements = pool().settlements
    if alone and settlements.alone():
        return await settlements.write_alone(settlement)
    return await settlements.add(settlement)


class _Settlements:
    """Group commit for settlements. A settlement starts a writer when fewer than the pool's size
    are at work; a writer takes every settlement waiting at that moment (up to MAX_BATCH) into one
    statement, then the next ones, until none wait. So an idle process writes each at once, and a
    busy one (calls finishing together) writes several per statement and per commit: less client
    CPU per call than one statement each, and fewer transactions for PostgreSQL. The records still
    exist before any caller's response is sent: each caller waits for its own statement. A failed
    statement fails every settlement in it (none is written: it is one statement); their callers
    then settle on the thread path, which checks first for the record.

    The settlement of a call alone in its process (its caller says so: no other call in flight)
    that finds the database idle too (no writer at work, every connection idle) is written by its
    caller in the caller's own step (`write_alone`): the statement leaves before the caller first
    yields, so what the caller schedules meanwhile (its metrics and call line) runs while
    PostgreSQL works, and no writer task costs a turn of the loop before the statement and another
    after it. With other calls in flight a settlement still waits that turn, in which those
    finishing with it join its statement."""

    MAX_BATCH = 64

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.waiting: list[tuple[Settlement, asyncio.Future]] = []
        self.writers: set[asyncio.Task] = set()  # a reference to each until it ends
        self.at_work = 0  # writers that have not yet seen `waiting` empty
        self.starting = 0  # writers started that have not yet taken what waits

    def add(self, settlement: Settlement) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((settlement, done))
        # A writer started and not yet run takes this one with the others: another would find
        # nothing left (a task for nothing, once per settlement of a busy process).
        if self.at_work < self.pool.size and not self.starting:
            self.at_work += 1
            self._start()
        return done

    def _start(self) -> None:
        """A writer task, already counted in `at_work` (named: a Task without a name formats one)."""
        self.starting += 1
        writer = asyncio.Task(self._write(), name="settlement writer")
        self.writers.add(writer)
        writer.add_done_callback(self.writers.discard)

    def alone(self) -> bool:
        """No settlement waiting or being written, and every open connection idle."""
        pool = self.pool
        return not self.at_work and not self.waiting and bool(pool.idle) and len(pool.idle) == pool.opened

    async def write_alone(self, settlement: Settlement) -> int | None:
        """One settlement's statement on an idle connection, sent in the caller's step (no suspension
        comes before it: the connection is idle and its lock free). It counts as a writer at work, so
        the settlements that meet meanwhile are batched as usual; those still waiting when it ends
        are handed to a writer task. Errors propagate to the caller, as `add`'s future gives them."""
        self.at_work += 1
        try:
            sql, params = settle_statement([settlement])
            async with self.pool.connection() as conn:
                rows = conn.rows(await conn.run_statement(native(sql), params, prepare=_prepare()))
        finally:
            if self.waiting and not self.starting:
                self._start()  # this one's place in `at_work` goes to the writer of those waiting
            else:
                self.at_work -= 1
        return next((record_id for n, record_id in rows if n == 1), None)

    async def _write(self) -> None:
        self.starting -= 1
        try:
            await self._write_waiting()
        finally:
            # Counted down in the same step that found `waiting` empty (a done-callback would run a
            # step later, and a settlement added in between would find no writer and wait forever).
            self.at_work -= 1

    async def _write_waiting(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[: self.MAX_BATCH], self.waiting[self.MAX_BATCH :]
            try:
                sql, params = settle_statement([s for s, _ in batch])
                async with self.pool.connection() as conn:
                    result = await conn.run_statement(native(sql), params, prepare=_prepare())
                    ids: dict[int, int] = dict(conn.rows(result))  # n -> record id; absent: settled before
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("settlement cancelled"))
                if not isinstance(exc, Exception):
                    raise
            else:
                for n, (_, done) in enumerate(batch, 1):
                    if not done.done():
                        done.set_result(ids.get(n))


class _Admissions:
    """Group commit for admissions. Admissions of one allocation counter all take its row's lock
    until their commit, so a burst of them (calls starting together) runs one statement and one
    commit after another however many connections send them. So one admission statement of a
    counter is in the database at a time (`sent`): an admission of a call counted toward no group
    that arrives while its counter's statement is there, or while every connection is busy, waits
    here with the others of the same counter and caps, even with a connection idle (there it would
    only wait for the row's lock); calls of other counters do not wait for it. When the statement
    is answered (or a connection comes free), one statement admits all of those waiting at once
    (admit_many_statement: all or none, exactly when admitting them one by one would admit every
    one). When it does not match (a cap near), each of them takes its own statement on that
    connection, in order, as they would have. Each caller still waits for the statement that holds
    its reservation, so its admission is committed before its call goes upstream; a caller
    cancelled while it waits is left out of the statement; a failed statement fails every
    admission still waiting on it (their callers take the thread path, which looks for what may
    have committed)."""

    MAX_BATCH = 64

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.waiting: dict[_Caps, list[tuple[dict, asyncio.Future]]] = {}
        self.sent: set[int] = set()  # counters with an admission statement in the database (or its writer on the way)
        self.writers: set[asyncio.Task] = set()  # a reference to each until it ends

    def add(self, caps: _Caps, reservation: dict) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        waiting = self.waiting.get(caps)
        if waiting is None:
            waiting = self.waiting[caps] = []
            if caps.counter_id not in self.sent:
                self.sent.add(caps.counter_id)
                self._start(caps)
        waiting.append((reservation, done))
        return done

    def release(self, counter_id: int) -> None:
        """The counter's statement is answered: the next of its callers waiting get their writer."""
        self.sent.discard(counter_id)
        for caps in self.waiting:
            if caps.counter_id == counter_id:
                self.sent.add(counter_id)
                self._start(caps)
                return

    def _start(self, caps: _Caps) -> None:
        """A writer task for `caps`, its counter already in `sent` (released when the writer ends)."""
        writer = asyncio.Task(self._write(caps), name="admission writer")
        self.writers.add(writer)
        writer.add_done_callback(self.writers.discard)

    def _take(self, caps: _Caps) -> list[tuple[dict, asyncio.Future]]:
        """What waits for `caps` now, its callers that left (cancelled) let go (up to MAX_BATCH; the
        rest waits for the next statement of the counter)."""
        batch = [(r, done) for r, done in self.waiting.pop(caps, ()) if not done.done()]
        if len(batch) > self.MAX_BATCH:
            batch, self.waiting[caps] = batch[: self.MAX_BATCH], batch[self.MAX_BATCH :]
        return batch

    async def _write(self, caps: _Caps) -> None:
        batch: list[tuple[dict, asyncio.Future]] = []
        try:
            async with self.pool.connection() as conn:
                batch = self._take(caps)  # everything that waited for this connection
                if len(batch) > 1 and await self._admit_all(conn, caps, batch):
                    return
                for reservation, done in batch:  # alone, or a batch whose guard did not match
                    if done.done():
                        continue  # its caller left
                    admitted = await _admit_on(conn, caps, reservation)
                    if not done.done():
                        done.set_result(admitted)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller still waiting
            for _, done in batch or self._take(caps):
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("admission cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.release(caps.counter_id)

    async def _admit_all(self, conn: LoopConnection, caps: _Caps, batch: list[tuple[dict, asyncio.Future]]) -> bool:
        sql, params = admit_many_statement(
            allocation_id=caps.allocation_id,
            counter_id=caps.counter_id,
            token_cap=caps.token_cap,
            cost_cap=caps.cost_cap,
            priced=caps.priced,
            reservations=[reservation for reservation, _ in batch],
            generation=caps.generation,
        )
        result = await conn.run_statement(native(sql), params, prepare=_prepare())
        if result.command_tuples != len(batch):  # 0: the guard did not match, nothing written
            return False
        for reservation, done in batch:
            if not done.done():
                done.set_result(_admission(caps, reservation))
        return True
