"""`head_in_one_pass` on the real server (`gateway_project.serve`): the gateway's door still runs
from a head read in one pass (a key looked up with reading paused while the body is already in,
401 and 413 from the head, `100 Continue`), `Connection: close` closes, pipelined calls behind a
door's lookup are answered in order, a head split across reads at awkward bytes is read as before,
and a smuggling shape is refused."""

import json
import socket
import time
import urllib.parse

import pytest

from quota.models import CallRecord
from tests.proxy.conftest import record_of

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN = "sk-gw-" + "Q" * 43


def _request(host: str, key: str, body: bytes, *, extra: str = "", length: int | None = None) -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n{extra}Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


class _Wire:
    """One client connection that reads whole answers (status, headers, body by its length)."""

    def __init__(self, url: str):
        address = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((address.hostname, address.port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def send(self, *pieces: bytes) -> None:
        """Each piece in a write of its own, a pause between them: the server reads them apart."""
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(0.05)
            self.sock.sendall(piece)

    def answer(self) -> tuple[bytes, dict[str, str], bytes]:
        status = self.reader.readline().rstrip(b"\r\n")
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, self.reader.read(int(headers.get("content-length", 0)))

    def closed(self) -> bool:
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_the_door_pipelining_and_split_heads_on_the_real_server(serve_factory, arrange):
    server = serve_factory(1, GATEWAY_MAX_BODY_MB="1")
    world = arrange(server)
    first, second = world.allocation(), world.allocation()
    host = urllib.parse.urlsplit(server.url).hostname
    body = json.dumps({"model": first.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    call = _request(host, first.plaintext, body)

    # a key this process has not seen, head and body in one write: the door looks it up with
    # reading paused, then the call is served; a second call of another unseen key pipelined behind it
    wire = _Wire(server.url)
    other = json.dumps({"model": second.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    wire.send(call + _request(host, second.plaintext, other))
    answers = [wire.answer(), wire.answer()]
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert [json.loads(a[2])["object"] for a in answers] == ["chat.completion"] * 2

    # the same connection: a head split at awkward bytes (in the method, inside a name, between the
    # last CR and LF, right after the head), each read apart, each served
    for at in (2, call.index(b"Authorization") + 5, call.index(b"\r\n\r\n") + 3, call.index(b"\r\n\r\n") + 4):
        wire.send(call[:at], call[at:])
        assert wire.answer()[0] == b"HTTP/1.1 200 OK", at

    # `Expect: 100-continue` from the head: `100 Continue`, then the body, then the answer
    wire.send(_request(host, first.plaintext, b"", extra="Expect: 100-continue\r\n", length=len(body)))
    assert wire.answer()[0] == b"HTTP/1.1 100 Continue"
    wire.send(body)
    assert wire.answer()[0] == b"HTTP/1.1 200 OK"

    # an unseen key refused from the head, its body in the same write: 401, and the connection closes
    wire.send(_request(host, UNKNOWN, body, extra="X-Request-Id: head-401\r\n"))
    status, headers, error = wire.answer()
    assert status == b"HTTP/1.1 401 Unauthorized" and headers["connection"] == "close"
    assert json.loads(error)["error"]["request_id"] == "head-401"
    assert wire.closed()
    wire.close()

    # `Connection: close`: answered, then closed
    wire = _Wire(server.url)
    wire.send(_request(host, first.plaintext, body, extra="Connection: close\r\n"))
    status, headers, _ = wire.answer()
    assert status == b"HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert wire.closed()
    wire.close()

    # a length over the limit from a key that passed: 413 from the head, recorded as the preflight does
    wire = _Wire(server.url)
    wire.send(_request(host, first.plaintext, b"", extra="X-Request-Id: head-413\r\n", length=2 * 1024 * 1024))
    status, headers, error = wire.answer()
    assert (
        status == b"HTTP/1.1 413 Request Entity Too Large" and json.loads(error)["error"]["code"] == "request_too_large"
    )
    assert wire.closed()
    wire.close()

    # request smuggling: a length and a chunked body together are refused by Twisted's 400
    wire = _Wire(server.url)
    wire.send(_request(host, first.plaintext, b"0\r\n\r\n", extra="Transfer-Encoding: chunked\r\n"))
    assert wire.answer()[0] == b"HTTP/1.1 400 Bad Request"
    assert wire.closed()
    wire.close()

    deadline = time.monotonic() + 10
    while CallRecord.objects.filter(outcome="success").count() < 8:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    assert CallRecord.objects.filter(outcome="success").count() == 8
    assert (record_of("head-413").outcome, record_of("head-413").error_code) == (
        "rejected_bad_request",
        "request_too_large",
    )
    assert not CallRecord.objects.filter(request_id="head-401").exists()
