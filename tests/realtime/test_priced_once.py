"""A realtime session is priced once when it settles: its record, its counters and its call line
carry that one bill's cost, on every way a session ends (the watch prices the reservation's growth
while the session relays; that is not its settlement)."""

from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from gateway_project.asgi import application
from quota.models import UsageCounter
from realtime.consumers import RealtimeConsumer
from tests.pricings import assert_priced_once, watch_pricings

from .conftest import TOKEN_PRICE, TURN_COST, realtime_world, session_records
from .test_session import closed_with, next_event, open_session, send, turn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def priced(monkeypatch):
    """(price, usage, cost) of each pricing (quota.pricing.cost_for, wherever it was imported) made
    once a session has begun to finish, and the cost of each call line (ops.observe.call_finished)."""
    seen = watch_pricings(monkeypatch)
    finish = RealtimeConsumer._do_finish

    async def finishing(self, *args, **kwargs):
        seen["pricings"].clear()  # the watch's pricings of the reservation's growth came before
        return await finish(self, *args, **kwargs)

    monkeypatch.setattr(RealtimeConsumer, "_do_finish", finishing)
    return seen


async def test_a_session_of_two_turns_is_priced_once_at_its_settlement(fake_upstream, priced):
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)
    await turn(comm)
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.input_tokens, record.output_tokens) == (200, 100)
    assert_priced_once(priced, record, 2 * TURN_COST)
    counter = await database_sync_to_async(UsageCounter.objects.get)(allocation=world.allocation)
    assert (counter.cost_used, counter.cost_reserved, counter.calls) == (2 * TURN_COST, 0, 1)


async def test_an_unpriced_session_is_recorded_without_a_cost_and_priced_once(fake_upstream, priced):
    world = await database_sync_to_async(realtime_world)(fake_upstream)
    comm = await open_session(world)
    await turn(comm)
    await comm.disconnect(code=1000)
    [record] = await session_records(world.allocation)
    assert (record.cost_usd, record.priced, record.price_version_id) == (None, False, None)
    assert record.input_tokens == 100
    assert_priced_once(priced, record, None)


async def test_a_session_cut_mid_response_is_priced_once_with_its_estimate(fake_upstream, priced):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="drop", price=TOKEN_PRICE)
    comm = await open_session(world)
    await send(comm, {"type": "response.create"})
    assert (await next_event(comm))["type"] == "response.created"
    assert (await next_event(comm))["type"] == "response.text.delta"
    assert (await closed_with(comm))["code"] == 1011
    [record] = await session_records(world.allocation)
    assert (record.output_tokens, record.estimated) == (7, True)
    assert_priced_once(priced, record, Decimal(7 * 16) / 1_000_000)


async def test_a_session_the_upstream_refused_is_priced_once_at_no_usage(fake_upstream, priced):
    world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="broken", price=TOKEN_PRICE)
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await comm.connect()
    assert (await closed_with(comm))["code"] == 1011
    [record] = await session_records(world.allocation)
    assert (record.input_tokens, record.output_tokens) == (0, 0)
    assert_priced_once(priced, record, record.cost_usd)
    assert record.cost_usd in (None, 0)
