"""/v1/realtime over a real socket: the gateway served by daphne, clients from `websockets` and the
official `openai` SDK, the fake upstream behind it; plus server shutdown and a killed worker."""

import asyncio
import datetime as dt
import json
import signal
import time
from decimal import Decimal

import pytest
import websockets
from channels.db import database_sync_to_async
from django.utils import timezone
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from allocations.models import ModelKind
from allocations.services import allocation_revoke
from quota.ledger import reservations_sweep
from quota.models import CallRecord, Reservation, UsageCounter
from realtime.services import LEASE_S

from .conftest import TOKEN_PRICE, TURN_COST, realtime_world, session_records, stop_daphne

pytestmark = pytest.mark.django_db(transaction=True)


def connect(server, world, *, query=None, bearer=True, subprotocols=None):
    headers = {"Authorization": f"Bearer {world.key}"} if bearer else {}
    return websockets.connect(
        f"{server.ws_url}?{query if query is not None else f'model={world.slug}'}",
        additional_headers=headers,
        subprotocols=subprotocols,
        open_timeout=10,
        proxy=None,
    )


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 10)


async def until_closed(ws) -> tuple[list, object]:
    """Every frame until the server's close; returns (frames, close frame)."""
    frames = []
    try:
        while True:
            frames.append(await ws.recv())
    except ConnectionClosed as closed:
        return frames, closed.rcvd


async def turn(ws) -> list[dict]:
    await ws.send(json.dumps({"type": "response.create"}))
    events = []
    while not events or events[-1]["type"] != "response.done":
        events.append(json.loads(await recv(ws)))
    return events


@pytest.mark.parametrize(("host", "status"), [("evil.example", b"403"), ("localhost", b"101")])
async def test_a_handshake_naming_a_host_the_gateway_does_not_serve_is_refused(daphne_server, host, status):
    reader, writer = await asyncio.open_connection("127.0.0.1", daphne_server.port)
    writer.write(
        b"GET /v1/realtime?model=x HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert head.split(b" ")[1] == status, head
    # Past the host check the consumer refuses the keyless session and records it; the test ends
    # once that record is written, so the database is not flushed under the server's write.
    expected = 1 if status == b"101" else 0
    deadline = time.monotonic() + 10
    while (count := await CallRecord.objects.acount()) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert count == expected


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [(ModelKind.REALTIME, 1008, "unauthorized"), (ModelKind.CHAT, 1003, "model_kind_mismatch")],
)
async def test_daphne_sends_the_reject_close_code_and_reason_on_the_wire(
    daphne_server, fake_upstream, kind, code, reason
):
    world = await database_sync_to_async(realtime_world)(fake_upstream, kind=kind)
    if reason == "unauthorized":
        world.key = "sk-gw-" + "x" * 43
    async with connect(daphne_server, world) as ws:
        _, close = await until_closed(ws)
    assert (close.code, close.reason) == (code, reason)


async def test_a_browser_style_session_over_daphne_relays_bills_and_never_shows_the_key(daphne_server, fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    subprotocols = ["realtime", f"openai-insecure-api-key.{world.key}"]
    async with connect(daphne_server, world, bearer=False, subprotocols=subprotocols) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await recv(ws))["type"] == "session.created"
        await ws.send(b"\x01\x02\x03")
        assert await recv(ws) == b"\x01\x02\x03"
        frames = [json.dumps(e) for e in await turn(ws) + await turn(ws)]
        await ws.close(1000)
    assert all(world.key not in f for f in frames)
    assert world.key not in json.dumps(fake_upstream.handshakes[-1].headers)
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.cost_usd) == ("normal", "success", 2 * TURN_COST)


async def test_a_revocation_closes_a_daphne_session_with_1008_and_bills_it(daphne_server, fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    async with connect(daphne_server, world) as ws:
        await recv(ws)
        await turn(ws)
        await database_sync_to_async(allocation_revoke)(allocation=world.allocation)
        _, close = await until_closed(ws)
    assert (close.code, close.reason) == (1008, "allocation_revoked")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("revoked", TURN_COST)


async def test_the_official_openai_sdk_realtime_client_works_unchanged(daphne_server, fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    client = AsyncOpenAI(
        api_key=world.key,
        base_url=f"http://127.0.0.1:{daphne_server.port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{daphne_server.port}/v1",
    )
    async with client.realtime.connect(model=world.slug) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        )
        await conn.response.create()
        seen = []
        async for event in conn:
            seen.append(event.type)
            if event.type == "response.done":
                break
    assert seen[0] == "session.created"
    assert "session.updated" in seen and seen[-1] == "response.done"
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("normal", TURN_COST)


async def test_a_server_shutdown_bills_and_records_every_open_session(own_daphne, fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    sockets = [await connect(own_daphne, world) for _ in range(2)]
    for ws in sockets:
        await recv(ws)
        await turn(ws)
    stop_daphne(own_daphne, signal.SIGTERM)
    records = await session_records(world.allocation, count=2)
    assert [(r.close_reason, r.outcome, r.cost_usd) for r in records] == [("shutdown", "gateway_error", TURN_COST)] * 2
    assert not await database_sync_to_async(Reservation.objects.exists)()
    for ws in sockets:
        _, close = await until_closed(ws)
        assert close.code == 1001


async def test_a_session_whose_worker_died_is_billed_once_by_the_sweeper(own_daphne, fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    ws = await connect(own_daphne, world)
    await recv(ws)
    await turn(ws)
    # The reservation carries the accrued usage once the watch has recorded it.
    await _until(lambda: Reservation.objects.filter(cost=TURN_COST).exists())
    stop_daphne(own_daphne, signal.SIGKILL)
    later = timezone.now() + dt.timedelta(seconds=LEASE_S + 1)
    assert await database_sync_to_async(reservations_sweep)(now=later) == 1
    assert await database_sync_to_async(reservations_sweep)(now=later) == 0
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.cost_usd) == ("shutdown", "gateway_error", TURN_COST)
    counter = await database_sync_to_async(UsageCounter.objects.get)(allocation=world.allocation)
    assert (counter.cost_used, counter.cost_reserved, counter.calls) == (TURN_COST, Decimal(0), 1)
    assert await database_sync_to_async(CallRecord.objects.count)() == 1
    await ws.close()


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await database_sync_to_async(predicate)():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)
