"""A realtime session end to end in process (WebsocketCommunicator) against the fake upstream:
relay, metering, the watch and every close path, each with its single call record."""

import asyncio
import base64
import json
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from allocations.models import ApiKey
from allocations.services import (
    allocation_pause,
    allocation_revoke,
    allocation_update,
    api_key_revoke,
    member_set_active,
)
from gateway_project.asgi import application
from quota import ledger
from quota.models import Reservation, UsageCounter
from quota.periods import period_start_date

from .conftest import PROVIDER_KEY, TOKEN_PRICE, TURN_COST, realtime_world, session_records
from .fake_upstream import CANCELLED_USAGE

pytestmark = pytest.mark.django_db(transaction=True)


async def open_session(world, *, subprotocols=None) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application,
        f"/v1/realtime?model={world.slug}",
        headers=[(b"authorization", f"Bearer {world.key}".encode())],
        subprotocols=subprotocols,
    )
    connected, _ = await comm.connect()
    assert connected
    assert (await next_event(comm))["type"] == "session.created"
    return comm


async def next_event(comm) -> dict:
    message = await comm.receive_output(timeout=10)
    assert message["type"] == "websocket.send", message
    return json.loads(message["text"])


async def send(comm, event: dict) -> None:
    await comm.send_to(text_data=json.dumps(event))


async def turn(comm) -> list[dict]:
    """One response: response.create → events up to response.done."""
    await send(comm, {"type": "response.create"})
    events = []
    while not events or events[-1]["type"] != "response.done":
        events.append(await next_event(comm))
    return events


async def closed_with(comm) -> dict:
    while True:
        message = await comm.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            return message


def pcm_seconds(seconds: int) -> list[str]:
    """`seconds` of 24 kHz pcm16 mono silence as base64 chunks of 10 s."""
    chunk = base64.b64encode(bytes(24000 * 2 * 10)).decode()
    return [chunk] * (seconds // 10)


# --- relay ------------------------------------------------------------------------------------


async def test_frames_are_relayed_both_ways_unchanged_and_the_key_never_shows(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream)
    comm = await open_session(world)
    odd = '{"type":  "session.update",   "session": {"instructions": "héllo ☃", "x": [1,2]}}'
    await comm.send_to(text_data=odd)
    await comm.send_to(bytes_data=b"\x00\x01binary\xff")
    updated = await comm.receive_output(timeout=10)
    echoed = await comm.receive_output(timeout=10)
    assert fake_upstream.received[:2] == [odd, b"\x00\x01binary\xff"]
    assert json.loads(updated["text"])["session"]["instructions"] == "héllo ☃"
    assert echoed == {"type": "websocket.send", "bytes": b"\x00\x01binary\xff"}
    await send(comm, {"type": "test.close"})
    close = await closed_with(comm)
    assert (close["code"], close.get("reason")) == (1000, "bye")
    assert world.key not in json.dumps(fake_upstream.handshakes[-1].headers)
    assert fake_upstream.handshakes[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("upstream_closed", "success")


async def test_a_frame_over_the_size_bound_closes_1009_and_is_recorded(fake_upstream, settings):
    settings.GATEWAY_REALTIME_MAX_FRAME_BYTES = 1024
    world = await database_sync_to_async(realtime_world)(fake_upstream)
    comm = await open_session(world)
    await comm.send_to(text_data=json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 2000}))
    close = await closed_with(comm)
    assert close["code"] == 1009
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.error_code) == ("client_abort", "request_too_large")


# --- metering ---------------------------------------------------------------------------------


async def test_two_turns_are_billed_once_at_the_price_of_the_reported_usage(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)
    await turn(comm)
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.outcome, record.close_reason, record.is_stream) == ("success", "normal", True)
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (200, 100, 40)
    assert (record.audio_input_tokens, record.audio_output_tokens) == (80, 60)
    assert record.cost_usd == 2 * TURN_COST
    counter = await database_sync_to_async(UsageCounter.objects.get)(allocation=world.allocation)
    assert (counter.cost_used, counter.cost_reserved, counter.tokens_reserved, counter.calls) == (
        2 * TURN_COST,
        0,
        0,
        1,
    )
    assert not await database_sync_to_async(Reservation.objects.exists)()


