"""Rate limits of realtime sessions: a session holds one call-in-flight slot for its life (over
max_parallel the handshake closes 1008 rate_limited), and each response.create counts as a request."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from allocations.services import allocation_update
from gateway_project.asgi import application

from .conftest import TOKEN_PRICE, realtime_world, session_records
from .test_session import closed_with, next_event, open_session, send, turn

pytestmark = pytest.mark.django_db(transaction=True)


async def limited_world(fake_upstream, **limits):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    await database_sync_to_async(allocation_update)(allocation=world.allocation, changes=limits)
    return world


async def test_a_session_over_max_parallel_closes_1008_rate_limited_and_the_slot_comes_back(fake_upstream):
    world = await limited_world(fake_upstream, max_parallel=1)
    first = await open_session(world)
    refused = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await refused.connect()
    close = await closed_with(refused)
    assert (close["code"], close["reason"]) == (1008, "rate_limited")
    await first.disconnect()
    records = await session_records(world.allocation, count=2)
    assert sorted(r.outcome for r in records) == ["rejected_rate_limited", "success"]
    again = await open_session(world)  # the first session gave its slot back when it closed
    await again.disconnect()


async def test_response_create_over_the_rpm_is_not_forwarded_and_the_client_is_told(fake_upstream):
    world = await limited_world(fake_upstream, rpm_limit=1)
    comm = await open_session(world)
    assert (await turn(comm))[-1]["type"] == "response.done"
    await send(comm, {"type": "response.create", "event_id": "evt-2"})
    error = await next_event(comm)
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["event_id"]) == ("rate_limited", "evt-2")
    assert sum('"response.create"' in frame for frame in fake_upstream.received) == 1
    await send(comm, {"type": "session.update", "session": {}})  # the session is still open
    assert (await next_event(comm))["type"] == "session.updated"
    await comm.disconnect()
    [record] = await session_records(world.allocation)
    assert record.outcome == "success"
