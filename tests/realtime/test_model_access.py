"""Model access at the realtime handshake (SPEC 10, step 5a): a member who may not use the model
is closed 1008 `model_forbidden`, recorded `rejected_model_forbidden`, and nothing reaches the
upstream; an allowed member's session opens."""

import pytest
from channels.db import database_sync_to_async as sync_to_async

from allocations.groups import group_create, group_members_change, model_access_update

from .conftest import TOKEN_PRICE, realtime_world, session_records
from .test_handshake import closed_with, communicator

pytestmark = pytest.mark.django_db(transaction=True)


def _restrict(world, *, member_in_group: bool) -> None:
    group = group_create(data={"name": "Voice", "slug": "voice"})
    if member_in_group:
        group_members_change(group=group, add=[world.allocation.member.username])
    model_access_update(model=world.allocation.model, changes={"access": "restricted", "allowed_groups": ["voice"]})


async def test_a_forbidden_model_closes_1008_model_forbidden_and_is_recorded(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    await sync_to_async(_restrict)(world, member_in_group=False)
    comm = communicator(f"model={world.slug}", key=world.key)
    await comm.connect()
    close = await closed_with(comm)
    assert (close["code"], close["reason"]) == (1008, "model_forbidden")
    [record] = await session_records(world.allocation)
    assert (record.outcome, record.error_code, record.cost_usd) == ("rejected_model_forbidden", "model_forbidden", None)
    assert fake_upstream.handshakes == []


async def test_a_member_of_an_allowed_group_opens_a_session(fake_upstream):
    world = await sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    await sync_to_async(_restrict)(world, member_in_group=True)
    comm = communicator(f"model={world.slug}", key=world.key)
    connected, _ = await comm.connect()
    assert connected
    first = await comm.receive_json_from(timeout=10)
    assert first["type"] == "session.created"
    await comm.disconnect()
    assert len(fake_upstream.handshakes) == 1
