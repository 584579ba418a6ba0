"""Every change this project makes to the code of its server stack, in one place.

daphne (on Twisted, with autobahn for WebSockets) is the server; `proxy.handler.ProxyHandler`
replaces Django's ASGI handler for /v1. Each of these leans on internals that a new release may
change without notice, so each patch below names the versions it was verified on, and `check()`
compares them with the installed ones when the server starts:

- an installed version that no patch was verified on is an error naming the patch; the server
  refuses to start (`UnverifiedServer`) unless `GATEWAY_ALLOW_UNVERIFIED_SERVER=1`, which turns it
  into a logged error. Refusing is the default because two of the patches decide whether a call
  is billed (the drain, the close codes), and a deploy that stops at once is cheaper than spend
  that silently goes missing;
- a patched attribute that no longer exists always refuses to start: the patch cannot apply.

To upgrade daphne, Twisted, autobahn or Django: run `tests/serving/` against the new version
(it drives a real daphne process), then add the version to the patches' `verified`.
"""

import asyncio
import collections
import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib import asgi, inflight

if TYPE_CHECKING:
    from daphne.http_protocol import WebRequest
    from daphne.server import Server
    from twisted.internet import defer

logger = logging.getLogger(__name__)

ALLOW_ENV = "GATEWAY_ALLOW_UNVERIFIED_SERVER"
DAPHNE = ("4.2.3",)
TWISTED = ("26.10.0",)
AUTOBAHN = ("26.10.2",)
DJANGO = ("5.2.19",)
AIOHTTP = ("3.14.5",)


class UnverifiedServer(RuntimeError):
    """The installed server stack is not the one the patches were verified on."""


@dataclass(frozen=True)
class Patch:
    name: str
    verified: dict[str, tuple[str, ...]]  # distribution -> versions the patch was tested on
    targets: tuple[str, ...]  # "module:Class.attribute" the patch replaces or relies on
    apply: Callable[[], None] | None  # None: the code lives where it is used (see `why`)
    why: str


def _websocket_close_codes() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.handle_reply

    @functools.wraps(original)
    def handle_reply(self: WebSocketProtocol, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.close" and self.state not in (self.STATE_CONNECTING, self.STATE_CLOSED):
            code = message.get("code") or 1000
            reason = message.get("reason") or ""
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123] if reason else None)
            return None
        return original(self, message)

    WebSocketProtocol.handle_reply = handle_reply


