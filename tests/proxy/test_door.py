"""The door of /v1 (proxy.gate): a missing, malformed or unknown bearer is refused before the body
is read, writes no call record, and an address that keeps failing is refused with 429. Against
gateway_project.serve (the door runs from the request's head there: gateway_project.edge)."""

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from quota.models import CallRecord

from .conftest import World

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
# loopback is no trusted proxy here: forwarded headers are not believed
SERVE_ENV = {"GATEWAY_AUTH_FAILURES_PER_MINUTE": "5", "GATEWAY_TRUSTED_PROXY_COUNT": "1"}


@pytest.fixture
def world(served_world):
    return served_world


@pytest.fixture
def one_minute_window():
    """The failed-auth counts are per calendar minute: a test that counts several refusals starts
    far enough from a minute's end that they all fall in one window (up to 15 s of waiting, so only
    the tests that count ask for it; a single refusal is 401 in any window)."""
    if (left := 60 - time.time() % 60) < 15:
        time.sleep(left + 0.1)


def chat(world, key: str | None, model: str = "x", **headers) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, **CHAT}
    return httpx.post(f"{world.gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def first_response_line(url: str, head: bytes, timeout: float = 20.0) -> bytes:
    """Sends a request head announcing 100 MB, a few body bytes, and reads the answer: it can only
    come back if the gateway answered without waiting for the body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head + b"Content-Length: 104857600\r\n\r\n" + b"x" * 1000)
        return sock.recv(65536).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/audio/transcriptions"])
@pytest.mark.parametrize(
    "auth", [b"", b"Authorization: Basic abc\r\n", b"Authorization: Bearer sk-gw-" + b"Z" * 43 + b"\r\n"]
)
def test_a_bad_bearer_is_answered_before_the_body_arrives(world, path, auth):
    head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n" + auth
    assert first_response_line(world.gateway_url, head) == b"HTTP/1.1 401 Unauthorized"
    assert not CallRecord.objects.exists()


def test_unauthenticated_rejects_write_no_rows_and_an_address_past_the_limit_gets_429(world, served, one_minute_window):
    allocation = world.allocation()
    assert chat(world, allocation.plaintext, allocation.model.slug).status_code == 200  # a key this process holds
    statuses = [chat(world, key).status_code for key in [None, "not-a-key", *["sk-gw-" + "Q" * 43] * 8]]
    assert statuses == [401] * 5 + [429] * 5
    refused = chat(world, "sk-gw-" + "R" * 43)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert CallRecord.objects.filter(outcome="rejected_unauthenticated").count() == 0
    assert CallRecord.objects.count() == 1  # the one authenticated call
    assert chat(world, allocation.plaintext, allocation.model.slug).status_code == 200  # not locked out
    assert served.log.count("unauthenticated requests from 127.0.0.1: limit of 5 a minute reached") == 1


def test_the_limit_is_per_client_address_behind_trusted_proxies(gateway, fake_upstream, settings, one_minute_window):
    # the in-process gateway, whose settings this test sets: the address rule, not the wire
    world = World(gateway, fake_upstream.url)
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 2
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.GATEWAY_TRUSTED_PROXIES = ["127.0.0.0/8"]
    for _ in range(3):
        chat(world, None, **{"X-Forwarded-For": "203.0.113.7"})
    assert chat(world, None, **{"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert chat(world, None, **{"X-Forwarded-For": "203.0.113.8"}).status_code == 401
    # a client-supplied hop left of the trusted one changes nothing
    assert chat(world, None, **{"X-Forwarded-For": "10.9.9.9, 203.0.113.7"}).status_code == 429


def test_a_client_reaching_the_port_directly_cannot_rotate_its_address_with_forwarded_headers(world, one_minute_window):
    statuses = [chat(world, None, **{"X-Forwarded-For": f"203.0.113.{n}"}).status_code for n in range(7)]
    assert statuses == [401] * 5 + [429] * 2
