"""The server patch `head_in_one_pass` (gateway_project.request_head), driven through daphne's own
HTTP factory on an in-memory transport: for each awkward head (every input Twisted refuses, the
smuggling shapes, keep-alive, pipelining, a head split at every byte) the same bytes out, and the
same channel and request at every step, as through Twisted's own line-by-line reading."""

import asyncio
import itertools

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web.http_headers import _sanitizeLinearWhitespace

from gateway_project import request_head

from .test_bridge_patches import application

CHAT_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
CHAT = (
    b"POST /echo/chat HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer sk-x\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
)
GET = b"GET /echo/get?q=1 HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\n\r\n"


def _get(extra: bytes = b"", line: bytes = b"GET /echo HTTP/1.1") -> bytes:
    return line + b"\r\nHost: h\r\n" + extra + b"\r\n"


def _post(extra: bytes, body: bytes = b"abc") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n" + body


HEADS = {
    # what a client sends every call: the one pass takes these
    "a chat call, head and body in one read": CHAT,
    "a GET with cookies": GET,
    "Content-Length 0": _post(b"Content-Length: 0\r\n", b""),
    "Content-Length with spaces and leading zeros": _post(b"Content-Length:  003 \r\n"),
    "names in any case, a name never seen": _get(
        b"content-TYPE: a\r\nX-Never-Seen-Before-42: b\r\nx-dup: 1\r\nX-Dup: 2\r\n"
    ),
    "empty values, values with colons and every other byte": _get(
        b"X-Empty:\r\nX-Colon: a:b: c\r\nX-Bytes: " + bytes(range(1, 10)) + bytes(range(14, 256)) + b"\r\n"
    ),
    "a value with tabs and spaces around it": _get(b"X-Ws: \t a b \t\r\n"),
    "keep-alive, then Connection: close": CHAT + _get(b"Connection: close\r\n"),
    "HTTP/1.0": _get(line=b"GET /echo HTTP/1.0"),
    "HTTP/1.0 asking for keep-alive": _get(b"Connection: keep-alive\r\n", line=b"GET /echo HTTP/1.0") + GET,
    "pipelined: three in one read": GET + CHAT + _get(),
    "pipelined after Connection: close": _get(b"Connection: close\r\n") + GET,
    "pipelined after a head daphne refuses at once, HTTP/1.0": _get(b"X-Bad: a\x0bb\r\n", b"GET /e HTTP/1.0") + GET,
    "an absolute target and odd target bytes": _get(line=b"GET http://h/echo?a=\x7f\xb0 HTTP/1.1"),
    "a lower-case method": _get(line=b"get /echo HTTP/1.1"),
    "Expect: 100-continue with the body later": _post(b"Expect: 100-continue\r\nContent-Length: 3\r\n", b""),
    "the limit of header lines": _get(b"X-H: v\r\n" * 499),
    "a body over the gateway's limit": _post(b"X-Request-Id: head-1\r\nContent-Length: 999999999999\r\n", b""),
    "a long Content-Length": _post(b"X-Request-Id: head-1\r\nContent-Length: " + b"9" * 40 + b"\r\n", b""),
    # what Twisted refuses or treats specially: each must keep its answer
    "Content-Length and Transfer-Encoding": _post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
    "Transfer-Encoding and Content-Length": _post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n"),
    "two Content-Lengths, the same": _post(b"Content-Length: 3\r\nContent-Length: 3\r\n"),
    "two Content-Lengths, different": _post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
    "a signed Content-Length": _post(b"Content-Length: +3\r\n"),
    "a negative Content-Length": _post(b"Content-Length: -1\r\n"),
    "a hexadecimal Content-Length": _post(b"Content-Length: 0x3\r\n"),
    "an empty Content-Length": _post(b"Content-Length:\r\n"),
    "a chunked body": _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "a bad chunk size": _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    "a chunk without its CRLF": _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcX0\r\n\r\n"),
    "Transfer-Encoding gzip": _post(b"Transfer-Encoding: gzip\r\n"),
    "Transfer-Encoding identity": _post(b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n"),
    "a space before the colon": _get(b"Host : h\r\n"),
    "a name that is not a token": _get(b"X(y): v\r\n"),
    "an empty name": _get(b": v\r\n"),
    "a line without a colon": _get(b"Host\r\n"),
    "a NUL in a value": _get(b"X-Nul: a\x00b\r\n"),
    "a NUL in a name": _get(b"X\x00Y: v\r\n"),
    "a bare CR in a value": _get(b"X-Cr: a\rb\r\n"),
    "a bare LF in a value": _get(b"X-Lf: a\nb\r\n"),
    "bare LFs for line ends": b"GET /echo HTTP/1.1\nHost: h\n\n",
    "a bare LF ending the request line": b"GET /echo HTTP/1.1\nHost: h\r\n\r\n",
    "a bare LF ending the head": b"GET /echo HTTP/1.1\r\nHost: h\r\n\n\r\n",
    "obsolete line folding": _get(b"X-Fold: a\r\n b\r\n\tc\r\n"),
    "folding with a colon": _get(b"X-Fold: a\r\n b: c\r\n"),
    "folding right after the request line": b"GET /echo HTTP/1.1\r\n X: y\r\nHost: h\r\n\r\n",
    "one header line over the limit": _get(b"X-H: v\r\n" * 501),
    # the head's bytes up to its end, 36 + n: the one pass takes at most 16,384 of them; Twisted
    # counts the lines without their CRLFs, 32 + n, against its 16,384, and each line against 16,384
    "a head at the one pass's size limit": _get(b"X-Big: " + b"v" * 16348 + b"\r\n"),
    "a head past it, within Twisted's": _get(b"X-Big: " + b"v" * 16349 + b"\r\n"),
    "a head over Twisted's size limit": _get(b"X-Big: " + b"v" * 16353 + b"\r\n"),
    "a line over the line limit": _get(b"X-Big: " + b"v" * 16400 + b"\r\n"),
    "a line over the line limit, no head's end": b"GET /" + b"a" * 17000,
    "an empty line before the request (once)": b"\r\n" + _get(),
    "two empty lines before the request": b"\r\n\r\n" + _get(),
    "an empty line between pipelined requests": GET + b"\r\n" + GET,
    "HTTP/1.2": _get(line=b"GET /echo HTTP/1.2"),
    "HTTP/2.0": _get(line=b"GET /echo HTTP/2.0"),
    "a lower-case version": _get(line=b"GET /echo http/1.1"),
    "two spaces in the request line": _get(line=b"GET  /echo HTTP/1.1"),
    "a tab in the request line": _get(line=b"GET\t/echo HTTP/1.1"),
    "no version": _get(line=b"GET /echo"),
    "a method that is not a token": _get(line=b"G(T /echo HTTP/1.1"),
    "a target with a byte past 0xB0": _get(line=b"GET /echo\xb1 HTTP/1.1"),
    "a target with a control byte": _get(line=b"GET /ec\x7fho\x01 HTTP/1.1"),
    "an empty request line": b"\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


# answered by Twisted's bare 400 and a closed connection
REFUSED = {
    "Content-Length and Transfer-Encoding",
    "Transfer-Encoding and Content-Length",
    "two Content-Lengths, the same",
    "two Content-Lengths, different",
    "a signed Content-Length",
    "a negative Content-Length",
    "a hexadecimal Content-Length",
    "an empty Content-Length",
    "a bad chunk size",
    "a chunk without its CRLF",
    "Transfer-Encoding gzip",
    "a space before the colon",
    "a name that is not a token",
    "an empty name",
    "a line without a colon",
    "a NUL in a value",
    "a NUL in a name",
    "a bare CR in a value",
    "a bare LF in a value",
    "a bare LF ending the request line",
    "folding right after the request line",
    "one header line over the limit",
    "a head over Twisted's size limit",
    "two empty lines before the request",
    "HTTP/1.2",
    "HTTP/2.0",
    "a lower-case version",
    "two spaces in the request line",
    "a tab in the request line",
    "no version",
    "a method that is not a token",
    "a target with a byte past 0xB0",
    "a target with a control byte",
    "an empty request line",
    "garbage",
}


class _Transport(StringTransport):
    """StringTransport with the half-close the gateway's refusals make."""

    def loseWriteConnection(self):
        self.write_closed = True


def _state(channel) -> tuple:
    """What Twisted's reading leaves on a channel and its newest request, for comparing."""
    decoder = channel._transferDecoder
    request = channel.requests[-1] if channel.requests else None
    return (
        len(channel.requests),
        channel.line_mode,
        channel._buffer,
        channel._busyReceiving,
        channel._HTTPChannel__first_line,
        channel._HTTPChannel__header,
        channel.length,
        channel._receivedHeaderCount,
        channel._receivedHeaderSize,
        bool(channel.persistent),
        channel._handlingRequest,
        list(channel._dataBuffer),
        None if decoder is None else (type(decoder).__name__, getattr(decoder, "contentLength", None)),
        tuple(getattr(channel, name, None) for name in ("_command", "_path", "_version")),
        "dataReceived" in vars(channel),
        channel.transport.disconnecting,
        None
        if request is None
        else [(name, list(values)) for name, values in request.requestHeaders.getAllRawHeaders()],
        None if request is None else request.received_cookies,
    )


async def _serve(pieces: list[bytes], trace: list) -> bytes:
    """Everything daphne writes for `pieces`, each one read, on one in-memory connection; `trace`
    gets the channel's state as each head is complete and after each read."""
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server

    server = Server(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"])  # never run: no socket
    server.connections = {}
    transport = _Transport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=IPv4Address("TCP", "127.0.0.1", 4321)
    )
    protocol = HTTPFactory(server).buildProtocol(None)
    protocol.makeConnection(transport)
    channel = protocol._channel
    for piece in pieces:
        protocol.dataReceived(piece)
        trace.append(("read", transport.value(), _state(channel)))
        for _ in range(20):  # the applications run; what they send is written
            await asyncio.sleep(0)
    channel.connectionLost(None)
    return transport.value()


async def _both(pieces: list[bytes], monkeypatch) -> tuple[tuple[bytes, list], tuple[bytes, list]]:
    """(bytes, trace) through the one pass, then through Twisted's own dataReceived."""
    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    runs = []
    all_headers = http.HTTPChannel.allHeadersReceived
    for patched in (True, False):
        trace: list = []

        def headers_received(self, trace=trace):
            trace.append(("head", _state(self)))
            return all_headers(self)

        with monkeypatch.context() as undo:
            undo.setattr(http.HTTPChannel, "allHeadersReceived", headers_received)
            if not patched:
                undo.setattr(http.HTTPChannel, "dataReceived", http.HTTPChannel.dataReceived.__wrapped__)
            runs.append((await _serve(pieces, trace), trace))
    return runs[0], runs[1]


@pytest.mark.parametrize("name", list(HEADS))
async def test_the_one_pass_reads_every_head_as_twisted_does(name, monkeypatch):
    patched, own = await _both([HEADS[name]], monkeypatch)
    assert patched == own
    if name in REFUSED:
        assert patched[0] == b"HTTP/1.1 400 Bad Request\r\n\r\n"


@pytest.mark.parametrize(
    "name", ["a chat call, head and body in one read", "pipelined: three in one read", "obsolete line folding"]
)
async def test_a_head_split_at_any_byte_is_read_as_twisted_does(name, monkeypatch):
    raw = HEADS[name]
    for at in range(1, len(raw)):
        patched, own = await _both([raw[:at], raw[at:]], monkeypatch)
        assert patched == own, at


READS = {
    "keep-alive, each request in its reads": [
        CHAT,
        GET,
        _post(b"Expect: 100-continue\r\nContent-Length: 3\r\n", b""),
        b"abc",
        CHAT[:30],
        CHAT[30:],
        GET,
    ],
    "the head's lines a read each": [line + b"\r\n" for line in GET.split(b"\r\n")[:-1]],
    "a second request line where a header belongs": [b"GET /a HTTP/1.1\r\n", b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"],
    "an empty line in a read of its own, then a request": [b"\r\n", GET],
    "two empty lines in reads of their own, then a request": [b"\r\n", b"\r\n", GET],
    "a body, then the next head in the same read": [_post(b"Content-Length: 3\r\n", b""), b"abc" + GET],
}


@pytest.mark.parametrize("name", list(READS))
async def test_requests_over_several_reads_are_read_as_twisted_does(name, monkeypatch):
    patched, own = await _both(READS[name], monkeypatch)
    assert patched == own
    if name == "keep-alive, each request in its reads":
        assert patched[0].count(b"HTTP/1.1 200 OK") == 5 and patched[0].count(b"HTTP/1.1 100 Continue") == 1


def test_a_channel_no_longer_persistent_drops_what_comes_as_twisted_does():
    """A connection that will close after its response (the drain marks busy ones so) reads no
    request after it, whole heads included."""
    from twisted.internet.task import Clock

    from .test_bridge_patches import _channel

    channel, transport, held = _channel(Clock())
    channel.persistent = False
    channel.dataReceived(GET)
    assert held.requests == [] and transport.value() == b""


async def test_the_common_heads_take_the_one_pass_and_the_rest_twisteds_lines(monkeypatch):
    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    taken, lines = [], []
    take, line_received = request_head.take, http.HTTPChannel.lineReceived
    monkeypatch.setattr(
        request_head, "take", lambda channel, data, head: taken.append(head) or take(channel, data, head)
    )
    monkeypatch.setattr(
        http.HTTPChannel, "lineReceived", lambda self, line: lines.append(line) or line_received(self, line)
    )
    await _serve([CHAT, GET, _post(b"Content-Length: 3\r\n")], [])
    assert len(taken) == 3 and not lines
    assert [head[2] for head in taken] == [len(CHAT_BODY), None, 3]
    await _serve([HEADS["Content-Length and Transfer-Encoding"]], [])
    assert len(taken) == 3 and lines[0] == b"POST /echo HTTP/1.1"


def _request_lines():
    """Request lines around Twisted's form: each byte at each place, and the shapes."""
    for byte in range(256):
        one = bytes([byte])
        yield one + b"ET /a HTTP/1.1"
        yield b"GET /" + one + b" HTTP/1.1"
        yield b"GET /a HTTP/1." + one
        yield b"GET /a " + one + b"TTP/1.1"
    yield from (b"GET / HTTP/1.1", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b" GET / HTTP/1.1", b"GET HTTP/1.1")
    yield from (b"", b"GET", b"GET / HTTP/1.0", b"GET / HTTP/1.10", b"GET / HTTP/11", b"GET /a /b HTTP/1.1")


def test_the_request_line_form_is_twisteds():
    for line in _request_lines():
        try:
            expected = http._parseRequestLine(line)
        except ValueError:
            expected = None
        match = request_head.REQUEST_LINE(line)
        assert (match.groups() if match else None) == expected, line


def test_a_header_value_without_cr_or_lf_is_left_as_it_is_by_twisteds_sanitising():
    for first, second in itertools.product(range(256), repeat=2):
        value = bytes([first, second])
        if 13 not in value and 10 not in value:
            assert _sanitizeLinearWhitespace(value) == value
    assert _sanitizeLinearWhitespace(b"") == b""


def test_a_head_read_restarts_the_idle_timer_as_twisteds_read_does():
    """The idle timeout counts from the connection's last read, the head's included: a body that
    follows its head within the timeout is read, one that does not is timed out."""
    from twisted.internet.task import Clock

    from .test_bridge_patches import _channel

    clock = Clock()
    channel, transport, held = _channel(clock)
    clock.advance(8)
    channel.dataReceived(_post(b"Content-Length: 3\r\n", b""))  # taken by the one pass
    clock.advance(9)
    assert not transport.disconnecting  # 17 s since the connection, 9 since the head
    channel.dataReceived(b"ab")
    clock.advance(10.5)
    assert transport.disconnecting and len(held.requests) == 1


def test_a_read_on_a_closing_connection_is_read_as_twisted_does(monkeypatch):
    """Twisted reads one line of it and stops (it looks at the transport after each line)."""
    from twisted.internet.task import Clock

    from .test_bridge_patches import _channel

    states = []
    for patched in (True, False):
        with monkeypatch.context() as undo:
            if not patched:
                undo.setattr(http.HTTPChannel, "dataReceived", http.HTTPChannel.dataReceived.__wrapped__)
            channel, transport, held = _channel(Clock())
            transport.loseConnection()
            channel.dataReceived(GET)
            states.append((_state(channel), transport.value(), len(held.requests)))
    assert states[0] == states[1]


def test_whether_a_factory_is_non_queued_is_zope_s_answer_for_each_factory_in_turn():
    from twisted.web.iweb import INonQueuedRequestFactory
    from zope.interface import implementer

    @implementer(INonQueuedRequestFactory)
    class NonQueued:
        pass

    class Queued:
        pass

    for factory in (NonQueued, NonQueued, Queued, Queued, NonQueued, http.Request):
        assert request_head._non_queued(factory) is bool(INonQueuedRequestFactory.providedBy(factory))
