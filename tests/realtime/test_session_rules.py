"""What a client may not change in an open realtime session: its model (a session.update naming
another model or transcription model is refused with an error event, and the session goes on),
and the rate of its responses (those the server starts by itself count like response.create)."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from allocations.services import allocation_update

from .conftest import TOKEN_PRICE, realtime_world, session_records
from .test_session import next_event, open_session, send, turn

pytestmark = pytest.mark.django_db(transaction=True)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not seen in time"
        await asyncio.sleep(0.01)


def forwarded(fake_upstream, kind: str) -> list[dict]:
    events = [json.loads(f) for f in fake_upstream.received if isinstance(f, str)]
    return [e for e in events if e.get("type") == kind]


@pytest.mark.parametrize(
    "session",
    [
        {"model": "gpt-4o-realtime-preview"},
        {"input_audio_transcription": {"model": "whisper-1"}},
        {"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}},
        {"model": None},
    ],
)
async def test_a_session_update_naming_another_model_is_refused_and_the_session_goes_on(fake_upstream, session):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "session.update", "event_id": "evt-m", "session": session})
    error = await next_event(comm)
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["event_id"]) == ("model_mismatch", "evt-m")
    assert forwarded(fake_upstream, "session.update") == []
    # The session's own model (by its slug) passes, rewritten to the upstream name; turns go on.
    own = {"model": world.slug, "input_audio_transcription": {"model": world.slug}}
    await send(comm, {"type": "session.update", "session": own})
    updated = await next_event(comm)
    assert updated["type"] == "session.updated"
    assert updated["session"] == {"model": "gpt-rt", "input_audio_transcription": {"model": "gpt-rt"}}
    assert (await turn(comm))[-1]["type"] == "response.done"
    await comm.disconnect()
    [record] = await session_records(world.allocation)
    assert record.outcome == "success"


async def test_responses_the_server_starts_by_itself_count_toward_the_rpm(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="vad", price=TOKEN_PRICE)
    await database_sync_to_async(allocation_update)(allocation=world.allocation, changes={"rpm_limit": 1})
    comm = await open_session(world)
    await send(comm, {"type": "input_audio_buffer.commit"})  # the turn ends: the server responds (1 of 1)
    kinds = [(await next_event(comm))["type"] for _ in range(4)]
    assert kinds == ["input_audio_buffer.committed", "response.created", "response.text.delta", "response.done"]
    await send(comm, {"type": "input_audio_buffer.commit"})  # a second server response: over the rpm
    events = [await next_event(comm) for _ in range(5)]
    assert [e["error"]["code"] for e in events if e["type"] == "error"] == ["rate_limited"]
    await until(lambda: forwarded(fake_upstream, "response.cancel"))  # the gateway cancelled it upstream
    await send(comm, {"type": "response.create", "event_id": "evt-3"})  # the client's own: refused too
    refused = await next_event(comm)
    assert (refused["type"], refused["error"]["code"]) == ("error", "rate_limited")
    assert forwarded(fake_upstream, "response.create") == []
    await comm.disconnect()
