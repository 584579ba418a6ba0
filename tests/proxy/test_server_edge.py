"""The server refuses from a request's head (gateway_project.edge): a client that streams a huge
body with a bad key, or announces one over the limit, gets its answer while it is still sending,
long before the body could have arrived; a chunked body is cut off at the limit."""

import json
import select
import socket
import time
from urllib.parse import urlsplit

import pytest

from allocations.keys import api_key_revoke
from quota.models import CallRecord

from .conftest import record_of

KB, MB = 1024, 1024 * 1024
LIMIT_MB = 2
SERVE_ENV = {"GATEWAY_MAX_BODY_MB": str(LIMIT_MB)}
UNKNOWN = "sk-gw-" + "Z" * 43


@pytest.fixture
def world(served_world):
    return served_world


def head(path: str, *, key: str | None, length: int | None = 400 * MB, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "X-Request-Id: edge-1"]
    lines += [f"Authorization: Bearer {key}"] if key else []
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def upload(url: str, request_head: bytes, *, chunked: bool = False, piece: int = 16 * KB) -> tuple[bytes, int]:
    """Sends the head, then body bytes at a steady pace (16 kB every 10 ms: 1 MB in ~0.6 s) until
    an answer arrives. Returns the answer as far as the server sent it, and the body bytes sent."""
    parts = urlsplit(url)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request_head)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([sock], [], [], 0.01)[0]:
                return read_answer(sock), sent
            data = b"x" * piece
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent += len(data)
    raise AssertionError(f"no answer after {sent} bytes")


def read_answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes its side (it answers a refusal with `Connection: close`)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def envelope(answer: bytes) -> tuple[bytes, dict, dict]:
    status, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in header_block.split(b"\r\n"))
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)["error"]


@pytest.mark.parametrize("key", [None, "not-a-key", UNKNOWN])
def test_a_huge_upload_with_a_bad_key_is_answered_401_before_a_megabyte_was_sent(world, key):
    answer, sent = upload(world.gateway_url, head("/v1/chat/completions", key=key))
    status, headers, error = envelope(answer)
    assert status == b"HTTP/1.1 401 Unauthorized" and sent < MB
    assert (error["code"], error["request_id"], headers[b"x-request-id"]) == ("unauthorized", "edge-1", b"edge-1")
    assert headers[b"connection"] == b"close"
    assert not CallRecord.objects.exists()


def test_a_revoked_key_is_refused_from_the_head_too(world):
    allocation = world.allocation()
    api_key_revoke(key=allocation.key)
    answer, sent = upload(world.gateway_url, head("/v1/embeddings", key=allocation.plaintext))
    assert answer.startswith(b"HTTP/1.1 401 ") and sent < MB


def test_a_declared_length_over_the_limit_is_answered_413_from_the_head_once_the_key_passed(world):
    allocation = world.allocation()
    answer, sent = upload(world.gateway_url, head("/v1/chat/completions", key=allocation.plaintext))
    status, _, error = envelope(answer)
    assert status == b"HTTP/1.1 413 Request Entity Too Large" and sent < MB
    assert error["code"] == "request_too_large"
    record = record_of("edge-1")  # a call refused for its body, recorded as the preflight records it
    assert (record.outcome, record.status_code, record.error_code) == ("rejected_bad_request", 413, "request_too_large")
    assert record.api_key_id == allocation.key.pk
    # on every path: the portal's forms too
    answer, sent = upload(world.gateway_url, head("/accounts/login/", key=None))
    assert envelope(answer)[2]["code"] == "request_too_large" and sent < MB


def test_a_chunked_body_is_cut_off_at_the_limit_and_the_refused_call_recorded(world):
    allocation = world.allocation()
    request_head = head("/v1/chat/completions", key=allocation.plaintext, length=None)
    answer, sent = upload(world.gateway_url, request_head, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413 ") and LIMIT_MB * MB <= sent < (LIMIT_MB + 1) * MB
    assert record_of("edge-1").outcome == "rejected_bad_request"


def test_a_percent_encoded_v1_path_meets_the_same_door(world):
    answer, sent = upload(world.gateway_url, head("/%76%31/chat/completions", key=UNKNOWN))
    assert answer.startswith(b"HTTP/1.1 401 ") and sent < MB


def test_expect_100_continue_is_answered_by_the_door_first(world):
    allocation = world.allocation()  # a key this server has not seen: the door looks it up
    parts = urlsplit(world.gateway_url)
    body = json.dumps({"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head("/v1/chat/completions", key=UNKNOWN, length=len(body), extra="Expect: 100-continue\r\n"))
        assert read_answer(sock).startswith(b"HTTP/1.1 401 ")  # no `100 Continue` before it
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        expect = "Expect: 100-continue\r\n"
        sock.sendall(head("/v1/chat/completions", key=allocation.plaintext, length=len(body), extra=expect))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")  # the door passed: send the body
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_valid_key_and_a_body_within_the_limit_are_served_as_before(world):
    allocation = world.allocation()
    client = world.client(allocation.plaintext)
    long_prompt = "x" * 600 * KB  # past Twisted's in-memory size (the fake upstream takes up to 1 MB)
    for _ in range(2):  # looked up by the door, then held
        answer = client.chat.completions.create(
            model=allocation.model.slug, messages=[{"role": "user", "content": long_prompt}]
        )
        assert answer.choices[0].message.content
    assert CallRecord.objects.filter(outcome="success").count() == 2


def call_raw(url: str, key_lines: list[str], body: bytes, rid: str) -> bytes:
    """One call on its own connection with the given Authorization lines; the answer's status line."""
    parts = urlsplit(url)
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"X-Request-Id: {rid}", f"Content-Length: {len(body)}", "Connection: close", *key_lines]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return read_answer(sock).split(b"\r\n", 1)[0]


def test_a_held_key_revoked_meanwhile_is_refused_at_once_though_the_head_passed_it(world):
    allocation = world.allocation()
    body = json.dumps({"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    bearer = [f"Authorization: Bearer {allocation.plaintext}"]
    for rid in ("held-1", "held-2"):  # looked up by the door, then passed at once from the head
        assert call_raw(world.gateway_url, bearer, body, rid) == b"HTTP/1.1 200 OK"
    api_key_revoke(key=allocation.key)  # the process still holds the key's snapshot of the old generation
    assert call_raw(world.gateway_url, bearer, body, "held-3").startswith(b"HTTP/1.1 401 ")
    assert record_of("held-3").outcome == "rejected_unauthenticated"  # refused by the preflight
    assert CallRecord.objects.filter(outcome="success").count() == 2


def test_a_second_authorization_header_is_never_served_under_the_first_keys_verdict(world):
    """The head judges the first Authorization header; the view reads them all (joined, as Django
    does): the verdict's digest belongs to another bearer than the call's, so it is not used."""
    allocation, other = world.allocation(), world.allocation()
    body = json.dumps({"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    first = f"Authorization: Bearer {allocation.plaintext}"
    assert call_raw(world.gateway_url, [first], body, "two-0") == b"HTTP/1.1 200 OK"  # now held
    answer = call_raw(world.gateway_url, [first, f"Authorization: Bearer {other.plaintext}"], body, "two-1")
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert record_of("two-1").outcome == "rejected_unauthenticated"
