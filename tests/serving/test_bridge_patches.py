"""The server patches on daphne's bridge and Twisted's request cycle (gateway_project.server_patches:
process_without_deferreds, light_application_queue, finish_without_log_details, response_in_one_write,
body_parts_direct, idle_timer_kept), driven through daphne's own HTTP factory on an in-memory transport: the same
bytes through the patched methods as through daphne's and Twisted's own, and the idle timer's
life across keep-alive requests."""

import asyncio
import inspect
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway_project import server_patches

REQUESTS = {
    "repeated names, underscores, case": (
        b"POST /echo/a%20b?x=1&y=%C3%A9 HTTP/1.1\r\nHost: h\r\nX-Dup: one\r\nx-dup: two\r\nX_Under: no\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "root path header": b"GET /echo HTTP/1.1\r\nHost: h\r\nDaphne-Root-Path: /r%20oot\r\nConnection: close\r\n\r\n",
    "pipelined keep-alive": (
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /echo/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /echo/3 HTTP/1.1\r\nHost: h\r\n\r\n"
    ),
    "HEAD": b"HEAD /echo HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/1.0": b"GET /echo HTTP/1.0\r\nHost: h\r\n\r\n",
    "invalid header value": b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Bad: a\x0bb\r\n\r\n",
    "non-ASCII path": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
    "non-ASCII query": b"GET /echo?q=\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
    "application error": b"GET /raise HTTP/1.1\r\nHost: h\r\n\r\n",
    "streamed answer": b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n",
    "HEAD with a length": b"HEAD /shape?length HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/1.0 with a length": b"GET /shape?length HTTP/1.0\r\nHost: h\r\n\r\n",
    "headers to sanitise and an application's Server": b"GET /shape?odd HTTP/1.1\r\nHost: h\r\n\r\n",
    "an unknown code": b"GET /shape?unknown HTTP/1.1\r\nHost: h\r\n\r\n",
    "204 with a length": b"GET /shape?204 HTTP/1.1\r\nHost: h\r\n\r\n",
    "304 with a body": b"GET /shape?304 HTTP/1.1\r\nHost: h\r\n\r\n",
    "no length": b"GET /shape?nolength HTTP/1.1\r\nHost: h\r\n\r\n",
    "no length, HTTP/1.0": b"GET /shape?nolength HTTP/1.0\r\nHost: h\r\n\r\n",
    "an empty body with a length": b"GET /shape?empty HTTP/1.1\r\nHost: h\r\n\r\n",
    "a length and two parts": b"GET /shape?parts HTTP/1.1\r\nHost: h\r\n\r\n",
    "repeated response headers, keep-alive": (
        b"GET /shape?repeated HTTP/1.1\r\nHost: h\r\n\r\nGET /shape?length HTTP/1.1\r\nHost: h\r\n\r\n"
    ),
}

# /shape?<name>: (status, headers, body parts) of responses the patches must write as Twisted does
SHAPES = {
    "length": (200, [(b"content-length", b"5")], [b"hello"]),
    "odd": (
        201,
        [
            (b"x-Never-SEEN-before-name", b"v"),
            (b"x-folded", b"a\r\n b"),
            (b"x-lf", b"c\n"),
            (b"x-cr", b"\rd"),
            (b"server", b"the application's"),
            (b"content-length", b"2"),
        ],
        [b"ok"],
    ),
    "unknown": (599, [(b"content-length", b"2")], [b"no"]),
    "204": (204, [(b"content-length", b"0")], [b""]),
    "304": (304, [(b"content-length", b"3")], [b"abc"]),
    "nolength": (200, [(b"content-type", b"text/plain")], [b"chunk"]),
    "empty": (200, [(b"content-length", b"0")], [b""]),
    "parts": (200, [(b"content-length", b"6")], [b"abc", b"def"]),
    "repeated": (200, [(b"x-dup", b"1"), (b"X-Dup", b"2"), (b"content-length", b"1")], [b"r"]),
}


async def application(scope, receive, send):
    """Echoes its scope and body; /stream answers in three parts; /raise fails before answering."""
    if scope["path"] == "/raise":
        raise RuntimeError("the application failed")
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/shape":
        status, headers, parts = SHAPES[scope["query_string"].decode()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1})
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"three"})
        return
    seen = {k: v for k, v in scope.items() if k != "asgi"}
    seen["raw_path"] = seen["raw_path"].decode("latin1")
    seen["query_string"] = seen["query_string"].decode("latin1")
    seen["headers"] = [[k.decode("latin1"), v.decode("latin1")] for k, v in seen["headers"]]
    seen["body"] = body.decode("latin1")
    data = json.dumps(seen, sort_keys=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _originals():
    """daphne's and Twisted's own methods behind the bridge's patches (the edge's wrappers kept)."""
    from daphne.http_protocol import WebRequest
    from daphne.server import Server

    edge_process = WebRequest.process
    return {
        (WebRequest, "handle_reply"): inspect.unwrap(WebRequest.handle_reply),
        (Server, "handle_reply"): Server.handle_reply.__wrapped__,
        # the edge wraps the process the patch replaced: its wrapper runs daphne's own inside
        (WebRequest, "process"): _rewrapped(edge_process, edge_process.__wrapped__.__wrapped__),
    }


def _rewrapped(edge_process, inner):
    def process(self):
        if self.gateway_refused:
            return None
        return inner(self)

    return process


async def _serve(raw: bytes, *, chunks: int = 1) -> bytes:
    """Everything daphne writes for `raw` (fed in `chunks` pieces) on one in-memory connection."""
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server

    server = Server(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"])  # never run: no socket
    server.connections = {}
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=IPv4Address("TCP", "127.0.0.1", 4321)
    )
    channel = HTTPFactory(server).buildProtocol(None)
    channel.makeConnection(transport)
    step = max(1, len(raw) // chunks)
    for at in range(0, len(raw), step):
        channel.dataReceived(raw[at : at + step])
        for _ in range(20):  # the applications run; what they send is written
            await asyncio.sleep(0)
    for protocol, details in list(server.connections.items()):  # an application that raised: daphne's checker's 500
        instance = details.get("application_instance")
        if instance is not None and instance.done() and instance.exception() and "disconnected" not in details:
            protocol.handle_exception(instance.exception())
    channel.connectionLost(None)
    return transport.value()


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_the_patched_bridge_writes_what_daphne_writes(name, monkeypatch, caplog):
    from twisted.web.http_headers import _nameEncoder

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    for _, headers, _ in SHAPES.values():  # names Twisted has seen: the ones response_in_one_write adds itself
        for header, _ in headers:
            _nameEncoder.encode(header)
    patched = await _serve(REQUESTS[name], chunks=3 if name == "pipelined keep-alive" else 1)
    with monkeypatch.context() as undo:
        for (cls, attribute), original in _originals().items():
            undo.setattr(cls, attribute, original)
        undo.setattr(server_patches, "_Inbox", asyncio.Queue)
        own = await _serve(REQUESTS[name], chunks=3 if name == "pipelined keep-alive" else 1)
    assert patched == own
    assert patched.startswith(b"HTTP/1.")
    if name == "pipelined keep-alive":
        assert patched.count(b"HTTP/1.1 200 OK") == 3
    if name == "repeated names, underscores, case":
        seen = json.loads(patched.partition(b"\r\n\r\n")[2])
        assert ["x-dup", "one"] in seen["headers"] and ["x-dup", "two"] in seen["headers"]
        assert not any(k == "x_under" for k, _ in seen["headers"]) and seen["body"] == "hello"
        assert seen["path"] == "/echo/a b" and seen["query_string"] == "x=1&y=%C3%A9"


async def test_a_response_with_its_length_is_written_in_one_write_without_twisteds_steps(monkeypatch):
    """response_in_one_write: the start's known headers go straight in, the body with the head in one write."""
    from twisted.web import http
    from twisted.web.http_headers import Headers

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    request_class = server_patches._unproxied(http).Request
    steps = []
    for cls, name in ((request_class, "write"), (Headers, "addRawHeader"), (http.HTTPChannel, "writeHeaders")):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, _o=original, _n=name: steps.append(_n) or _o(*a))
    writes = []
    channel_write = http.HTTPChannel.write
    monkeypatch.setattr(http.HTTPChannel, "write", lambda self, data: writes.append(data) or channel_write(self, data))
    from daphne.http_protocol import WebRequest

    finish, lengths = WebRequest.finish, []
    monkeypatch.setattr(WebRequest, "finish", lambda self: lengths.append(self.sentLength) or finish(self))
    out = await _serve(b"GET /shape?length HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: daphne\r\n\r\nhello"
    assert writes == [out] and steps == [] and lengths == [5]
    steps.clear()
    await _serve(b"GET /shape?nolength HTTP/1.1\r\nHost: h\r\n\r\n")  # chunked: Twisted's way
    assert "write" in steps and "writeHeaders" in steps


async def test_the_access_log_still_gets_daphnes_details_when_one_is_configured(monkeypatch):
    """finish_without_log_details applies only without an access log."""
    from daphne.server import Server

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    logged = []
    original_init = Server.__init__

    def with_logger(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.action_logger = lambda protocol, action, details: logged.append((protocol, action, details))

    monkeypatch.setattr(Server, "__init__", with_logger)
    await _serve(b"GET /echo?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    [(protocol, action, details)] = logged
    assert (protocol, action, details["path"], details["status"], details["method"]) == (
        "http",
        "complete",
        "/echo?x=1",
        200,
        "GET",
    )
    assert details["client"] == "127.0.0.1:4321" and details["size"] > 0


async def test_the_inbox_hands_messages_over_as_asyncio_queue_does():
    inbox = server_patches._Inbox()
    inbox.put_nowait(1)
    assert await inbox.get() == 1 and inbox.empty()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(2)
    assert await waiting == 2
    # a getter cancelled once its item was handed to it passes the item on to the next one
    first, second = asyncio.ensure_future(inbox.get()), asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(3)
    first.cancel()
    assert await second == 3
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()
    assert inbox.qsize() == 0 and not inbox._getters


class _Held:
    """A Twisted request the test finishes when it chooses."""

    def __init__(self):
        self.requests = []

    def factory(self, channel, queued=None):
        from twisted.web.http import Request

        request = Request(channel)
        self.requests.append(request)
        return request


def _channel(clock):
    from twisted.web.http import HTTPChannel

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    held = _Held()
    channel = HTTPChannel()
    channel.requestFactory = held.factory
    channel.callLater = clock.callLater
    channel.timeOut = 10
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, held


def test_the_idle_timer_is_set_aside_while_a_request_is_handled_and_rearmed_after_it():
    clock = Clock()
    channel, transport, held = _channel(clock)
    [timer] = clock.getDelayedCalls()
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    clock.advance(8)
    held.requests[0].finish()
    assert clock.getDelayedCalls() == [timer] and timer.active()  # the same timer, not a new one
    clock.advance(9)
    assert not transport.disconnecting
    channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")  # pipelined
    held.requests[1].finish()
    held.requests[2].finish()
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    clock.advance(9.5)
    assert not transport.disconnecting  # idle since the last answer, not since the first request
    clock.advance(1)
    assert transport.disconnecting  # idle past the timeout: closed as Twisted closes it


def test_an_idle_timer_that_came_due_while_a_request_was_handled_starts_anew_after_it():
    clock = Clock()
    channel, transport, held = _channel(clock)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    clock.advance(30)  # a slow answer: the set-aside timer comes due and does nothing
    assert not transport.disconnecting and not clock.getDelayedCalls()
    held.requests[0].finish()
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


@pytest.mark.parametrize("how", ["lost while handled", "Connection: close", "WebSocket upgrade"])
def test_a_connection_that_ends_leaves_no_idle_timer(how):
    """An upgraded connection is handed on by daphne and its request never ends: no timer of the
    HTTP channel may stay behind holding it."""
    clock = Clock()
    channel, transport, held = _channel(clock)
    extra = {"Connection: close": b"Connection: close\r\n", "WebSocket upgrade": b"Upgrade: websocket\r\n"}
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n" + extra.get(how, b"") + b"\r\n")
    if how == "WebSocket upgrade":
        assert len(held.requests) == 1
    elif how == "lost while handled":
        channel.connectionLost(None)
    else:
        held.requests[0].finish()
        assert transport.disconnecting
    assert not clock.getDelayedCalls()
