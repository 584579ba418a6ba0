"""Realtime sessions and group budgets (SPEC 10, SPEC 6's watch): a session is watched against the
caps of its member's groups like its allocation's, and one whose member loses the model is closed."""

import json
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.utils import timezone

from allocations.groups import group_create, group_members_change, group_update, model_access_update
from quota.models import GroupUsageCounter
from quota.periods import period_start_date

from .conftest import TOKEN_PRICE, TURN_COST, realtime_world, session_records
from .test_session import closed_with, open_session, send, turn

pytestmark = pytest.mark.django_db(transaction=True)


def _group(world, **caps):
    group = group_create(data={"name": "Voice team", "slug": "voice", **caps})
    group_members_change(group=group, add=[world.allocation.member.username])
    return group


async def test_a_group_cost_cap_reached_mid_session_closes_it_within_one_response(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)  # the allocation has no cap
    group = await sync_to_async(_group)(world, quota_cost_usd_per_month="0.01")  # 2 turns under it, the 3rd over
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
    assert (closed["code"], closed["reason"]) == (1008, "group_cost_quota_exceeded")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("cost_exceeded", "rejected_group_cost_quota_exceeded")
    assert Decimal("0.01") <= record.cost_usd <= Decimal("0.01") + TURN_COST
    assert [str(g) for g in record.group_ids] == [str(group.pk)]
    forwarded = [f for f in fake_upstream.received if '"response.create"' in f]
    assert len(forwarded) == 3
    counter = await GroupUsageCounter.objects.aget(group=group, period_start=period_start_date(timezone.now()))
    assert (counter.cost_used, counter.cost_reserved, counter.tokens_reserved) == (record.cost_usd, 0, 0)


async def test_a_group_cap_set_during_a_session_below_its_spend_closes_it(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    group = await sync_to_async(_group)(world)  # no budget yet: the session holds nothing on the group
    comm = await open_session(world)
    await turn(comm)
    await turn(comm)
    await sync_to_async(group_update)(group=group, changes={"quota_tokens_per_month": 100})
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "group_quota_exceeded")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome) == ("quota_exceeded", "rejected_group_quota_exceeded")
    assert record.cost_usd == 2 * TURN_COST


async def test_a_session_whose_member_loses_the_model_is_closed_model_forbidden(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    comm = await open_session(world)
    await turn(comm)

    def restrict():
        group_create(data={"name": "Others", "slug": "others"})
        model_access_update(
            model=world.allocation.model, changes={"access": "restricted", "allowed_groups": ["others"]}
        )

    await sync_to_async(restrict)()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "model_forbidden")
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.outcome, record.cost_usd) == ("revoked", "rejected_model_forbidden", TURN_COST)


async def test_a_session_of_a_member_whose_group_is_at_its_cap_is_refused(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    await sync_to_async(_group)(world, quota_cost_usd_per_month="0")
    from .test_handshake import communicator

    comm = communicator(f"model={world.slug}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "group_cost_quota_exceeded")
    [record] = await session_records(world.allocation)
    assert record.outcome == "rejected_group_cost_quota_exceeded"


@pytest.mark.parametrize("warm", [True, False])
async def test_the_gate_decides_a_group_cap_from_the_warm_state_as_the_thread_check_would(
    fake_upstream, monkeypatch, warm
):
    """No watch tick runs (its first is an hour away), so the reservation on the group's counter
    never grows: the gate alone must see the group's cap crossed, from the counter and what the
    session used since. Warm, it decides without the watch's thread-path check (the key snapshot
    carries the member's groups and caps); without a warm snapshot it falls back to that check,
    with the same answer."""
    from realtime import services, watch

    monkeypatch.setattr(watch, "TICK_S", 3600)
    checks = []
    session_watch = services.session_watch
    monkeypatch.setattr(services, "session_watch", lambda **kw: checks.append(kw) or session_watch(**kw))
    if not warm:
        monkeypatch.setattr(watch, "key_scope_cached", lambda *args, **kwargs: None)
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)  # the allocation has no cap
    group = await sync_to_async(_group)(world, quota_cost_usd_per_month="0.01")  # 2 turns under it, the 3rd over
    comm = await open_session(world)
    for _ in range(3):
        await turn(comm)
    await send(comm, {"type": "response.create"})
    closed = await closed_with(comm)
    assert (closed["code"], closed["reason"]) == (1008, "group_cost_quota_exceeded")
    assert len([f for f in fake_upstream.received if '"response.create"' in f]) == 3
    [record] = await session_records(world.allocation)
    assert (record.close_reason, record.cost_usd) == ("cost_exceeded", 3 * TURN_COST)
    assert len(checks) == (0 if warm else 4)
    counter = await GroupUsageCounter.objects.aget(group=group, period_start=period_start_date(timezone.now()))
    assert (counter.cost_used, counter.cost_reserved) == (3 * TURN_COST, 0)