def _form_parse_off() -> None:
    from daphne.http_protocol import WebRequest

    original = WebRequest.__init__

    @functools.wraps(original)
    def __init__(self: WebRequest, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = __init__


def _request_log_off() -> None:
    from daphne.http_protocol import HTTPFactory

    HTTPFactory.log = lambda self, request: None


def _head_in_one_pass() -> None:
    from . import request_head

    request_head.install()


def _head_refusal() -> None:
    from . import edge

    edge.install()


def _direct_body_writes() -> None:
    from twisted.internet import tcp
    from twisted.web.http import HTTPChannel

    _plain_tcp[0] = tcp.Server

    HTTPChannel._held_head = None  # type: ignore[attr-defined]  # see _head_with_first_write

    def write(self: HTTPChannel, data: bytes) -> None:
        if self._held_head:  # type: ignore[attr-defined]
            data = _taking_held_head(self, (data,))
        if not _sent_now(self.transport, data):
            self.transport.write(data)  # type: ignore[union-attr, call-arg, misc]  # zope's ITransport: no self

    def writeSequence(self: HTTPChannel, iovec: Sequence[bytes]) -> None:
        data = _taking_held_head(self, iovec)
        if not _sent_now(self.transport, data):
            self.transport.write(data)  # type: ignore[union-attr, call-arg, misc]  # zope's ITransport: no self

    HTTPChannel.write = functools.wraps(HTTPChannel.write)(write)  # type: ignore[method-assign]
    HTTPChannel.writeSequence = functools.wraps(HTTPChannel.writeSequence)(writeSequence)  # type: ignore[method-assign]


def _body_parts_direct() -> None:
    from daphne.server import Server

    original = Server.handle_reply

    @functools.wraps(original)
    async def handle_reply(self: Server, protocol: "WebRequest", message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body" and message.get("more_body") and _part(self, protocol, message):
            return
        details = self.connections.get(protocol)  # daphne's own steps from here, in one coroutine
        if details is None or details.get("disconnected", None):
            return
        if kind == "http.response.start":  # check_headers_type looks at nothing else
            try:
                self.check_headers_type(message)
            except ValueError:
                protocol.basic_error(500, b"Server Error", "Server Error")
                raise
        protocol.handle_reply(message)

    Server.handle_reply = handle_reply


def _part(server: "Server", protocol: "WebRequest", message: dict[str, Any]) -> bool:
    """Writes a body part of a chunked response already under way (a streamed answer's every part
    after the first) as daphne's WebRequest.handle_reply and Twisted's Request.write would; False
    for anything else (the first part, a connection gone or finished), which takes their way."""
    details = server.connections.get(protocol)
    return details is not None and _write_part(details, protocol, message.get("body", b""))


def _write_part(details: dict[str, Any], protocol: "WebRequest", data: bytes) -> bool:
    if (
        details.get("disconnected")
        or not protocol.startedWriting
        or not protocol.chunked
        or protocol.finished
        or protocol._disconnected
        or protocol.channel is None
        or protocol.method == b"HEAD"
    ):
        return False
    if data:
        protocol.sentLength += len(data)
        frame = b"%x\r\n%b\r\n" % (len(data), data)
        transport = protocol.channel.transport
        if not _sent_now(transport, frame):
            transport.write(frame)
    return True


def part_writer(send: Callable) -> "Callable[[bytes], bool] | None":
    """lib.asgi.part_writer for daphne: the writer of the body parts of the response that `send`
    (daphne's `partial(Server.handle_reply, protocol)`) has under way, each written as `_part`
    writes it; None for any other `send`."""
    from daphne.server import Server

    if not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    server, protocol = getattr(send.func, "__self__", None), send.args[0]
    details = server.connections.get(protocol) if isinstance(server, Server) else None
    return None if details is None else functools.partial(_write_part, details, protocol)


def _stream_parts_direct() -> None:
    asgi.part_writer = part_writer


def _head_with_first_write() -> None:
    from twisted.web.http import HTTPChannel, Request
    from twisted.web.http_headers import Headers

    original_write, original_headers = Request.write, HTTPChannel.writeHeaders
    HTTPChannel._held_head = None  # type: ignore[attr-defined]  # the header lines kept for the first body write

    @functools.wraps(original_write)
    def write(self: Request, data: bytes) -> None:
        channel = self.channel
        if self.startedWriting or not data or channel is None or self.method == b"HEAD" or self._disconnected:
            return original_write(self, data)
        held: list[bytes] = []
        channel._held_head = held  # type: ignore[attr-defined]
        try:
            original_write(self, data)
        finally:
            channel._held_head = None  # type: ignore[attr-defined]
            if held:  # kept, and no body write took them (a code that has no body): they go alone
                channel.transport.writeSequence(held)  # type: ignore[union-attr, call-arg, misc]  # zope's ITransport

    @functools.wraps(original_headers)
    def writeHeaders(self: HTTPChannel, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        held = self._held_head  # type: ignore[attr-defined]
        if held is None or not isinstance(headers, Headers):
            return original_headers(self, version, code, reason, headers)
        held.extend((version, b" ", code, b" ", reason, b"\r\n"))
        for name, values in headers.getAllRawHeaders():
            for value in values:
                held.extend((name, b": ", value, b"\r\n"))
        held.append(b"\r\n")

    Request.write = write  # type: ignore[method-assign]
    HTTPChannel.writeHeaders = writeHeaders  # type: ignore[method-assign]


def _taking_held_head(channel: Any, iovec: Sequence[bytes]) -> bytes:
    """The bytes of a body write, after the response's header lines when they were kept for it."""
    held = channel._held_head
    if not held:
        return b"".join(iovec)
    data = b"".join((*held, *iovec))
    held.clear()
    return data


_plain_tcp: list[Any] = [None]  # twisted.internet.tcp.Server, once direct_body_writes applied


def _sent_now(transport: Any, data: bytes) -> bool:  # a Twisted transport: TLS, TCP or other
    """Sends `data` at once when the connection has nothing buffered (plain TCP, open: a socket
    send, as tcp.Connection.writeSomeData makes without its memoryview slice and retry loop); True when
    all of it went. Else (a part sent, or none) the rest is left for the caller to buffer: Twisted
    then writes it when the socket can take it, and reports any error of the connection."""
    if (
        type(transport) is not _plain_tcp[0]
        or transport.TLS
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        return False
    try:
        sent = transport.socket.send(data)
    except OSError:  # EWOULDBLOCK, EINTR, a connection gone: Twisted's buffered write retries or reports it
        return False
    if sent <= 0:
        return False
    if sent < len(data):
        transport.write(data[sent:])
    return True


# A byte looked for by its value: `bytes in bytes` first tries its operand as an integer and makes,
# then drops, a TypeError before it searches.
_UNDERSCORE, _QUESTION_MARK = ord("_"), ord("?")


def _process_without_deferreds() -> None:
    from urllib.parse import unquote

    from daphne import http_protocol, utils
    from daphne.http_protocol import WebRequest

    original = WebRequest.process
    name_ok = utils.HEADER_NAME_RE.fullmatch
    bad_value = re.compile(b"[%s]" % re.escape(bytes(sorted(utils.INVALID_HEADER_VALUE_BYTES)))).search
    log = http_protocol.logger

    def process(self: Any) -> Any:
        """daphne's WebRequest.process, step by step, as a plain method (see the patch's why); a
        WebSocket handshake, once per connection, goes through daphne's own."""
        upgrade = self.requestHeaders.getRawHeaders(b"Upgrade")
        if upgrade and upgrade[0].lower() == b"websocket":
            return original(self)
        try:
            self.request_start = time.time()
            # the header checks, and the application's headers gathered in the same pass
            clean_headers, root_paths = [], []
            for name, values in self.requestHeaders.getAllRawHeaders():
                if not name_ok(name):
                    self.basic_error(400, b"Bad Request", "Invalid header name")
                    return
                for value in values:
                    if bad_value(value):
                        self.basic_error(400, b"Bad Request", "Invalid header value")
                        return
                if _UNDERSCORE in name:  # CVE-2015-0219
                    continue
                lower = name.lower()
                if lower == b"daphne-root-path":
                    root_paths.extend(values)
                else:
                    clean_headers.extend([(lower, value) for value in values])
            client = self.client
            if hasattr(client, "host") and hasattr(client, "port"):
                self.client_addr = [str(client.host), client.port]
                self.server_addr = [str(self.host.host), self.host.port]
            self.client_scheme = "https" if self.isSecure() else "http"
            server = self.server
            if server.proxy_forwarded_address_header:
                self.client_addr, self.client_scheme = utils.parse_x_forwarded_for(
                    self.requestHeaders,
                    server.proxy_forwarded_address_header,
                    server.proxy_forwarded_port_header,
                    server.proxy_forwarded_proto_header,
                    self.client_addr,
                    self.client_scheme,
                )
            try:
                path = self.path.decode("ascii")
            except UnicodeDecodeError:
                self.path = b"/"
                self.basic_error(400, b"Bad Request", "Invalid characters in path")
                return
            self.query_string = b""
            if _QUESTION_MARK in self.uri:
                self.query_string = self.uri.split(b"?", 1)[1]
                try:
                    self.query_string.decode("ascii")
                except UnicodeDecodeError:
                    self.basic_error(400, b"Bad Request", "Invalid query string")
                    return
            self.clean_headers = clean_headers
            self.root_path = server.root_path
            for value in root_paths:
                self.root_path = unquote(value.decode("ascii"))
            log.debug("HTTP %s request for %s", self.method, self.client_addr)
            self.content.seek(0, 0)
            self.application_queue = server.create_application(
                self,
                {
                    "type": "http",
                    "http_version": self.clientproto.split(b"/")[-1].decode("ascii"),
                    "method": self.method.decode("ascii"),
                    "path": unquote(path),
                    "raw_path": self.path,
                    "root_path": self.root_path,
                    "scheme": self.client_scheme,
                    "query_string": self.query_string,
                    "headers": clean_headers,
                    "client": self.client_addr,
                    "server": self.server_addr,
                },
            )
            if self.application_queue is None or self.content.closed:
                return  # the request was abandoned meanwhile
            buffer_size = server.request_buffer_size
            while True:
                chunk = self.content.read(buffer_size)
                more_body = not (len(chunk) < buffer_size)
                self.application_queue.put_nowait({"type": "http.request", "body": chunk, "more_body": more_body})
                if not more_body:
                    break
        except Exception:  # noqa: BLE001 - daphne's own answer to any error here: a logged 500
            log.error(traceback.format_exc())
            self.basic_error(500, b"Internal Server Error", "Daphne HTTP processing error")

    WebRequest.process = functools.wraps(WebRequest.process)(process)


class _Inbox:
    """The messages daphne hands one application (its `receive`): asyncio.Queue's put_nowait and
    get, without the bound, the task count and the join event that daphne never uses."""

    __slots__ = ("_items", "_getters")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        items = self._items
        while not items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if items and not getter.cancelled():
                    self._wake()  # an item came as this getter was cancelled: the next getter takes it
                raise
        return items.popleft()

    def _wake(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return


def _light_application_queue() -> None:
    from daphne.server import Server

    original = Server.create_application

    @functools.wraps(original)
    def create_application(self: Server, protocol: Any, scope: dict) -> Any:
        assert "application_instance" not in self.connections[protocol]
        inbox = _Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(scope=scope, receive=inbox.get, send=functools.partial(self.handle_reply, protocol))
        details = self.connections.get(protocol)
        if details is None:
            return None
        loop = asyncio.get_event_loop()
        details["application_instance"] = (
            loop.create_task(instance) if asyncio.iscoroutine(instance) else asyncio.ensure_future(instance, loop=loop)
        )
        return inbox

    Server.create_application = create_application


def _finish_without_log_details() -> None:
    from daphne.http_protocol import WebRequest
    from twisted.web import http

    request_class = _unproxied(http).Request
    original = WebRequest.handle_reply

    @functools.wraps(original)
    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        if (
            message.get("type") == "http.response.body"
            and not message.get("more_body", False)
            and not self.server.action_logger
            and self._response_started
            and not self.finished
            and self.channel is not None
        ):
            request_class.write(self, message.get("body", b""))
            self.finish()
            return None
        return original(self, message)

    WebRequest.handle_reply = handle_reply


def _response_in_one_write() -> None:
    from daphne import http_protocol
    from daphne.http_protocol import WebRequest
    from twisted.web import http
    from twisted.web.http_headers import Headers, _nameEncoder

    twisted_http = _unproxied(http)
    no_body, responses = twisted_http.NO_BODY_CODES, twisted_http.RESPONSES
    canonical_name = _nameEncoder._canonicalHeaderCache.get
    log = http_protocol.logger
    original = WebRequest.handle_reply

    @functools.wraps(original)
    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if (
                self.finished
                or self.channel is None
                or self._response_started
                or "status" not in message
                or type(self.responseHeaders) is not Headers
            ):
                return original(self, message)
            # daphne's steps: the code, the application's headers in order, daphne's Server header
            self._response_started = True
            status = message["status"]
            self.code, self.code_message = status, responses.get(status, b"Unknown Status")  # setResponseCode
            response_headers = self.responseHeaders
            _add_raw_headers(response_headers, message.get("headers", {}), canonical_name)
            server_name = self.server.server_name
            if server_name and b"Server" not in response_headers._rawHeaders:
                self.setHeader(b"server", server_name.encode())
            log.debug("HTTP %s response started for %s", status, self.client_addr)
            return None
        if (
            kind == "http.response.body"
            and not message.get("more_body", False)
            and not self.server.action_logger
            and self._response_started
            and not self.finished
            and self.channel is not None
            and _wrote_whole(self, message.get("body", b""), no_body, Headers)
        ):
            self.finish()  # as finish_without_log_details: no access log, no details built
            return None
        return original(self, message)

    WebRequest.handle_reply = handle_reply


def _add_raw_headers(headers: Any, items: Any, canonical_name: Callable[[bytes], bytes | None]) -> None:
    """Headers.addRawHeader for each (name, value), in order: a bytes name Twisted has already
    canonicalised (`canonical_name`, its encoder's cache lookup: the cache holds only names that
    passed its token check) with a bytes value that has no CR or LF (which Twisted's sanitising
    would fold) goes straight in, as addRawHeader puts it; any other goes through addRawHeader
    itself (its encoding, its check, its refusal)."""
    raw = headers._rawHeaders
    for name, value in items:
        canonical = canonical_name(name) if type(name) is bytes else None
        if canonical is not None and type(value) is bytes and _CR not in value and _LF not in value:
            raw.setdefault(canonical, []).append(value)
        else:
            headers.addRawHeader(name, value)


_CR, _LF = ord("\r"), ord("\n")


def _wrote_whole(request: Any, body: bytes, no_body: Any, headers_class: Any) -> bool:
    """What Twisted's Request.write does with a response's only body write when the application
    gave its length, done in one: the status line, the headers and the body as one channel write
    (the bytes head_with_first_write gives), the length counted. False, with nothing done, for
    anything else (a body already begun, HEAD, a code without a body, no length: a chunked answer,
    Twisted's own response headers, a connection gone), which takes Twisted's way. Request.write
    replaces an instance's own write only once it has begun (HEAD, codes without a body), so
    nothing here reads the request's __dict__, which would give its attributes a dict of their own
    and make every later lookup of them slower."""
    channel = request.channel
    headers = request.responseHeaders
    if (
        request.startedWriting
        or type(body) is not bytes
        or request._disconnected
        or request.method == b"HEAD"
        or request.code in no_body
        or request.lastModified is not None
        or request.etag is not None
        or request.cookies
        or getattr(channel, "_held_head", None) is not None
        or type(headers) is not headers_class
        or not headers._rawHeaders.get(b"Content-Length")
    ):
        return False
    request.startedWriting = 1
    parts = [request.clientproto, b" ", b"%d" % (request.code,), b" ", request.code_message, b"\r\n"]
    for name, values in headers._rawHeaders.items():
        for value in values:
            parts += (name, b": ", value, b"\r\n")
    parts += (b"\r\n", body)
    request.sentLength = request.sentLength + len(body)
    channel.write(b"".join(parts))
    return True


def _unpark(channel: Any) -> Any:
    """The idle timer set aside while the channel's request is handled (a DelayedCall), if any,
    taken from it."""
    timer, channel._parked_timer = channel._parked_timer, None
    return timer


def _idle_timer_kept() -> None:
    from twisted.web.http import HTTPChannel

    all_content, done, lost = HTTPChannel.allContentReceived, HTTPChannel.requestDone, HTTPChannel.connectionLost
    timed_out = HTTPChannel._TimeoutMixin__timedOut  # type: ignore[attr-defined]
    HTTPChannel._parked_timer = None  # type: ignore[attr-defined]  # the idle timer while a request is handled

    @functools.wraps(all_content)
    def allContentReceived(self: Any) -> None:
        timer = self._TimeoutMixin__timeoutCall
        # hidden from the setTimeout(None) that would cancel it; not for an upgrade (a WebSocket):
        # daphne hands its connection on and the request never ends, so Twisted's cancel stands
        if timer is not None and self.timeOut and not self.requests[-1].requestHeaders.hasHeader(b"upgrade"):
            self._TimeoutMixin__timeoutCall = None
            self._parked_timer = timer
        all_content(self)

    @functools.wraps(done)
    def requestDone(self: Any, request: Any) -> None:
        if (timer := _unpark(self)) is not None:
            if (
                timer.active()
                and self.persistent
                and self._savedTimeOut
                and self._TimeoutMixin__timeoutCall is None
                and self.requests
                and request is self.requests[0]
            ):
                self._TimeoutMixin__timeoutCall = timer  # the setTimeout(saved) below re-arms it from now
            elif timer.active():
                timer.cancel()
        done(self, request)

    @functools.wraps(timed_out)
    def timedOut(self: Any) -> None:
        parked = self._parked_timer
        if parked is not None and parked.called:  # came due while a request was handled: Twisted had cancelled it
            self._parked_timer = None
            return
        timed_out(self)

    @functools.wraps(lost)
    def connectionLost(self: Any, reason: Any) -> None:
        if (timer := _unpark(self)) is not None and timer.active():
            timer.cancel()
        lost(self, reason)

    HTTPChannel.allContentReceived = allContentReceived  # type: ignore[method-assign]
    HTTPChannel.requestDone = requestDone  # type: ignore[method-assign]
    HTTPChannel._TimeoutMixin__timedOut = timedOut  # type: ignore[attr-defined]
    HTTPChannel.connectionLost = connectionLost  # type: ignore[method-assign]


def _drain_on_shutdown() -> None:
    from daphne.server import Server

    Server.kill_all_applications = _drain_then_kill


def _reap_at_completion() -> None:
    from daphne.server import Server

    disconnected = Server.protocol_disconnected
    create_application = Server.create_application

    @functools.wraps(disconnected)
    def protocol_disconnected(self: Server, protocol: Any) -> None:
        disconnected(self, protocol)
        _reap(self, protocol)

    @functools.wraps(create_application)
    def create(self: Server, protocol: Any, scope: dict) -> Any:
        queue = create_application(self, protocol, scope)
        application = self.connections.get(protocol, {}).get("application_instance")
        if application is not None:
            application.add_done_callback(lambda _: _reap(self, protocol))
        return queue

    Server.protocol_disconnected = protocol_disconnected
    Server.create_application = create


def _reap(server: "Server", protocol: Any) -> None:
    """What daphne's once-a-second application_checker does for one connection whose application
    ended cleanly and whose client is gone (an HTTP response finished, a socket closed): it leaves
    the server's table now, whichever of the two came last. An application that raised stays for
    the checker, which logs it as daphne always has."""
    details = server.connections.get(protocol)
    if details is None or "disconnected" not in details:
        return
    application = details.get("application_instance")
    if application is None or not application.done():
        return
    if application.cancelled() or application.exception() is None:
        del server.connections[protocol]


def _connection_facts_once() -> None:
    from twisted.web.http import HTTPChannel

    for name in ("getPeer", "getHost", "isSecure"):
        setattr(HTTPChannel, name, _remembered_per_transport(HTTPChannel, name))


def _remembered_per_transport(cls: type, name: str) -> Callable[[Any], Any]:
    """`cls.name(channel)` asked once per transport of the channel: what it answers (the
    connection's two addresses, whether it is TLS) cannot change while the transport is the same.
    What it answered is an attribute of the channel with a default on the class: nothing reads the
    channel's __dict__, which in CPython 3.11 would give its attributes a dict of their own and make
    every later lookup of them (Twisted's and daphne's, several dozen a request) a slower one."""
    original = getattr(cls, name)
    slot = f"_remembered_{name}"
    setattr(cls, slot, None)

    @functools.wraps(original)
    def remembered(self: Any) -> Any:
        transport = self.transport
        held = getattr(self, slot)
        if held is not None and held[0] is transport:
            return held[1]
        value = original(self)
        if transport is not None:
            setattr(self, slot, (transport, value))
        return value

    return remembered


def _auto_headers_without_copies() -> None:
    """aiohttp's ClientRequest.update_auto_headers, for a request whose skip set is a frozenset
    (the session's own, the same object every request): the CIMultiDict of the skipped names,
    sorted, made once per set and copied for each request (each still gets a mutable one of its
    own), and a default header added when neither the request's headers nor the skip set name it,
    without the copy of the request's headers extended by the skip set that aiohttp makes to ask
    that. Any other skip set (a request's own names joined to the session's: a set) or none goes
    through aiohttp's own."""
    from aiohttp import client_reqrep, hdrs
    from multidict import CIMultiDict

    request_class = client_reqrep.ClientRequest
    original = request_class.update_auto_headers
    user_agent, software = hdrs.USER_AGENT, client_reqrep.SERVER_SOFTWARE
    made: dict[frozenset, Any] = {}

    @functools.wraps(original)
    def update_auto_headers(self: Any, skip_auto_headers: Any) -> None:
        if type(skip_auto_headers) is not frozenset:
            return original(self, skip_auto_headers)
        skipped = made.get(skip_auto_headers)
        if skipped is None:
            if len(made) >= 64:
                made.clear()
            skipped = made[skip_auto_headers] = CIMultiDict((hdr, None) for hdr in sorted(skip_auto_headers))
        self._skip_auto_headers = skipped.copy()
        headers = self.headers
        for hdr, val in self.DEFAULT_HEADERS.items():
            if hdr not in headers and hdr not in skipped:
                headers[hdr] = val
        if user_agent not in headers and user_agent not in skipped:
            headers[user_agent] = software
        return None

    request_class.update_auto_headers = update_auto_headers  # type: ignore[method-assign]


def _identity_hash_in_c() -> None:
    from daphne.http_protocol import WebRequest

    WebRequest.__hash__ = object.__hash__  # type: ignore[assignment]


def _deprecation_proxy_off() -> None:
    import daphne.http_protocol
    import daphne.server

    for module in (daphne.http_protocol, daphne.server):
        module.http = _unproxied(module.http)  # type: ignore[attr-defined]


def _unproxied(module: Any) -> Any:
    """Twisted's module behind its deprecation proxy (the proxy itself when it is not one)."""
    try:
        return object.__getattribute__(module, "_module")
    except AttributeError:
        return module


PATCHES = (
    # first: the patches below that wrap these methods (head_refusal, reap_at_completion) wrap these
    Patch(
        name="process_without_deferreds",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:WebRequest.process",
            "daphne.http_protocol:WebRequest.process>maybeDeferred",
            "daphne.http_protocol:WebRequest.process>create_application",
            "daphne.http_protocol:WebRequest.process>clean_headers",
            "daphne.http_protocol:WebRequest.process>root_path",
            "daphne.http_protocol:WebRequest.process>client_scheme",
            "daphne.http_protocol:WebRequest.process>query_string",
            "daphne.http_protocol:WebRequest.process>application_queue",
            "daphne.http_protocol:WebRequest.process>request_buffer_size",
            "daphne.http_protocol:WebRequest.process>proxy_forwarded_address_header",
            "daphne.http_protocol:WebRequest.basic_error",
            "daphne.utils:HEADER_NAME_RE",
            "daphne.utils:INVALID_HEADER_VALUE_BYTES",
            "daphne.utils:parse_x_forwarded_for",
            "twisted.web.http:Request.requestReceived>process",
        ),
        apply=_process_without_deferreds,
        why="daphne's process is an inlineCallbacks generator that yields one Deferred (maybeDeferred "
        "of create_application, which returns at once): a Deferred, a generator resumed twice, a "
        "copied context and Twisted's callback loop per request, and it walked the headers twice "
        "(checked, then gathered for the scope). It runs as a plain method now, the same steps in "
        "the same order, the headers checked and gathered in one pass; the scope and every answer "
        "(400s, the 500 on an error) are daphne's, and a WebSocket handshake goes through daphne's "
        "own process.",
    ),
    Patch(
        name="light_application_queue",
        verified={"daphne": DAPHNE},
        targets=(
            "daphne.server:Server.create_application",
            "daphne.server:Server.create_application>Queue",
            "daphne.server:Server.create_application>application",
            "daphne.server:Server.create_application>handle_reply",
            "daphne.http_protocol:WebRequest.send_disconnect>put_nowait",
            "daphne.ws_protocol:WebSocketProtocol.onMessage>put_nowait",
        ),
        apply=_light_application_queue,
        why="each request's application read its messages from an asyncio.Queue (four deques, an "
        "Event, a task count, a size check per put) and was started through ensure_future; daphne "
        "only ever puts without a bound and the application only gets. The queue is _Inbox (a deque "
        "of messages and one of waiting getters, asyncio.Queue's get and put_nowait semantics, "
        "cancellation included) and a coroutine becomes a task of the loop directly.",
    ),
    Patch(
        name="finish_without_log_details",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:WebRequest.handle_reply",
            "daphne.http_protocol:WebRequest.handle_reply>log_action",
            "daphne.http_protocol:WebRequest.handle_reply>_response_started",
            "daphne.server:Server.log_action>action_logger",
        ),
        apply=_finish_without_log_details,
        why="the last body message of a response built daphne's access-log details (the URI decoded, "
        "the client formatted, the duration) for Server.log_action, which drops them when no access "
        "log is configured (action_logger None: daphne at -v 0 without --access-log). Without an "
        "access log that message writes and finishes as daphne does, without the details; with one, "
        "daphne's own method runs.",
    ),
    Patch(
        name="response_in_one_write",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:WebRequest.handle_reply",
            "daphne.http_protocol:WebRequest.handle_reply>_response_started",
            "daphne.http_protocol:WebRequest.handle_reply>setResponseCode",
            "daphne.http_protocol:WebRequest.handle_reply>addRawHeader",
            "daphne.http_protocol:WebRequest.handle_reply>server_name",
            "daphne.http_protocol:WebRequest.handle_reply>finish",
            "twisted.web.http:Request.setResponseCode>code_message",
            "twisted.web.http:Request.write>startedWriting",
            "twisted.web.http:Request.write>lastModified",
            "twisted.web.http:Request.write>etag",
            "twisted.web.http:Request.write>cookies",
            "twisted.web.http:Request.write>sentLength",
            "twisted.web.http:Request.write>writeHeaders",
            "twisted.web.http:Request.write>NO_BODY_CODES",
            "twisted.web.http:Request.write>_disconnected",
            "twisted.web.http:HTTPChannel.writeHeaders>getAllRawHeaders",
            "twisted.web.http:RESPONSES",
            "twisted.web.http_headers:Headers.addRawHeader>_sanitizeLinearWhitespace",
            "twisted.web.http_headers:Headers.getAllRawHeaders>_rawHeaders",
            "twisted.web.http_headers:_NameEncoder.encode>_canonicalHeaderCache",
        ),
        apply=_response_in_one_write,
        why="a response's start went through Twisted's setResponseCode and addRawHeader per header (the "
        "name encoded, the value's lines split and joined), and its one body write through "
        "Request.write's first-write steps (a length lookup, writeHeaders walking the headers, the "
        "held head joined with the body). The start now sets the code and adds each header whose "
        "name Twisted has already canonicalised and whose value has no CR or LF straight into the "
        "response's Headers (any other through addRawHeader); the last body message of a response "
        "with a length and nothing written yet writes the status line, the headers and the body as "
        "one write, the same bytes, and finishes as finish_without_log_details does. HEAD, codes "
        "without a body, chunked answers, an access log and Twisted's own response headers take "
        "daphne's and Twisted's way.",
    ),
    Patch(
        name="idle_timer_kept",
        verified={"twisted": TWISTED},
        targets=(
            "twisted.web.http:HTTPChannel.allContentReceived",
            "twisted.web.http:HTTPChannel.allContentReceived>setTimeout",
            "twisted.web.http:HTTPChannel.allContentReceived>_savedTimeOut",
            "twisted.web.http:HTTPChannel.allContentReceived>requests",
            "twisted.web.http:HTTPChannel.requestDone",
            "twisted.web.http:HTTPChannel.requestDone>setTimeout",
            "twisted.web.http:HTTPChannel.connectionLost",
            "twisted.protocols.policies:TimeoutMixin._TimeoutMixin__timedOut",
            "twisted.protocols.policies:TimeoutMixin.setTimeout>_TimeoutMixin__timeoutCall",
            "twisted.protocols.policies:TimeoutMixin.resetTimeout>_TimeoutMixin__timeoutCall",
        ),
        apply=_idle_timer_kept,
        why="Twisted cancels a keep-alive connection's idle timer when a request's body is in and "
        "schedules a new one when its response is done: a DelayedCall cancelled (left in the "
        "reactor's heap until a purge) and one made and pushed per request. The timer is now set "
        "aside while the request is handled and re-armed from the response's end (DelayedCall.reset, "
        "as Twisted's setTimeout does for a live timer); if it comes due meanwhile it does nothing "
        "(Twisted had cancelled it) and the response's end schedules a new one as before; a "
        "connection lost or closed after its response cancels it, and an upgrade request (a "
        "WebSocket, whose request never ends) keeps Twisted's cancel.",
    ),
    Patch(
        name="head_in_one_pass",
        verified={"twisted": TWISTED},
        targets=(
            "twisted.web.http:HTTPChannel.dataReceived",
            "twisted.web.http:HTTPChannel.lineReceived>_HTTPChannel__first_line",
            "twisted.web.http:HTTPChannel.lineReceived>_HTTPChannel__header",
            "twisted.web.http:HTTPChannel.lineReceived>_receivedHeaderSize",
            "twisted.web.http:HTTPChannel.lineReceived>totalHeadersSize",
            "twisted.web.http:HTTPChannel.lineReceived>persistent",
            "twisted.web.http:HTTPChannel.lineReceived>requestFactory",
            "twisted.web.http:HTTPChannel.lineReceived>_parseRequestLine",
            "twisted.web.http:HTTPChannel.lineReceived>_command",
            "twisted.web.http:HTTPChannel.lineReceived>_path",
            "twisted.web.http:HTTPChannel.lineReceived>_version",
            "twisted.web.http:HTTPChannel.lineReceived>allHeadersReceived",
            "twisted.web.http:HTTPChannel.lineReceived>allContentReceived",
            "twisted.web.http:HTTPChannel.lineReceived>setRawMode",
            "twisted.web.http:HTTPChannel.headerReceived>_nameEncoder",
            "twisted.web.http:HTTPChannel.headerReceived>_maybeChooseTransferDecoder",
            "twisted.web.http:HTTPChannel.headerReceived>addRawHeader",
            "twisted.web.http:HTTPChannel.headerReceived>_receivedHeaderCount",
            "twisted.web.http:HTTPChannel.headerReceived>maxHeaders",
            "twisted.web.http:HTTPChannel._maybeChooseTransferDecoder>_IdentityTransferDecoder",
            "twisted.web.http:HTTPChannel._maybeChooseTransferDecoder>_transferDecoder",
            "twisted.web.http:HTTPChannel._maybeChooseTransferDecoder>handleContentChunk",
            "twisted.web.http:HTTPChannel._maybeChooseTransferDecoder>_finishRequestBody",
            "twisted.web.http:HTTPChannel.allContentReceived>_handlingRequest",
            "twisted.web.http:_parseRequestLine>_istoken",
            "twisted.web.http_headers:Headers.addRawHeader>_rawHeaders",
            "twisted.web.http_headers:Headers.addRawHeader>_sanitizeLinearWhitespace",
            "twisted.web.http_headers:_NameEncoder.encode>_canonicalHeaderCache",
            "twisted.protocols.basic:LineReceiver.dataReceived>_busyReceiving",
            "twisted.protocols.basic:LineReceiver.dataReceived>_buffer",
            "twisted.protocols.basic:LineReceiver.dataReceived>line_mode",
            "twisted.protocols.basic:LineReceiver.dataReceived>paused",
            "twisted.protocols.basic:LineReceiver.dataReceived>MAX_LENGTH",
            "twisted.protocols.basic:LineReceiver.dataReceived>disconnecting",
        ),
        apply=_head_in_one_pass,
        why="Twisted reads a request's head line by line: its LineReceiver splits the buffer at "
        "each CRLF, and lineReceived, headerReceived, the name's canonical form, the length's "
        "check and Headers.addRawHeader run per line, the largest part of the server's own Python "
        "per request. gateway_project.request_head reads a head that is whole in one read in one "
        "pass when nothing in it is one that Twisted would refuse or treat specially, makes what "
        "those lines would have made and goes on with Twisted's own steps from allHeadersReceived; "
        "any other read (a head split across reads, a pipelined request while the channel is busy, "
        "a Transfer-Encoding, obsolete line folding, a bare CR or LF, a NUL, a bad request line, "
        "name or length, the size and count limits) takes Twisted's dataReceived unchanged.",
    ),
    Patch(
        name="websocket_close_codes",
        verified={"daphne": DAPHNE, "autobahn": AUTOBAHN},
        targets=(
            "daphne.ws_protocol:WebSocketProtocol.handle_reply",
            "daphne.ws_protocol:WebSocketProtocol.sendCloseFrame",
        ),
        apply=_websocket_close_codes,
        why="daphne drops the ASGI close `reason` and hands the code to autobahn's sendClose, which "
        "accepts only 1000 and 3000-4999: a 1008 close raised inside daphne and the client got no "
        "close frame. The close goes through autobahn's lower-level sendCloseFrame (any valid code, "
        "the reason up to 123 bytes).",
    ),
    Patch(
        name="drain_on_shutdown",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.server:Server.kill_all_applications",
            "daphne.server:Server.run>connections",
            "daphne.http_protocol:WebRequest.__init__>protocol_connected",
            "twisted.web.http:HTTPChannel.persistent",
            "twisted.web.http:HTTPChannel.__init__>requests",
            "twisted.web.http:Request.startedWriting",
            "twisted.web.http:_GenericHTTPChannelProtocol.factory.fget>_channel",
        ),
        apply=_drain_on_shutdown,
        why="on SIGTERM/SIGINT daphne cancels every application at once ('Killed N pending "
        "application instances'): in-flight calls lost their settlement. Its shutdown trigger is "
        "replaced by a drain (see _drain) that runs before Twisted closes any connection.",
    ),
    Patch(
        name="reap_at_completion",
        verified={"daphne": DAPHNE},
        targets=(
            "daphne.server:Server.protocol_disconnected",
            "daphne.server:Server.create_application",
            "daphne.server:Server.application_checker",
            "daphne.server:Server.run>connections",
        ),
        apply=_reap_at_completion,
        why="daphne keeps every finished request (its protocol, scope, queue and application's "
        "future) in its connections table until its once-a-second application_checker: at hundreds "
        "of calls a second, a second's worth of request objects outlived the collector's young "
        "generation and were traversed again by the older ones (~50-100 µs of collection per call, "
        "docs/PERFORMANCE.md). A connection whose application ended cleanly leaves the table when "
        "the later of its end and its client's is seen; one that raised is left to the checker.",
    ),
    Patch(
        name="twisted_form_parse_off",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:WebRequest.__init__",
            "twisted.web.http:Request.__init__>_parsePOSTFormSubmission",
        ),
        apply=_form_parse_off,
        why="Twisted parses the Content-Type of every POST with the email package (and a form or "
        "multipart body whole) into request.args, which daphne never reads: ~4 % of the CPU per "
        "call and a second parse of every upload.",
    ),
    Patch(
        name="twisted_request_log_off",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=("daphne.http_protocol:HTTPFactory.log",),
        apply=_request_log_off,
        why="Twisted formats a combined-log line per request for its global log, which daphne sends "
        "nowhere at verbosity <= 1: ~2 % of the CPU per call. daphne's --access-log is unaffected.",
    ),
    Patch(
        name="direct_body_writes",
        verified={"twisted": TWISTED},
        targets=(
            "twisted.web.http:HTTPChannel.write",
            "twisted.web.http:HTTPChannel.writeSequence",
            "twisted.web.http:Request.write>writeSequence",
            "twisted.internet.tcp:Connection.writeSomeData>socket",
            "twisted.internet.abstract:FileDescriptor.doWrite>_tempDataBuffer",
            "twisted.internet.abstract:FileDescriptor.doWrite>offset",
            "twisted.internet.abstract:FileDescriptor.doWrite>dataBuffer",
            "twisted.internet.abstract:FileDescriptor.write>_writeDisconnected",
            "twisted.internet._newtls:ConnectionMixin.writeSequence>TLS",
            "twisted.internet.tcp:Server",
        ),
        apply=_direct_body_writes,
        why="Twisted buffers every write and asks the reactor to watch the socket for writability, "
        "sending on the next loop turn and unwatching it after: two epoll_ctl calls, a wake-up and "
        "a reactor callback per streamed chunk. A response body write (daphne's http.response.body) "
        "to a connection with nothing buffered now goes to the socket at once, as asyncio's "
        "transports do; what the socket does not take, and every write while something is buffered, "
        "goes Twisted's buffered way.",
    ),
    Patch(
        name="head_with_first_write",
        verified={"twisted": TWISTED},
        targets=(
            "twisted.web.http:Request.write",
            "twisted.web.http:Request.write>writeHeaders",
            "twisted.web.http:Request.write>startedWriting",
            "twisted.web.http:Request.write>_disconnected",
            "twisted.web.http:HTTPChannel.writeHeaders",
            "twisted.web.http:HTTPChannel.writeHeaders>getAllRawHeaders",
            "twisted.web.http:HTTPChannel.writeHeaders>writeSequence",
        ),
        apply=_head_with_first_write,
        why="Twisted wrote a response's header lines to the transport's buffer on their own, so even "
        "with direct_body_writes every answer (a JSON answer's whole body, a stream's first part) "
        "took the buffered way: two epoll_ctl calls, a wake-up and a reactor callback per call. The "
        "header lines are now kept for the first body write of the response and leave with it in "
        "one send; a response that writes no body (HEAD, 204, 304, an empty body) writes them as "
        "Twisted did.",
    ),
    Patch(
        name="stream_parts_direct",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.server:Server.create_application>partial",
            "daphne.server:Server.create_application>handle_reply",
            "daphne.server:Server.protocol_disconnected>connections",
            "twisted.web.http:Request.write>chunked",
            "twisted.web.http:Request.write>sentLength",
            "twisted.web.http:Request.write>finished",
        ),
        apply=_stream_parts_direct,
        why="a relayed event stream sent every part as an ASGI message: Django's send loop (a "
        "generator and a message per part), daphne's reply coroutine, then body_parts_direct's "
        "checks: ~5 µs per part, a hundred parts per realistic stream. lib.asgi.part_writer now "
        "gives proxy.relay.EventStream a writer bound to the request's connection (from daphne's "
        "send, a partial of Server.handle_reply on the protocol) that writes each part after the "
        "first as body_parts_direct does, and answers False (the part then goes as a message) once "
        "the connection is gone or finished.",
    ),
    Patch(
        name="body_parts_direct",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.server:Server.handle_reply",
            "daphne.server:Server.handle_reply>connections",
            "daphne.server:Server.handle_reply>check_headers_type",
            "daphne.server:Server.check_headers_type",
            "daphne.http_protocol:WebRequest.basic_error",
            "daphne.http_protocol:WebRequest.handle_reply>write",
            "twisted.web.http:Request.write>startedWriting",
            "twisted.web.http:Request.write>chunked",
            "twisted.web.http:Request.write>sentLength",
            "twisted.web.http:Request.write>_disconnected",
            "twisted.web.http:Request.write>finished",
            "twisted.web.http:Request.write>channel",
        ),
        apply=_body_parts_direct,
        why="a streamed part went through daphne's reply coroutine (a header type check), its "
        "protocol's message dispatch and Twisted's Request.write before reaching the connection: "
        "~4 µs per part, 100 parts per realistic stream. A part of a chunked response under way "
        "is written straight to the channel, as those would write it; every other message takes "
        "daphne's steps (the connection's check, the header types of a response's start, the "
        "protocol's handle_reply) in this one coroutine, not a second one awaited from it.",
    ),
    Patch(
        name="head_refusal",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:WebRequest.process",
            "daphne.server:Server.create_application",
            "twisted.web.http:Request.gotLength",
            "twisted.web.http:Request.handleContentChunk",
            "twisted.web.http:HTTPChannel.allHeadersReceived>gotLength",
            "twisted.web.http:HTTPChannel._maybeChooseTransferDecoder>handleContentChunk",
            "twisted.web.http:HTTPChannel.lineReceived>_path",
            "twisted.web.http:HTTPChannel.lineReceived>_version",
            "twisted.web.http:HTTPChannel._send100Continue",
            "twisted.web.http:HTTPChannel.dataReceived",
            "twisted.web.http:HTTPChannel.persistent",
        ),
        apply=_head_refusal,
        why="Twisted receives a request's whole body before daphne calls the application, so an "
        "unauthenticated or oversized upload was read to its end before its 401 or 413. "
        "gateway_project.edge answers from the head instead: 413 for a Content-Length over "
        "GATEWAY_MAX_BODY_MB (a chunked body at the limit), and proxy.gate's door for /v1, "
        "reading paused while it looks a key up; a key that passes at once goes to the application "
        "with that verdict in its scope (Server.create_application), so the door is not run twice.",
    ),
    Patch(
        name="aiohttp_stream_read_timeout",
        verified={"aiohttp": AIOHTTP},
        targets=(
            "aiohttp.client_proto:ResponseHandler.read_timeout",
            "aiohttp.client_proto:ResponseHandler._drop_timeout",
            "aiohttp.client_proto:ResponseHandler._on_read_timeout",
            "aiohttp.client_proto:ResponseHandler._reschedule_timeout>_read_timeout",
            "aiohttp.client_proto:ResponseHandler.data_received>_reschedule_timeout",
            "aiohttp.streams:StreamReader.feed_data>total_bytes",
            "aiohttp.streams:StreamReader.is_eof",
            "aiohttp.client_reqrep:ClientResponse.connection",
        ),
        apply=None,
        why="aiohttp re-arms its sock_read timer (a timer cancelled, one scheduled) for every chunk "
        "it receives: ~2 % of a streamed call's CPU. proxy.upstream.Reply stops the connection's "
        "timer once a stream's head is in (ResponseHandler.read_timeout = None) and watches the "
        "body's byte count with one timer of its own, failing the read through the handler's "
        "_on_read_timeout after the same silence (at most a tenth of the timeout late).",
    ),
    Patch(
        name="aiohttp_request_unwrapped",
        verified={"aiohttp": AIOHTTP},
        targets=(
            "aiohttp.client:ClientSession._request",
            "aiohttp.client:ClientSession.post>_request",
        ),
        apply=None,
        why="ClientSession.post wraps its `_request` coroutine in a _RequestContextManager, a "
        "subscripted generic alias: each call goes through typing's Python __call__, which tries to "
        "set __orig_class__ on the slotted wrapper and drops the AttributeError. proxy.upstream.send "
        "awaits `_request` itself (the coroutine post wraps, with the same arguments), and so the "
        "same response.",
    ),
    Patch(
        name="aiohttp_auto_headers_without_copies",
        verified={"aiohttp": AIOHTTP},
        targets=(
            "aiohttp.client_reqrep:ClientRequest.update_auto_headers>_skip_auto_headers",
            "aiohttp.client_reqrep:ClientRequest.update_auto_headers>DEFAULT_HEADERS",
            "aiohttp.client_reqrep:ClientRequest.__init__>update_auto_headers",
            "aiohttp.client_reqrep:ClientRequest.skip_auto_headers",
            "aiohttp.client_reqrep:SERVER_SOFTWARE",
            "aiohttp.client:ClientSession._request>_skip_auto_headers",
        ),
        apply=_auto_headers_without_copies,
        why="for every upstream request aiohttp sorted the session's skip_auto_headers into a new "
        "CIMultiDict through a generator and copied the request's headers, extended by it, only to "
        "ask whether a default header (Accept, Accept-Encoding, User-Agent) was named: the "
        "session's skip set's multidict is made once and copied per request, and each default "
        "is looked for in the headers and the skip set, the same headers set.",
    ),
    Patch(
        name="connection_facts_once",
        verified={"twisted": TWISTED},
        targets=(
            "twisted.web.http:HTTPChannel.getPeer",
            "twisted.web.http:HTTPChannel.getHost",
            "twisted.web.http:HTTPChannel.isSecure",
            "twisted.web.http:Request.__init__>getPeer",
            "twisted.web.http:Request.__init__>getHost",
        ),
        apply=_connection_facts_once,
        why="every request asked its connection for both addresses (a getsockname() system call and "
        "two address objects) and whether it is TLS (a zope.interface adaptation of the transport), "
        "though none of the three changes while the connection's transport is the same: each is now "
        "asked once per transport and remembered on the channel.",
    ),
    Patch(
        name="request_hash_in_c",
        verified={"daphne": DAPHNE},
        targets=("daphne.http_protocol:WebRequest.__hash__", "daphne.server:Server.run>connections"),
        apply=_identity_hash_in_c,
        why="daphne keys its connections table by request, and WebRequest's __hash__ is a Python "
        "function returning hash(id(self)): ~15 calls of it per request. object.__hash__ is the "
        "same identity hash in C (equality stays daphne's identity comparison).",
    ),
    Patch(
        name="deprecation_proxy_off",
        verified={"daphne": DAPHNE, "twisted": TWISTED},
        targets=(
            "daphne.http_protocol:http",
            "daphne.server:http",
            "twisted.python.deprecate:_ModuleProxy.__getattribute__",
        ),
        apply=_deprecation_proxy_off,
        why="twisted.web.http is a deprecation proxy (for HTTPClient, which daphne never reads), so "
        "each `http.Request...` in daphne's per-request methods ran the proxy's Python "
        "__getattribute__ chain (~7 calls each, three times a request). daphne's two modules now "
        "name the module itself.",
    ),
    Patch(
        name="proxy_asgi_handler",
        verified={"django": DJANGO},
        targets=(
            "django.core.handlers.asgi:ASGIHandler.listen_for_disconnect",
            "django.core.handlers.asgi:ASGIHandler.send_response",
            "django.core.handlers.asgi:ASGIHandler.resolve_request",
            "django.core.handlers.base:BaseHandler._get_response_async",
        ),
        apply=None,
        why="proxy.handler.ProxyHandler serves /v1 with Django's URL resolver and async views but "
        "without the sync middleware chain, per-request signals or Django's body limit; it "
        "subclasses ASGIHandler and relies on the private methods listed.",
    ),
)


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing(target: str) -> bool:
    """ "module:Class.attribute", or "module:Class.method>name" for an instance attribute that
    the method must still set or read."""
    module_name, _, path = target.partition(":")
    path, _, used = path.partition(">")
    obj: object = sys.modules.get(module_name) or importlib.import_module(module_name)
    for part in path.split("."):
        if not hasattr(obj, part):
            return True
        obj = getattr(obj, part)
    code = getattr(inspect.unwrap(obj) if callable(obj) else obj, "__code__", None)  # the original, once patched
    return bool(used) and (code is None or used not in code.co_names)


