"""The upstream client keeps no cookies: one session per process serves every member, so a cookie a
provider sets on one member's answer must never go out with a later call, that member's or another's.
Against gateway_project.serve and a local upstream that sets a cookie on every answer."""

import pytest
from aiohttp import web

from tests.factories import MemberFactory

from .conftest import World
from .fake_upstream import FakeUpstream, serve_in_thread

MESSAGES = [{"role": "user", "content": "Say hello"}]


@web.middleware
async def sets_a_cookie(request: web.Request, handler):
    response = await handler(request)
    # A host name, not 127.0.0.1: aiohttp's default cookie jar stores no cookie of an IP address.
    response.set_cookie("provider_session", f"for-{request.headers.get('X-Request-Id')}", path="/", max_age=3600)
    return response


@pytest.fixture
def cookie_upstream():
    fake = FakeUpstream()
    app = web.Application(middlewares=[sets_a_cookie])
    app.router.add_post("/v1/{path:.*}", fake.openai)
    stop = serve_in_thread(app, lambda url: setattr(fake, "url", url.replace("127.0.0.1", "localhost")))
    yield fake
    stop()


def test_a_cookie_set_by_the_upstream_is_never_sent_back(served, transactional_db, cookie_upstream):
    world = World(served.url, cookie_upstream.url)
    provider = world.provider()
    mine = world.allocation(provider=provider)
    theirs = world.allocation(provider=provider, member=MemberFactory(username="other"))
    for n, allocation in enumerate((mine, mine, theirs)):
        completion = world.client(allocation.plaintext).chat.completions.with_raw_response.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers={"X-Request-Id": f"req-cookie-{n}"}
        )
        assert completion.http_response.status_code == 200
        assert "provider_session" not in completion.headers.get("set-cookie", "")  # nor relayed to the client
    sent = [{k.lower(): v for k, v in r["headers"].items()} for r in cookie_upstream.requests]
    assert [r.get("x-request-id") for r in sent] == ["req-cookie-0", "req-cookie-1", "req-cookie-2"]
    assert [r.get("cookie") for r in sent] == [None, None, None]