@pytest.mark.parametrize(
    ("unit", "price", "quantity", "cost"),
    [("minute", "0.017", Decimal(2), Decimal("0.034")), ("second", "0.0003", Decimal(90), Decimal("0.027"))],
)
async def test_a_time_priced_model_bills_the_appended_audio_rounded_up_to_whole_units(
    fake_upstream, unit, price, quantity, cost
):
    world = await database_sync_to_async(realtime_world)(
        fake_upstream, price={"unit": unit, "price_per_unit": Decimal(price)}
    )
    comm = await open_session(world)
    for chunk in pcm_seconds(90):
        await send(comm, {"type": "input_audio_buffer.append", "audio": chunk})
    await send(comm, {"type": "input_audio_buffer.commit"})
    assert (await next_event(comm))["type"] == "input_audio_buffer.committed"
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.quantity, record.unit, record.cost_usd) == (quantity, unit, cost)


async def test_the_audio_format_of_the_session_sets_the_duration(fake_upstream):
    world = await database_sync_to_async(realtime_world)(
        fake_upstream, price={"unit": "second", "price_per_unit": Decimal("0.001")}
    )
    comm = await open_session(world)
    await send(comm, {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
    await next_event(comm)
    # 8 kHz, 1 byte per sample: 80,000 bytes are 10 s (they would be 1.67 s of 24 kHz pcm16).
    await send(comm, {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(80000)).decode()})
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.quantity, record.cost_usd) == (10, Decimal("0.01"))


# --- watch ------------------------------------------------------------------------------------


def _revoke_key(world):
    api_key_revoke(key=ApiKey.objects.get(member=world.allocation.member))


@pytest.mark.parametrize(
    ("action", "reason", "outcome"),
    [
        (lambda w: allocation_revoke(allocation=w.allocation), "allocation_revoked", "rejected_revoked"),
        (lambda w: allocation_pause(allocation=w.allocation), "allocation_paused", "rejected_paused"),
        (
            lambda w: member_set_active(member=w.allocation.member, is_active=False),
            "unauthorized",
            "rejected_unauthenticated",
        ),
        (_revoke_key, "unauthorized", "rejected_unauthenticated"),
    ],
    ids=["revoke", "pause", "disable-member", "revoke-key"],
)
async def test_a_change_mid_session_closes_it_with_1008_and_bills_what_accrued(fake_upstream, action, reason, outcome):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)
    await database_sync_to_async(action)(world)
    close = await closed_with(comm)  # the watch closes it on its own (generous timeout, no timing)
    assert (close["code"], close["reason"]) == (1008, reason)
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.error_code) == ("revoked", outcome, reason)
    assert record.cost_usd == TURN_COST


async def test_the_cost_cap_reached_mid_session_closes_it_within_one_response_of_the_cap(fake_upstream):
    cap = Decimal("0.01")  # 2 turns stay under it, the 3rd crosses it
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE, cost_cap=cap)
    comm = await open_session(world)
    closed = None
    for _ in range(10):
        await send(comm, {"type": "response.create"})
        message = await comm.receive_output(timeout=10)
        while message["type"] == "websocket.send" and json.loads(message["text"])["type"] != "response.done":
            message = await comm.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            closed = message
            break
    closed = closed or await closed_with(comm)
    assert (closed["code"], closed["reason"]) == (1008, "cost_quota_exceeded")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("cost_exceeded", "rejected_cost_quota_exceeded")
    assert cap <= record.cost_usd <= cap + TURN_COST
    forwarded = [f for f in fake_upstream.received if '"response.create"' in f]
    assert len(forwarded) == 3