def version_problems() -> list[str]:
    """One line per patch whose verified versions do not include the installed one."""
    problems = []
    for patch in PATCHES:
        for distribution, versions in patch.verified.items():
            installed = _installed(distribution)
            if installed is not None and installed not in versions:
                problems.append(
                    f"server patch '{patch.name}' was verified on {distribution} {', '.join(versions)}; "
                    f"installed: {installed}"
                )
    return problems


def target_problems() -> list[str]:
    """One line per patched attribute that no longer exists (imports daphne: servers only)."""
    return [
        f"server patch '{patch.name}': {target} no longer exists"
        for patch in PATCHES
        for target in patch.targets
        if _missing(target)
    ]


def check(*, targets: bool = True) -> None:
    """Logs every problem; raises UnverifiedServer unless only versions differ and the operator allowed it."""
    versions = version_problems()
    missing = target_problems() if targets else []
    for line in versions + missing:
        logger.error("%s", line)
    allowed = os.environ.get(ALLOW_ENV, "").lower() in ("1", "true", "yes")
    if missing or (versions and not allowed):
        hint = "" if missing else f" (set {ALLOW_ENV}=1 to start anyway after testing it)"
        raise UnverifiedServer("; ".join(versions + missing) + hint)


_applied = False


def apply() -> None:
    """Checks, then applies every patch once. Does nothing in a process without daphne's server
    (importing it would install a Twisted reactor)."""
    global _applied
    if _applied or "daphne.server" not in sys.modules:
        return
    check()
    for patch in PATCHES:
        if patch.apply is not None:
            patch.apply()
    _applied = True


