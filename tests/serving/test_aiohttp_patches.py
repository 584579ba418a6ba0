"""gateway_project.server_patches' aiohttp_auto_headers_without_copies: a request made with the
patched ClientRequest.update_auto_headers has the headers, in the same order, and the same skip
multidict as one made with aiohttp's own, for the session's skip sets and a request's own."""

import asyncio

import pytest
from aiohttp import client_reqrep
from multidict import CIMultiDict, istr
from yarl import URL

from gateway_project import server_patches

SKIP_SETS = [
    frozenset({istr("User-Agent")}),  # what proxy.upstream's session gives every request
    frozenset({istr("Accept")}),
    frozenset({istr("Accept-Encoding"), istr("User-Agent"), istr("Accept")}),
    frozenset({istr("Content-Type")}),
    frozenset(),
    {istr("User-Agent"), istr("X-Other")},  # a request's own names joined to the session's: aiohttp's way
    None,
]
HEADER_SETS = [
    {"Authorization": "Bearer x", "Content-Type": "application/json"},
    {"accept": "application/json", "user-agent": "client/1"},
    {"Accept-Encoding": "br"},
    {},
]


def keep_aiohttps_own(monkeypatch):
    """aiohttp's own method put back after the test."""
    request_class = client_reqrep.ClientRequest
    monkeypatch.setattr(request_class, "update_auto_headers", request_class.update_auto_headers)


def made(skip, headers):
    async def make():
        request = client_reqrep.ClientRequest(
            "POST",
            URL("http://127.0.0.1:9/v1/chat/completions"),
            headers=headers,
            skip_auto_headers=skip,
            data=b"{}",
            loop=asyncio.get_running_loop(),
        )
        return list(request.headers.items()), request.skip_auto_headers, request

    return asyncio.run(make())


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("skip", SKIP_SETS)
def test_a_request_gets_the_headers_and_skip_set_aiohttp_gives_it(skip, headers, monkeypatch):
    keep_aiohttps_own(monkeypatch)
    own_headers, own_skip, _ = made(skip, headers)
    server_patches._auto_headers_without_copies()
    assert client_reqrep.ClientRequest.update_auto_headers.__wrapped__ is not None
    for _ in range(2):  # the skip set's multidict made, then remembered
        patched_headers, patched_skip, _ = made(skip, headers)
        assert patched_headers == own_headers
        assert list(patched_skip.items()) == list(own_skip.items())


def test_each_request_gets_a_skip_multidict_of_its_own(monkeypatch):
    keep_aiohttps_own(monkeypatch)
    server_patches._auto_headers_without_copies()
    skip = frozenset({istr("User-Agent")})
    _, first_skip, first = made(skip, {})
    _, second_skip, second = made(skip, {})
    assert isinstance(first_skip, CIMultiDict) and first_skip is not second_skip
    first._skip_auto_headers.add("X-Later", None)
    assert list(second.skip_auto_headers.keys()) == ["User-Agent"]
