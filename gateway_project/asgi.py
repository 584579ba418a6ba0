"""One ASGI app: HTTP (Django) and the realtime WebSocket relay (Channels)."""

import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from lib.api_errors import error_body  # noqa: E402
from lib.asgi import Receive, Scope, Send  # noqa: E402
from lib.http import host_allowed, request_id_from  # noqa: E402
from ops.asgi import PATHS as OPS_PATHS  # noqa: E402
from ops.asgi import app as ops_app  # noqa: E402
from proxy.handler import ProxyHandler  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

from . import server_patches  # noqa: E402

# Under daphne (serve, daphne's CLI, runserver): check the server stack's versions, then patch it.
server_patches.apply()

# /v1 is served by a handler without the (sync) middleware stack: see proxy/handler.py.
proxy_asgi_app = ProxyHandler()


async def http_app(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path.startswith("/v1/"):
        if not host_allowed(host_of(scope)):  # what Django's get_host() does for the other paths
            return await bad_host(scope, send)
        return await proxy_asgi_app(scope, receive, send)
    if path in OPS_PATHS:  # health and metrics: no middleware, no call record (ops.asgi)
        if not host_allowed(host_of(scope)):
            return await bad_host(scope, send)
        return await ops_app(scope, receive, send)
    return await django_asgi_app(scope, receive, send)


def host_of(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value
    server = scope.get("server")  # HTTP/1.0 without Host: the address it reached, as Django reads it
    return f"{server[0]}:{server[1]}".encode() if server else b""


async def bad_host(scope: Scope, send: Send) -> None:
    sent = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin1")
    rid = request_id_from(sent)
    message = "the Host header names no host this gateway serves (ALLOWED_HOSTS)"
    body = json.dumps(error_body(code="bad_request", message=message, type_="invalid_request_error", request_id=rid))
    headers = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


realtime_app = URLRouter(websocket_urlpatterns)


async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
    """/v1/realtime under the same Host rule as /v1: a handshake naming a host this gateway does not
    serve is refused before the consumer runs (daphne answers it 403). A scope without any host (an
    in-process test client) has nothing to judge."""
    host = host_of(scope)
    if host and not host_allowed(host):
        await receive()  # the handshake's websocket.connect
        return await send({"type": "websocket.close", "code": 1008})
    return await realtime_app(scope, receive, send)


application = ProtocolTypeRouter({"http": http_app, "lifespan": proxy_asgi_app, "websocket": websocket_app})