# --- the drain (daphne's shutdown trigger) ---------------------------------------------------------
#
# Twisted runs "before shutdown" triggers while the reactor still serves, and waits for the
# Deferred they return before it closes any connection. daphne's trigger cancels every application
# at once; this one drains first:
#
# 1. stop accepting: this process closes its listening sockets (its siblings on a shared socket
#    keep accepting); idle keep-alive connections are closed, busy ones close after their response
#    (`Connection: close`), so no new call starts here;
# 2. the work registered to end at once (lib.inflight.on_shutdown: open realtime sessions are
#    billed, recorded and closed with 1001 `shutdown`) ends;
# 3. HTTP calls in flight (daphne's requests) and the work they started (lib.inflight.tasks: upstream
#    calls, settlements) run to their end, until GATEWAY_SHUTDOWN_GRACE_S minus a short tail;
# 4. what still runs then is cancelled as daphne would, and the tail lets the settlements that
#    cancellation starts finish; a call that does not settle even then is written off
#    (lib.inflight.on_abandon: recorded as `worker_lost` at its admission's estimate,
#    proxy.accounting.settle_held_as_lost), or by the reservation sweeper if the database cannot
#    be reached;
# 5. once drained, the event loop's resources close (lib.inflight.on_close).

POLL_S = 0.1
LOST_SETTLE_S = 5.0  # the supervisor allows 10 s past the grace