@pytest.mark.parametrize("warm", [True, False])
async def test_the_gate_counts_what_the_session_used_since_its_reservation_last_grew(fake_upstream, monkeypatch, warm):
    """No watch tick runs (its first is an hour away), so the reservation never grows: the gate
    alone must see the cap crossed, from the counter and what the session used since. Warm, it
    decides without the watch's thread-path check; without a warm key snapshot it falls back to it."""
    from realtime import services, watch

    monkeypatch.setattr(watch, "TICK_S", 3600)
    checks = []
    session_watch = services.session_watch
    monkeypatch.setattr(services, "session_watch", lambda **kw: checks.append(kw) or session_watch(**kw))
    if not warm:
        monkeypatch.setattr(watch, "key_scope_cached", lambda *args, **kwargs: None)
    cap = Decimal("0.01")  # 2 turns stay under it, the 3rd crosses it
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE, cost_cap=cap)
    comm = await open_session(world)
    for _ in range(3):
        await turn(comm)
    await send(comm, {"type": "response.create"})
    closed = await closed_with(comm)
    assert (closed["code"], closed["reason"]) == (1008, "cost_quota_exceeded")
    assert len([f for f in fake_upstream.received if '"response.create"' in f]) == 3
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("cost_exceeded", 3 * TURN_COST)
    assert len(checks) == (0 if warm else 4)


async def test_two_parallel_sessions_of_one_allocation_stop_together_at_the_cap(fake_upstream):
    cap = Decimal("0.01")
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE, cost_cap=cap)
    first, second = await open_session(world), await open_session(world)
    await turn(first)
    await turn(second)  # together: 2 turns, under the cap
    await turn(first)  # 3 turns: the allocation is over the cap; both sessions must go
    closes = await asyncio.gather(closed_with(first), closed_with(second))
    assert [(c["code"], c["reason"]) for c in closes] == [(1008, "cost_quota_exceeded")] * 2
    records = await session_records(world.allocation, count=2)
    assert sorted(r.cost_usd for r in records) == [TURN_COST, 2 * TURN_COST]
    total = sum(r.cost_usd for r in records)
    assert cap <= total <= cap + TURN_COST
    counter = await database_sync_to_async(UsageCounter.objects.get)(
        allocation=world.allocation, period_start=period_start_date(timezone.now())
    )
    assert (counter.cost_used, counter.cost_reserved) == (total, 0)


async def test_a_session_of_an_allocation_already_at_its_cap_is_refused(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE, cost_cap=Decimal(0))
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "cost_quota_exceeded")


# --- upstream and client failures ---------------------------------------------------------------


async def test_an_upstream_drop_mid_response_closes_1011_and_bills_earlier_turns_plus_an_estimate(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="drop", price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "response.create"})
    assert (await next_event(comm))["type"] == "response.created"
    assert (await next_event(comm))["type"] == "response.text.delta"
    close = await closed_with(comm)
    assert close["code"] == 1011
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("upstream_error", "upstream_error")
    # No usage came; the relayed delta ("Hello there, how are you?", 25 chars) is estimated as 7 tokens.
    assert (record.output_tokens, record.estimated) == (7, True)


async def test_a_client_abort_mid_response_cancels_upstream_and_bills_the_final_usage(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="slow", price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "response.create"})
    assert (await next_event(comm))["type"] == "response.created"
    await comm.disconnect(code=1006, timeout=10)
    [record] = await session_records(world.allocation)
    assert any('"response.cancel"' in f for f in fake_upstream.received if isinstance(f, str))
    assert (record.close_reason, record.outcome) == ("client_abort", "client_cancelled")
    assert (record.input_tokens, record.output_tokens) == (
        CANCELLED_USAGE["input_tokens"],
        CANCELLED_USAGE["output_tokens"],
    )
    assert record.cost_usd == Decimal("0.00056")  # 100 × $4 + 10 × $16 per 1M


@pytest.mark.parametrize(("upstream", "code"), [("busy", 1013), ("broken", 1011)])
async def test_an_upstream_refusing_the_session_closes_1011_or_1013_and_bills_nothing(fake_upstream, upstream, code):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name=upstream, price=TOKEN_PRICE)
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await comm.connect()
    close = await closed_with(comm)
    assert close["code"] == code
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.input_tokens) == ("upstream_error", "upstream_error", 0)
    assert record.cost_usd in (None, 0)


