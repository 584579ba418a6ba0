"""What gateway_project.serve puts on the wire now that daphne's writes go to the socket at once
(gateway_project.server_patches: direct_body_writes, head_with_first_write, stream_parts_direct):
every answer's head whole and followed by exactly its body, a stream's parts in exact chunked
frames that carry the upstream's events unchanged, and the call billed from its usage."""

import json
import socket
import threading
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import connection

from quota.models import CallRecord, Reservation

from .conftest import record_of


@pytest.fixture
def world(served_world):
    return served_world


def exchange(url: str, request: bytes) -> bytes:
    """One request on its own connection (`Connection: close`): everything the server sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def post(path: str, body: dict, key: str, rid: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nX-Request-Id: {rid}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def split(answer: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines)}, body


def dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body, checking every frame and the terminating one."""
    chunks, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        if size == 0:
            assert body[end:] == b"\r\n\r\n", body[end:]
            return chunks
        chunks.append(body[end + 2 : end + 2 + size])
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        at = end + 4 + size


def test_a_stream_arrives_in_exact_chunked_frames_part_by_part_and_is_billed_from_its_usage(world):
    allocation = world.allocation(upstream_name="fake-pace-50")  # 4 content chunks 50 ms apart
    body = {
        "model": allocation.model.slug,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = post("/v1/chat/completions", body, allocation.plaintext, "wire-1")
    status, headers, raw = split(exchange(world.gateway_url, request))
    assert status == b"HTTP/1.1 200 OK" and headers[b"transfer-encoding"] == b"chunked"
    chunks = dechunk(raw)
    assert len(chunks) >= 5  # the first part with the head, the later ones written one by one
    events = b"".join(chunks).split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    assert text == "Hello from the fake" and payloads[-1]["usage"]["completion_tokens"] == 7
    record = record_of("wire-1")
    assert (record.outcome, record.estimated, record.output_tokens) == ("success", False, 7)


def test_a_json_answer_is_its_head_and_exactly_its_body(world):
    allocation = world.allocation()
    body = {"model": allocation.model.slug, "messages": [{"role": "user", "content": "Say hello"}]}
    request = post("/v1/chat/completions", body, allocation.plaintext, "wire-2")
    status, headers, raw = split(exchange(world.gateway_url, request))
    assert status == b"HTTP/1.1 200 OK" and int(headers[b"content-length"]) == len(raw)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from the fake"
    assert headers[b"x-request-id"] == b"wire-2" and record_of("wire-2").outcome == "success"


def test_a_refusal_after_the_door_is_its_envelope_head_and_exactly_its_body(world):
    """A view's error envelope (proxy.views, sent as a whole answer's two ASGI messages) through the
    real server: its status and headers, and its body whole in exact chunked frames."""
    allocation = world.allocation()
    body = {"model": "not-granted", "messages": [{"role": "user", "content": "Say hello"}]}
    request = post("/v1/chat/completions", body, allocation.plaintext, "wire-3")
    status, headers, raw = split(exchange(world.gateway_url, request))
    assert status == b"HTTP/1.1 403 Forbidden" and headers[b"transfer-encoding"] == b"chunked"
    assert headers[b"content-type"] == b"application/json" and headers[b"x-request-id"] == b"wire-3"
    [envelope] = dechunk(raw)  # the whole envelope in one frame, then the last one
    error = json.loads(envelope)["error"]
    assert (error["code"], error["type"], error["request_id"]) == ("model_mismatch", "permission_error", "wire-3")


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [("GET /admin/ HTTP/1.1", b"HTTP/1.1 302 Found"), ("HEAD /healthz HTTP/1.1", b"HTTP/1.1 200 OK")],
)
def test_an_answer_without_a_body_still_sends_its_whole_head(world, request_line, expected):
    answer = exchange(world.gateway_url, f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    status, headers, raw = split(answer)
    assert status == expected and answer.count(b"\r\n\r\n") == 1 and raw == b""
    assert b"x-request-id" in headers or b"content-type" in headers


def test_a_streams_done_event_leaves_only_after_its_call_is_settled(world):
    """The OpenAI SDKs stop reading a chat stream at `data: [DONE]`: the gateway holds that event
    back until the call's settlement has committed, so a client that has read it finds the call's
    record. The settlement is held up by a lock on the reservation, taken after the first chunk."""
    allocation = world.allocation(upstream_name="fake-pace-50")
    locked, release = threading.Event(), threading.Event()

    def hold_the_reservation() -> None:
        settings = connection.settings_dict
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
        ) as conn:
            conn.execute(f"SELECT id FROM {Reservation._meta.db_table} FOR UPDATE")  # noqa: S608 (a model's table)
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_reservation)
    stream = world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=[{"role": "user", "content": "Say hello"}], stream=True,
        extra_headers={"X-Request-Id": "wire-done"},
    )  # fmt: skip
    try:
        words = []
        for chunk in stream:
            if not words:
                holder.start()
                assert locked.wait(10)
                threading.Timer(0.5, release.set).start()  # the settlement waits until then
            words.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        # The SDK saw [DONE] and stopped: no wait here for the record.
        record = CallRecord.objects.filter(request_id="wire-done").first()
        assert record is not None and record.outcome == "success"
        assert "".join(words) == "Hello from the fake"
    finally:
        release.set()
        if holder.is_alive():
            holder.join()
