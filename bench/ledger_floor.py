"""The thin pass-through under daphne with the round trips a gateway call's guarantees require, for
the bench's `ledger_floor` target (bench/run.py --servers): what one call at a time cannot go
below, whatever the gateway's own Python costs.

Per JSON call, in the gateway's order: one PostgreSQL statement committed before the upstream is
called (a reservation's row: the admission is durable before the provider is asked; the gateway's
also guards on the auth generation, kept in PostgreSQL, so a warm unlimited call reads no Redis),
the thin app's upstream call, and one statement committed before the answer leaves (the
reservation deleted and a record's row inserted: the settlement before the answer,
docs/DECISIONS.md). Each statement is the smallest of its kind, one row, prepared, with the
commit's WAL flush as the server is configured; the gateway's statements do more (counters,
rollups, the record's columns). The statements go through the gateway's own event-loop connection
(quota.ledger.loop.LoopConnection, raw cursors, server-side prepared), so the client side costs
what the gateway's does. One connection, so the figures are for c = 1 only; whole answers only
(the body is held until the settlement commits).

  DATABASE_URL=… REDIS_URL=… (the gateway's settings) and thin_daphne's environment \
      .venv/bin/python -m gateway_project.serve --workers 1 -v 0 bench.ledger_floor:app
"""

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable

import django

from bench.thin_daphne import app as thin_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup()

from quota.ledger.loop import LoopConnection, native  # noqa: E402

_SETUP = (
    "CREATE TABLE IF NOT EXISTS bench_floor_hold (id uuid PRIMARY KEY, created_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_floor_record (id bigserial PRIMARY KEY, request uuid NOT NULL,"
    " started_at timestamptz NOT NULL, settled_at timestamptz NOT NULL)",
)
_ADMIT = native("INSERT INTO bench_floor_hold (id, created_at) VALUES (%s, now())")
_SETTLE = native(
    "WITH d AS (DELETE FROM bench_floor_hold WHERE id = %s RETURNING id, created_at)"
    " INSERT INTO bench_floor_record (request, started_at, settled_at) SELECT id, created_at, now() FROM d"
)


class _Link:
    def __init__(self) -> None:
        self.ready: asyncio.Future | None = None

    async def get(self) -> LoopConnection:
        if self.ready is None:
            self.ready = asyncio.ensure_future(self._open())
        return await self.ready

    @staticmethod
    async def _open() -> LoopConnection:
        conn = await LoopConnection.connect(os.environ["DATABASE_URL"], autocommit=True)
        for sql in _SETUP:
            await conn.execute(sql)
        return conn


_link = _Link()


async def _run(conn: LoopConnection, sql: str, hold: uuid.UUID) -> None:
    await conn.run_statement(sql, (hold,), prepare=True)


async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return await thin_app(scope, receive, send)
    conn = await _link.get()
    hold = uuid.uuid4()
    await _run(conn, _ADMIT, hold)
    held: list[dict] = []

    async def settle_then_send(message: dict) -> None:
        held.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            await _run(conn, _SETTLE, hold)
            for part in held:
                await send(part)

    await thin_app(scope, receive, settle_then_send)
