"""Handshake and preflight of /v1/realtime, in process with Channels' WebsocketCommunicator."""

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator

from allocations.models import ModelKind
from allocations.services import allocation_revoke, api_key_revoke
from gateway_project.asgi import application
from quota.models import CallRecord

from .conftest import PROVIDER_KEY, TOKEN_PRICE, realtime_world, session_records

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(query: str, *, key: str | None = None, subprotocols=None, headers=None):
    headers = list(headers or [])
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return WebsocketCommunicator(application, f"/v1/realtime?{query}", headers=headers, subprotocols=subprotocols)


async def closed_with(comm) -> dict:
    """The close the server sent, skipping any relayed frames before it."""
    while True:
        message = await comm.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            return message


async def test_a_bad_key_closes_1008_unauthorized_and_is_recorded(fake_upstream):
    await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator("model=whatever", key="sk-gw-not-a-real-key")
    connected, _ = await comm.connect()
    assert connected
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "unauthorized")
    record = await sync_to_async(CallRecord.objects.get)(endpoint="realtime")
    assert (record.outcome, record.error_code) == ("rejected_unauthenticated", "unauthorized")
    assert fake_upstream.handshakes == []


async def test_a_missing_key_closes_1008_unauthorized(fake_upstream):
    comm = communicator("model=x")
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "unauthorized")


