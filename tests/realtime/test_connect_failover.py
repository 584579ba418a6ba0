"""Realtime fails over on connect: a deployment whose handshake fails or is refused is stepped
around; the session is served by the next and its one record names it and the attempts."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from allocations.deployments import deployment_create
from allocations.models import Deployment
from allocations.services import provider_create
from gateway_project.asgi import application

from .conftest import PROVIDER_KEY, TOKEN_PRICE, realtime_world, session_records
from .test_session import closed_with, next_event, turn

pytestmark = pytest.mark.django_db(transaction=True)


def with_backup(world, fake_upstream) -> Deployment:
    backup_provider = provider_create(
        name=f"rt-backup-{world.slug}", kind="openai", base_url=fake_upstream.base_url, api_key=PROVIDER_KEY
    )
    return deployment_create(model=world.allocation.model, provider=backup_provider, upstream_name="gpt-rt", priority=1)


@pytest.mark.parametrize("first", ["unreachable", "busy"])
async def test_a_session_fails_over_on_connect(fake_upstream, first):
    if first == "unreachable":
        world = await database_sync_to_async(realtime_world)(None, base_url="http://127.0.0.1:9/v1", price=TOKEN_PRICE)
    else:
        world = await database_sync_to_async(realtime_world)(fake_upstream, upstream_name="busy", price=TOKEN_PRICE)
    backup = await database_sync_to_async(with_backup)(world, fake_upstream)
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    connected, _ = await comm.connect()
    assert connected
    assert (await next_event(comm))["type"] == "session.created"
    await turn(comm)
    await comm.disconnect()
    [record] = await session_records(world.allocation)
    assert (record.attempts, record.deployment_id) == (2, backup.pk)
    assert record.cost_usd > 0  # billed once, from the deployment that served


async def test_every_deployment_failing_closes_1011_with_the_attempts_recorded(fake_upstream):
    world = await database_sync_to_async(realtime_world)(None, base_url="http://127.0.0.1:9/v1", price=TOKEN_PRICE)
    comm = WebsocketCommunicator(
        application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {world.key}".encode())]
    )
    await comm.connect()
    assert (await closed_with(comm))["code"] == 1011
    [record] = await session_records(world.allocation)
    assert (record.outcome, record.attempts) == ("upstream_error", 1)
