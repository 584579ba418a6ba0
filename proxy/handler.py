"""The ASGI handler for /v1: Django's URL resolver and async views, without middleware.

The project's MIDDLEWARE are sync Django middleware; behind them an async view would be adapted
(a thread hop per middleware, "Asynchronous handler adapted for middleware" in the django.request
debug log). /v1 needs none of them (no sessions, CSRF, locale or messages: keys are bearer tokens),
so gateway_project.asgi routes /v1 here. It also skips the per-request request_started /
request_finished signals and thread-sensitive context (each costs a thread hop to close database
connections the event loop never opens: the accounting steps use their own pool, proxy.accounting),
and reads the body with the GATEWAY_MAX_BODY_MB limit instead of Django's 2.5 MB form limit.
It relies on private methods of Django's handler: gateway_project.server_patches lists them with
the Django versions this was verified on, and checks them when the server starts.
"""

import asyncio
import contextlib
import io
import logging
import sys
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.db import Error as DatabaseError
from django.http import HttpRequest, HttpResponse
from django.urls import ResolverMatch
from django.utils.functional import cached_property

from allocations.exceptions import GatewayError, GatewayUnavailable
from lib import asgi, inflight
from lib.asgi import Receive, Scope, Send, Whole
from lib.conf import setting
from lib.http import request_id_from
from quota.ledger import loop as ledger_loop

from . import accounting, gate, multipart, relay, upstream
from .registry import spools
from .views import error_response, request_id_for

logger = logging.getLogger("django.request")
_resolved: dict = {}  # (ROOT_URLCONF, path) -> ResolverMatch, see ProxyHandler.resolve_request


class ProxyHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """Django's resolution, remembered per (URLconf, path): /v1 has a handful of routes, and
        resolving walks the project's whole URLconf on every call. A path that does not resolve is
        not remembered (Resolver404 propagates as before); the views only read the match."""
        if _urlconf_set(request):
            return super().resolve_request(request)
        key = (setting("ROOT_URLCONF"), request.path_info)
        match = _resolved.get(key)
        if match is None:
            match = super().resolve_request(request)
            if len(_resolved) >= 1000:
                _resolved.clear()
            _resolved[key] = match
        request.resolver_match = match
        return match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(scope, receive, send)
        if scope["type"] != "http":
            raise ValueError(f"/v1 serves HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        passed = scope.get(gate.PASSED)  # the edge's verdict: the bearer passed the door at the head
        if passed is None and (refused := await gate.refusal(scope)) is not None:
            # the body is never read: a refused caller costs no parse or spool
            rid = request_id_from(gate.header(scope, b"x-request-id"))
            return await error_response(refused, rid).send(send)
        limit, upload = setting("GATEWAY_MAX_BODY_MB") * 1024 * 1024, None
        try:
            if spools(scope["path"]):  # uploads go to a spool, not to memory
                (upload, too_large), body = await multipart.spool_body(receive, scope, limit), b""
            else:
                body, too_large = await read_body(receive, scope, limit)
        except RequestAborted:
            return
        # No set_script_prefix: the prefix only serves reverse(), which nothing on /v1 calls.
        try:
            request = V1Request(scope, body)
        except UnicodeDecodeError:
            logger.warning("Bad Request (UnicodeDecodeError)", exc_info=sys.exc_info())
            return await self.send_response(HttpResponse(status=400), send)
        request.gateway_body_too_large = too_large  # type: ignore[attr-defined]
        request.gateway_upload = upload  # type: ignore[attr-defined]  # closed by proxy.views once the upstream has it
        request.gateway_passed = passed  # type: ignore[attr-defined]  # (bearer, digest): proxy.views' plan

        async def process(request: HttpRequest) -> None:
            # The view straight from the (remembered) URL match: Django's get_response_async adds
            # urlconf setup, ATOMIC_REQUESTS wrapping, response checks and, for every 4xx, a log
            # line through a thread hop; /v1 needs none of it (its call records are the log). An
            # exception is answered in the contract's envelope, not Django's HTML 500 page.
            try:
                match = self.resolve_request(request)
                response = await match.func(request, *match.args, **match.kwargs)
            except DatabaseError:
                # The store went away under a step that has no retry of its own: the client may retry.
                logger.exception("Database unavailable: %s", request.path)
                response = error_response(
                    GatewayUnavailable("the gateway's database is unavailable; retry shortly"), request_id_for(request)
                )
            except Exception:
                logger.exception("Internal Server Error: %s", request.path)
                response = error_response(
                    GatewayError("the gateway failed to handle the request"), request_id_for(request)
                )
            if not response.has_header("X-Request-Id"):
                response["X-Request-Id"] = request_id_for(request)
            for name, value in (accounting.RATE_HEADERS.get() or {}).items():
                response[name] = value
            if isinstance(response, relay.EventStream):
                response.writer = asgi.part_writer(send)
            with contextlib.suppress(asyncio.CancelledError):  # client disconnected while we were sending
                if isinstance(response, Whole):  # a whole answer: its two messages, no HttpResponse
                    await response.send(send)
                else:
                    await self.send_response(response, send)

        # As Django does: a client that disconnects cancels the view (or the stream being relayed).
        # The view runs in this task; only the listener gets a task of its own, which cancels this
        # one when the client goes away (a task and an asyncio.wait fewer per call than Django's).
        # The task's loop, asked once: each asyncio.get_running_loop() (inside current_task and
        # ensure_future) makes a getpid() system call on Python 3.11.
        loop = asyncio.get_running_loop()
        this = asyncio.current_task(loop)
        # Named: a Task made without a name formats a default one ("Task-N").
        listener = asyncio.Task(until_disconnect(receive), loop=loop, name="client listener")

        def client_gone(_: asyncio.Future) -> None:
            if this is not None:
                this.cancel()

        listener.add_done_callback(client_gone)
        answered = False
        try:
            await process(request)
            answered = True
        except asyncio.CancelledError:
            if not listener.done():
                raise  # cancelled by the server, not by the client
        finally:
            listener.remove_done_callback(client_gone)
            if answered:
                # ASGI: once the response is sent, receive() says http.disconnect (daphne queued
                # it as the response ended), so the listener ends by itself in its step already
                # scheduled; cancelled only if it has not by the loop's next turn.
                loop.call_soon(stop_listening, listener)
            else:
                stop_listening(listener)


class V1Request(ASGIRequest):
    """Django's ASGIRequest as /v1 uses it: the same attributes, with META (and what Django derives
    from it: the content type and its parameters, the encoding, `headers`) built by ASGIRequest
    itself on first read instead of for every request. A /v1 call reads two headers, through
    `sent_header`, straight from the scope; any other reader gets Django's META as it always was.
    The body is already read (with the gateway's limit, not Django's DATA_UPLOAD_MAX_MEMORY_SIZE)."""

    def __init__(self, scope: Scope, body: bytes) -> None:
        self.scope = scope
        self._post_parse_error = False
        self._read_started = False
        self.resolver_match = None
        # lib.http.request_id_of's first read finds None here, not a miss through __getattr__.
        self.gateway_request_id = None
        self.path = path = scope["path"]
        self.script_name = script_name = get_script_prefix(scope)
        self.path_info = path.removeprefix(script_name) if script_name else path
        self.method = scope["method"].upper()
        query_string = scope.get("query_string", "")
        if isinstance(query_string, bytes):
            query_string.decode()  # as ASGIRequest: a query string that is not UTF-8 is a 400
        self._stream = io.BytesIO(body)
        self._body = body

    @cached_property
    def META(self) -> dict[str, Any]:  # type: ignore[override]
        built = ASGIRequest(self.scope, self._stream)
        self.content_type, self.content_params = built.content_type, built.content_params
        if "_encoding" in built.__dict__:  # a valid charset parameter
            self._encoding = built.__dict__["_encoding"]
        return built.META

    def __getattr__(self, name: str) -> Any:
        if name in ("content_type", "content_params") and "META" not in self.__dict__:
            self.META  # noqa: B018 - sets them
            return self.__dict__[name]
        raise AttributeError(name)

    @property
    def encoding(self) -> str | None:  # type: ignore[override]
        self.META  # noqa: B018 - the charset parameter
        return self._encoding

    @encoding.setter
    def encoding(self, value: str | None) -> None:
        self.META  # noqa: B018 - built first, so that it does not set the encoding afterwards
        HttpRequest.encoding.fset(self, value)  # type: ignore[attr-defined]

    def sent_header(self, key: str) -> str:
        """META.get(key, "") for an HTTP_* key (a header without "SS" in its name), without building
        META: the values of every header by that name, joined by "," as ASGIRequest joins them."""
        if "META" in self.__dict__:
            return self.META.get(key, "")
        name = key[5:].lower().replace("_", "-").encode("latin1")
        values = [value.decode("latin1") for header, value in self.scope.get("headers", ()) if header.lower() == name]
        return ",".join(values)


def _urlconf_set(request: HttpRequest) -> bool:
    """hasattr(request, "urlconf"), without V1Request's __getattr__ and its AttributeError for the
    usual answer: neither V1Request nor Django's request classes define `urlconf`, so on a
    V1Request it is set on the instance (as middleware sets it) or not at all."""
    if request.__class__ is V1Request:
        return "urlconf" in request.__dict__
    return hasattr(request, "urlconf")


async def until_disconnect(receive: Receive) -> None:
    """Returns when the server says the client is gone (or, the response sent, done): Django's
    listen_for_disconnect without its RequestAborted, which a finished call would throw and catch."""
    while (await receive())["type"] != "http.disconnect":
        pass


def stop_listening(listener: asyncio.Future) -> None:
    if not listener.done():
        listener.cancel()


async def read_body(receive: Receive, scope: Scope, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (b"", True) past `limit` (the rest is drained so the client gets its 413)."""
    declared = b"0"
    for name, value in scope.get("headers", ()):  # a loop, not next(generator): no GeneratorExit to close it
        if name == b"content-length":
            declared = value
            break
    too_large = declared.isdigit() and int(declared) > limit
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_large, parts = True, []
        elif not too_large and chunk:
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return (b"" if too_large else b"".join(parts)), too_large


async def loop_resources_close() -> None:
    """What a process's event loop holds for /v1: the upstream session and the accounting
    connections (quota.ledger.loop). daphne has no lifespan; process exit closes them there."""
    await upstream.session_close()
    await ledger_loop.pool_close()


inflight.on_close("loop resources", loop_resources_close)


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI lifespan (uvicorn, hypercorn): close the shared upstream session on shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await loop_resources_close()
            await send({"type": "lifespan.shutdown.complete"})
            return