async def test_a_key_in_the_query_string_is_refused_even_with_a_valid_bearer(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator(f"model={world.slug}&api_key={world.key}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "unauthorized")
    assert world.key not in close["reason"]
    assert fake_upstream.handshakes == []


async def test_a_revoked_allocation_closes_1008_with_its_code_and_is_recorded(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    await sync_to_async(allocation_revoke)(allocation=world.allocation)
    comm = communicator(f"model={world.slug}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "allocation_revoked")
    [record] = await session_records(world.allocation)
    assert (record.outcome, record.cost_usd) == ("rejected_revoked", None)


async def test_a_revoked_key_closes_1008_unauthorized(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream)
    from allocations.models import ApiKey

    key = await sync_to_async(ApiKey.objects.get)(member=world.allocation.member)
    await sync_to_async(api_key_revoke)(key=key)
    comm = communicator(f"model={world.slug}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "unauthorized")


async def test_a_chat_model_closes_1003_and_is_recorded_as_model_kind(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, kind=ModelKind.CHAT)
    comm = communicator(f"model={world.slug}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1003, "model_kind_mismatch")
    [record] = await session_records(world.allocation)
    assert record.outcome == "rejected_model_kind"
    assert fake_upstream.handshakes == []


async def test_a_model_outside_the_key_scope_closes_1008_model_mismatch(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator("model=other/model", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "model_mismatch")


async def test_the_browser_subprotocol_authenticates_and_the_server_answers_realtime_without_the_key(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator(f"model={world.slug}", subprotocols=["realtime", f"openai-insecure-api-key.{world.key}"])
    connected, subprotocol = await comm.connect()
    assert (connected, subprotocol) == (True, "realtime")
    created = json.loads(await comm.receive_from(timeout=10))
    assert created["type"] == "session.created"
    handshake = fake_upstream.handshakes[-1]
    assert handshake.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert world.key not in json.dumps(handshake.headers) + json.dumps(handshake.query)
    assert handshake.query == {"model": "gpt-rt"}
    await comm.disconnect()


async def test_without_model_in_the_url_the_first_session_update_names_it(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, upstream_name="gpt-4o-transcribe")
    comm = communicator("intent=transcription", key=world.key)
    await comm.connect()
    update = {"type": "session.update", "session": {"input_audio_transcription": {"model": world.slug}}}
    await comm.send_to(text_data=json.dumps(update))
    created = json.loads(await comm.receive_from(timeout=10))
    updated = json.loads(await comm.receive_from(timeout=10))
    assert (created["type"], updated["type"]) == ("session.created", "session.updated")
    # The upstream is told the upstream model name, never the gateway's slug.
    assert updated["session"]["input_audio_transcription"]["model"] == "gpt-4o-transcribe"
    assert fake_upstream.handshakes[-1].query == {"intent": "transcription"}
    await comm.send_to(text_data=json.dumps({"type": "input_audio_buffer.commit"}))
    events = [json.loads(await comm.receive_from(timeout=10)) for _ in range(2)]
    assert events[1]["type"] == "conversation.item.input_audio_transcription.completed"
    await comm.disconnect()
    [record] = await session_records(world.allocation)
    assert (record.input_tokens, record.output_tokens, record.close_reason) == (30, 5, "normal")


async def test_without_any_model_the_first_event_closes_1008_bad_request(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator("", key=world.key)
    await comm.connect()
    await comm.send_to(text_data=json.dumps({"type": "response.create"}))
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "bad_request")


async def test_an_oversized_first_frame_closes_1009_before_any_session(fake_upstream, settings):
    settings.GATEWAY_REALTIME_MAX_FRAME_BYTES = 64
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator("", key=world.key)
    await comm.connect()
    await comm.send_to(
        text_data=json.dumps({"type": "session.update", "session": {"model": world.slug, "x": "y" * 80}})
    )
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1009, "request_too_large")
    assert fake_upstream.handshakes == []


# --- a socket without ?model=: authenticated at connect, closed if it never names a model ----------


@pytest.mark.parametrize("key", ["sk-gw-" + "N" * 43, "not-even-a-key"])
async def test_a_bad_key_without_a_model_is_refused_at_connect_before_any_frame(fake_upstream, key):
    comm = communicator("", key=key)
    connected, _ = await comm.connect()
    assert connected
    close = await closed_with(comm)  # no frame sent: the close comes from the handshake alone
    assert (close["code"], close["reason"]) == (1008, "unauthorized")
    assert fake_upstream.handshakes == []


async def test_a_socket_that_never_names_a_model_is_closed_after_the_first_frame_timeout(fake_upstream, settings):
    settings.GATEWAY_REALTIME_FIRST_FRAME_S = 0.3
    world = await sync_to_async(realtime_world)(fake_upstream)
    comm = communicator("", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "bad_request")
    record = await sync_to_async(CallRecord.objects.get)(endpoint="realtime")
    assert (record.error_code, record.member_id) == ("bad_request", world.allocation.member_id)
    assert fake_upstream.handshakes == []


async def test_a_session_update_naming_the_model_in_time_opens_the_session(fake_upstream, settings):
    settings.GATEWAY_REALTIME_FIRST_FRAME_S = 0.5
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = communicator("", key=world.key)
    await comm.connect()
    await comm.send_to(text_data=json.dumps({"type": "session.update", "session": {"model": world.slug}}))
    assert json.loads(await comm.receive_from(timeout=10))["type"] == "session.created"
    await comm.send_to(text_data=json.dumps({"type": "x" * 10, "nested": json.loads("[" * 50 + "]" * 50)}))
    await asyncio.sleep(0.8)  # past the first-frame timeout: the open session is not closed by it
    await comm.send_to(text_data="[" * 100_000 + "]" * 100_000)  # deeper than the parser: relayed as opaque
    await comm.disconnect()
    [record] = await session_records(world.allocation)
    assert record.close_reason in ("normal", "client_abort") and record.error_code == ""


async def test_refused_keys_count_per_address_and_one_past_the_limit_closes_rate_limited_unrecorded(
    fake_upstream, settings
):
    if (left := 60 - time.time() % 60) < 15:  # the counts are per calendar minute
        await asyncio.sleep(left + 0.1)
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 2
    await sync_to_async(realtime_world)(fake_upstream)
    reasons = []
    for _ in range(4):
        comm = communicator("model=whatever", key="sk-gw-not-a-real-key")
        await comm.connect()
        reasons.append((await closed_with(comm))["reason"])
    assert reasons == ["unauthorized", "unauthorized", "rate_limited", "rate_limited"]
    outcomes = CallRecord.objects.filter(endpoint="realtime").values_list("outcome", flat=True)
    records = await sync_to_async(list)(outcomes)
    assert records == ["rejected_unauthenticated"] * 2  # past the limit: counted, not recorded
