"""The edge: daphne refuses a request from its head, before it receives the body.

Twisted receives a request's whole body (past 100 kB into a temporary file) before daphne calls
the application, so the door the application keeps (proxy.gate) and the body limit it enforces
(proxy.handler) would only answer once an upload had arrived. Here, called by Twisted when a
request's headers are complete (`gotLength`):

- a `/v1` request (not a WebSocket handshake: the realtime consumer has its own door) first runs
  proxy.gate's door: a key this process holds passes at once, and its verdict (the bearer and its
  digest) goes to the application in the request's ASGI scope (`proxy.gate.PASSED`), so the
  handler does not check it again; any other bearer pauses reading while the door looks it up
  (counting refusals per client address as it always does) and is answered 401 (or 429 past the
  address's limit) without its body, or resumes (the handler's door then passes it at once);
- then a `Content-Length` over GATEWAY_MAX_BODY_MB is answered 413 `request_too_large`, on every
  path; a body without a length (chunked) is cut off with the same 413 once it passes the limit.

A refusal is the contract's envelope with `Connection: close`; the gateway then stops sending
(half-close) and discards what the client still sends for up to LINGER_S, so the client reads the
answer instead of a connection reset, then drops the connection. The door's refusals write no
call record (they never do); a /v1 body over the limit from a key that passed the door is recorded
as the preflight records it (`rejected_bad_request`).
Installed by gateway_project.server_patches (`head_refusal`), which names the Twisted internals
this relies on and the versions it was verified on.
"""

import asyncio
import functools
import io
from typing import Any, TypeAlias
from urllib.parse import unquote_to_bytes

from allocations.exceptions import GatewayError
from lib.conf import setting
from lib.http import request_id_from
from proxy import gate, views
from proxy.views import error_response
from quota.exceptions import RequestTooLarge

# daphne's WebRequest (a Twisted request) with the gateway_* attributes `install` adds; Twisted's
# request types know nothing of those, so it stays Any.
_Request: TypeAlias = Any

LINGER_S = 2.0
_PERCENT = ord("%")  # by its value: `bytes in bytes` makes and drops a TypeError before it searches
TOO_LARGE = "the request body is larger than the gateway's limit"


def install() -> None:
    from daphne.http_protocol import WebRequest

    got_length, content_chunk, process = WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process

    @functools.wraps(got_length)
    def gotLength(self: _Request, length: int | None) -> None:
        if not _head(self, length):
            self.content = io.BytesIO()  # refused: nothing of the body is kept
            return None
        return got_length(self, length)

    @functools.wraps(content_chunk)
    def handleContentChunk(self: _Request, data: bytes) -> None:
        if self.gateway_refused:
            return None
        if self.gateway_left is not None:  # no Content-Length: counted as it comes
            self.gateway_left -= len(data)
            if self.gateway_left < 0:
                return _refuse(self, RequestTooLarge(TOO_LARGE))
        return content_chunk(self, data)

    @functools.wraps(process)
    def process_after_door(self: _Request) -> None:
        if self.gateway_refused:
            return None
        door = self.gateway_door
        if door is not None and not door.done():  # the whole body came while the door looked
            door.add_done_callback(lambda _: None if self.gateway_refused or self.channel is None else process(self))
            return None
        return process(self)

    from daphne.server import Server

    create_application = Server.create_application

    @functools.wraps(create_application)
    def create_with_verdict(self: Any, protocol: _Request, scope: dict) -> Any:
        passed = getattr(protocol, "gateway_passed", None)
        if passed is not None:
            scope[gate.PASSED] = passed
        return create_application(self, protocol, scope)

    Server.create_application = create_with_verdict
    WebRequest.gateway_passed = None  # (bearer, digest) of a bearer that passed the door at once
    WebRequest.gateway_refused = False
    WebRequest.gateway_left = None  # bytes still allowed of a body without a length
    WebRequest.gateway_door = None  # the door's lookup while it runs
    WebRequest.gateway_path = b""
    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = process_after_door