async def test_an_unreachable_upstream_closes_1011_recorded_as_upstream_error(fake_upstream):
    world = await database_sync_to_async(realtime_world)(None, base_url="http://127.0.0.1:9/v1", price=TOKEN_PRICE)
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1011, "upstream_error")
    assert "127.0.0.1" not in close["reason"]
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("upstream_error", "upstream_error")
    assert not await database_sync_to_async(Reservation.objects.exists)()


# --- providers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_version", "path", "query"),
    [
        ("2024-10-01-preview", "/openai/realtime", {"api-version": "2024-10-01-preview", "deployment": "my-rt"}),
        ("", "/openai/v1/realtime", {"model": "my-rt"}),
    ],
    ids=["preview", "ga"],
)
async def test_azure_sessions_use_the_deployment_url_and_the_api_key_header(fake_upstream, api_version, path, query):
    world = await database_sync_to_async(realtime_world)(
        fake_upstream, provider_kind="azure", api_version=api_version, upstream_name="my-rt", price=TOKEN_PRICE
    )
    comm = await open_session(world)
    await turn(comm)
    await comm.disconnect(code=1000)
    handshake = fake_upstream.handshakes[-1]
    assert (handshake.path, handshake.query) == (path, query)
    assert handshake.headers["api-key"] == PROVIDER_KEY
    assert "authorization" not in handshake.headers
    [record] = await session_records(world.allocation)
    assert record.cost_usd == TURN_COST


async def test_the_simulated_provider_holds_a_deterministic_session():
    world = await database_sync_to_async(realtime_world)(None, provider_kind="simulated", price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "conversation.item.create", "item": {"content": [{"type": "input_text", "text": "hi"}]}})
    assert (await next_event(comm))["type"] == "conversation.item.created"
    events = await turn(comm)
    assert [e["type"] for e in events] == ["response.created", "response.text.delta", "response.done"]
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.input_tokens, record.output_tokens) == (6, 10)
    assert record.cost_usd == Decimal("0.000184")  # 6 × $4 + 10 × $16 per 1M


async def test_a_cost_cap_lowered_mid_session_below_the_spend_closes_it(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)  # no cap at first
    comm = await open_session(world)
    await turn(comm)
    await turn(comm)
    changes = {"quota_cost_usd_per_month": "0.005"}
    await database_sync_to_async(allocation_update)(allocation=world.allocation, changes=changes)
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "cost_quota_exceeded")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("cost_exceeded", 2 * TURN_COST)


async def test_the_token_quota_reached_mid_session_closes_it_with_quota_exceeded(fake_upstream):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE, token_cap=250)
    comm = await open_session(world)
    await turn(comm)  # 150 tokens
    await turn(comm)  # 300 ≥ 250
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "quota_exceeded")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.input_tokens + record.output_tokens) == (
        "quota_exceeded",
        "rejected_quota_exceeded",
        300,
    )


async def test_with_the_shared_cache_unreachable_a_revocation_still_closes_the_session(fake_upstream, settings):
    """The auth generation lives in PostgreSQL: Redis gone changes nothing for the watch."""
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    started = asyncio.get_running_loop().time()
    await database_sync_to_async(_revoke_key)(world)
    close = await closed_with(comm)
    assert asyncio.get_running_loop().time() - started < 2  # the bump seen, not the 5 s recheck
    assert (close["code"], close["reason"]) == (1008, "unauthorized")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("revoked", TURN_COST)


async def test_with_the_generation_unreadable_the_periodic_recheck_still_closes_on_a_revoked_key(
    fake_upstream, monkeypatch
):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)

    def unreadable():
        raise ConnectionError("the generation's read failed")

    monkeypatch.setattr(ledger, "generation_begin", unreadable)  # no bump can be seen any more
    await database_sync_to_async(_revoke_key)(world)
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "unauthorized")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("revoked", TURN_COST)


async def test_an_upstream_frame_over_the_size_bound_closes_the_client_with_1009(fake_upstream, settings):
    settings.GATEWAY_REALTIME_MAX_FRAME_BYTES = 1024
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="huge", price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "response.create"})
    close = await closed_with(comm)
    assert close["code"] == 1009
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("upstream_error", "upstream_error")
