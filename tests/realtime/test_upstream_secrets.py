"""The provider key reaches the provider's handshake and nothing else: not a log line at DEBUG,
not the origin a redirecting upstream points to (HTTP relay and realtime alike)."""

import json
import os

import httpx
import pytest
import websockets
from aiohttp import web
from channels.db import database_sync_to_async
from websockets.exceptions import ConnectionClosed

from allocations.models import ModelKind, Provider
from allocations.services import provider_rotate_key
from tests.proxy.fake_upstream import UPSTREAM_KEY, serve_in_thread, start_fake_upstream

from .conftest import PROVIDER_KEY, TOKEN_PRICE, realtime_world, session_records, start_daphne, stop_daphne

pytestmark = pytest.mark.django_db(transaction=True)


class Redirector:
    """An upstream that answers every request with a redirect to `elsewhere`, which records what
    reaches it (a provider key there would have left the provider)."""

    def __init__(self):
        self.seen: list[dict] = []
        self.url = self.elsewhere = ""
        app = web.Application()
        app.router.add_route("*", "/elsewhere/{rest:.*}", self.record)
        app.router.add_route("*", "/{rest:.*}", self.redirect)
        self.stop = serve_in_thread(app, lambda url: setattr(self, "url", url))
        self.elsewhere = self.url.replace("127.0.0.1", "localhost") + "/elsewhere"  # another origin

    async def redirect(self, request: web.Request):
        elsewhere = self.elsewhere
        if request.headers.get("Upgrade", "").lower() == "websocket":
            elsewhere = elsewhere.replace("http://", "ws://")
        raise web.HTTPTemporaryRedirect(f"{elsewhere}{request.path_qs}")

    async def record(self, request: web.Request):
        self.seen.append(dict(request.headers))
        return web.json_response({"ok": True})


@pytest.fixture
def redirector():
    server = Redirector()
    yield server
    server.stop()


@pytest.fixture
def http_upstream():
    fake, stop = start_fake_upstream()
    yield fake
    stop()


@pytest.fixture
def debug_daphne(django_db_setup, django_db_blocker):
    from django.db import connection

    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    server = start_daphne(db_name, {**os.environ, "LOG_LEVEL": "DEBUG"})
    yield server
    stop_daphne(server)


async def chat(daphne, key: str, model: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            f"http://127.0.0.1:{daphne.port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )


async def test_at_debug_no_log_line_carries_the_provider_key(debug_daphne, fake_upstream, http_upstream):
    rt = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    http = await database_sync_to_async(realtime_world)(
        None, base_url=http_upstream.url + "/v1", kind=ModelKind.CHAT, price=TOKEN_PRICE
    )
    await database_sync_to_async(_set_provider_key)(http.allocation, UPSTREAM_KEY)
    response = await chat(debug_daphne, http.key, http.slug)
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {rt.key}"}
    async with websockets.connect(f"{debug_daphne.ws_url}?model={rt.slug}", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "response.create"}))
        while json.loads(await ws.recv())["type"] != "response.done":
            pass
    await session_records(rt.allocation)
    assert fake_upstream.handshakes[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY}"  # it was sent
    log = debug_daphne.log
    assert "HTTP response complete for" in log, log  # daphne's DEBUG lines: the level was DEBUG
    leaks = [line for line in log.splitlines() if PROVIDER_KEY in line or UPSTREAM_KEY in line]
    assert leaks == []


def _set_provider_key(allocation, key: str) -> None:
    provider_rotate_key(provider=Provider.objects.get(pk=allocation.model.provider_id), api_key=key)


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_an_upstream_redirect_is_not_followed_by_the_http_relay(daphne_server, redirector, kind):
    base_url = redirector.url + ("/v1" if kind == "openai" else "")
    world = await database_sync_to_async(realtime_world)(
        None, base_url=base_url, kind=ModelKind.CHAT, provider_kind=kind, api_version="2024-10-21"
    )
    response = await chat(daphne_server, world.key, world.slug)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    assert redirector.seen == []


async def test_an_upstream_redirect_is_not_followed_by_the_realtime_relay(daphne_server, redirector):
    world = await database_sync_to_async(realtime_world)(None, base_url=redirector.url + "/v1", price=TOKEN_PRICE)
    headers = {"Authorization": f"Bearer {world.key}"}
    async with websockets.connect(f"{daphne_server.ws_url}?model={world.slug}", additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code in (1011, 1013)
    assert redirector.seen == []
    [record] = await session_records(world.allocation)
    assert record.outcome == "upstream_error"