def _drain_then_kill(server: "Server") -> "defer.Deferred[None]":
    from twisted.internet import defer

    return defer.Deferred.fromFuture(asyncio.ensure_future(_drain(server)))


async def _drain(server: "Server") -> None:
    from django.conf import settings

    loop = asyncio.get_running_loop()
    grace = max(0.0, float(settings.GATEWAY_SHUTDOWN_GRACE_S))
    tail = min(1.0, grace / 10)
    started = loop.time()
    _stop_accepting()
    sessions = asyncio.ensure_future(inflight.shutdown())
    logger.info(
        "shutdown: draining %d HTTP call(s) and closing realtime sessions (grace %.0f s)",
        len(_http_calls(server)),
        grace,
    )
    drained = await _until_idle(server, [sessions], inflight.pending, started + grace - tail)
    if not drained:
        logger.warning(
            "shutdown: grace of %.0f s ran out; cancelling %d application(s); calls that do not settle "
            "now are recorded as worker_lost",
            grace,
            len(_cancel_all(server)),
        )
        await _until_idle(server, [sessions], inflight.pending, loop.time() + tail)
        await _write_off()
    logger.info("shutdown: drained in %.1f s", loop.time() - started)
    cancelled = _cancel_all(server)  # WebSocket applications whose session already closed
    if cancelled:
        await asyncio.wait(cancelled, timeout=max(tail, POLL_S))
    if drained:  # else an upstream call still running would fail on a closed session and be billed as such
        await inflight.close()