def _head(request: _Request, length: int | None) -> bool:
    """False when the request was refused from its head."""
    headers = request.requestHeaders
    limit = setting("GATEWAY_MAX_BODY_MB") * 1024 * 1024
    if length is None:
        request.gateway_left = limit
    path = request.channel._path.partition(b"?")[0]
    if _PERCENT in path:  # routed as the application sees it: daphne unquotes the path
        path = unquote_to_bytes(path)
    request.gateway_path = path  # the channel forgets its request line once the body is complete
    upgrade = headers.getRawHeaders(b"upgrade")
    too_large = length is not None and length > limit
    if path.startswith(b"/v1/") and not (upgrade and upgrade[0].lower() == b"websocket"):
        key = gate.bearer((headers.getRawHeaders(b"authorization") or [b""])[0].decode("latin1"))
        digest = gate.held(key)
        if key is None or digest is None:  # who is asking comes first: an unknown key learns no limit
            _look(request, path, too_large)
            return not too_large  # an oversized body gets no temporary file while the door looks
        request.gateway_passed = (key, digest)  # handed to the application in its scope (gate.PASSED)
    if too_large:
        _refuse(request, RequestTooLarge(TOO_LARGE))
        return False
    return True


def _look(request: _Request, path: bytes, too_large: bool) -> None:
    """Runs the door on the event loop with the connection's reading paused; the application is
    not called before it has passed (WebRequest.process waits for it)."""
    transport = request.channel.transport
    transport.pauseProducing()
    expect = request.requestHeaders.getRawHeaders(b"expect")
    if expect:  # `100 Continue` only once the door passed: the client holds its body until then
        request.requestHeaders.removeHeader(b"expect")
    peer = transport.getPeer()  # a UNIX socket's peer has no address: counted as "unknown"
    scope = {
        "type": "http",
        "path": path.decode("latin1"),
        "headers": [(k.lower(), v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
        "client": (getattr(peer, "host", ""), getattr(peer, "port", 0)),
    }
    request.gateway_door = asyncio.ensure_future(gate.refusal(scope))
    request.gateway_door.add_done_callback(functools.partial(_looked, request, expect, too_large))


def _looked(request: _Request, expect: list[bytes] | None, too_large: bool, door: asyncio.Future) -> None:
    channel = request.channel
    if channel is None or request.gateway_refused:  # the client went away, or a 413 came first
        return
    error = None if door.cancelled() else door.result()
    if error is not None or too_large:
        _refuse(request, error or RequestTooLarge(TOO_LARGE), counted=error is not None)
        return
    if expect and expect[0].lower() == b"100-continue" and getattr(channel, "_version", None) == b"HTTP/1.1":
        channel._send100Continue()
    channel.transport.resumeProducing()


def _refuse(request: _Request, error: GatewayError, *, counted: bool = False) -> None:
    """Answers `error` at once on the request's connection, then lets the client go."""
    from twisted.internet import reactor

    request.gateway_refused = True
    channel = request.channel
    request.requestHeaders.removeHeader(b"expect")  # no `100 Continue` after the answer
    sent = (request.requestHeaders.getRawHeaders(b"x-request-id") or [b""])[0].decode("latin1")
    rid = request_id_from(sent)
    if not counted and request.gateway_path.startswith(b"/v1/"):
        _count(request, error, rid)
    response = error_response(error, rid)
    channel.persistent = False
    channel.dataReceived = _discard  # what the client still sends is read and dropped
    transport = channel.transport
    transport.write(
        b"HTTP/1.1 %d %s\r\n" % (response.status_code, response.reason_phrase.encode("latin1"))
        + response.serialize_headers()
        + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(response.content)
        + response.content
    )
    transport.resumeProducing()
    transport.loseWriteConnection()
    reactor.callLater(LINGER_S, transport.abortConnection)  # type: ignore[arg-type]  # a client that keeps sending is cut off


def _count(request: _Request, error: GatewayError, rid: str) -> None:
    """A /v1 body over the limit from a key that passed the door is a call refused, with its
    record (as the preflight writes it); any other refusal here counts as the door's do."""
    path = request.gateway_path.decode("latin1")
    authorization = (request.requestHeaders.getRawHeaders(b"authorization") or [b""])[0].decode("latin1")
    if isinstance(error, RequestTooLarge) and views.refused_from_head(
        path=path, request_id=rid, authorization=authorization, error=error
    ):
        return
    gate.count_refused(path, error)


def _discard(data: bytes) -> None:
    return None