async def _write_off() -> None:
    try:
        settled = await asyncio.wait_for(inflight.abandon(), timeout=LOST_SETTLE_S)
    except Exception:  # noqa: BLE001 - e.g. the database unreachable: the reservation sweeper does it later
        logger.exception("shutdown: could not settle the calls left as worker_lost; the sweeper will")
    else:
        logger.warning("shutdown: %d call(s) still running recorded as worker_lost", settled)


def _stop_accepting() -> None:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.http import HTTPChannel

    for reader in list(reactor.getReaders()):  # type: ignore[misc]
        if IListeningPort.providedBy(reader):
            reader.stopListening()
            continue
        protocol = getattr(reader, "protocol", None)
        channel = getattr(protocol, "_channel", protocol)
        if isinstance(channel, HTTPChannel) and not channel.requests:
            channel.loseConnection()  # idle keep-alive: the client opens its next call elsewhere


def _http_calls(server: "Server") -> list[tuple[object, asyncio.Future | None]]:
    """daphne's HTTP requests of this process that are not done, with their application (None
    while the body still arrives). Each one's connection now closes after its response."""
    from daphne.http_protocol import WebRequest

    calls = []
    for protocol, details in list(server.connections.items()):
        instance = details.get("application_instance")
        if not isinstance(protocol, WebRequest) or (instance.done() if instance else "disconnected" in details):
            continue
        channel = getattr(protocol, "channel", None)
        if channel is not None:
            channel.persistent = False
            if not protocol.startedWriting:
                protocol.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        calls.append((protocol, instance))
    return calls


async def _until_idle(server: "Server", extra: list, pending: Callable[[], list], deadline: float) -> bool:
    """Waits until no HTTP call, no pending settlement and none of `extra` is left; False at the deadline."""
    loop = asyncio.get_running_loop()
    while True:
        calls = _http_calls(server)
        waiting = [f for f in extra if not f.done()] + list(pending())
        if not calls and not waiting:
            return True
        left = deadline - loop.time()
        if left <= 0:
            return False
        futures = [instance for _, instance in calls if instance is not None] + waiting
        if futures:
            await asyncio.wait(futures, timeout=min(POLL_S, left))
        else:
            await asyncio.sleep(min(POLL_S, left))


def _cancel_all(server: "Server") -> list[asyncio.Future]:
    """daphne's own shutdown step, minus its KeyError on a connection that has no application yet."""
    cancelled = []
    for details in list(server.connections.values()):
        instance = details.get("application_instance")
        if instance is not None and not instance.done():
            instance.cancel()
            cancelled.append(instance)
    return cancelled
