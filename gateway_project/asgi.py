"""One ASGI app: HTTP (Django) and the realtime WebSocket relay (Channels)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from ops.asgi import PATHS as OPS_PATHS  # noqa: E402
from ops.asgi import app as ops_app  # noqa: E402
from proxy.handler import ProxyHandler  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

from . import server_patches  # noqa: E402

# Under daphne (serve, daphne's CLI, runserver): check the server stack's versions, then patch it.
server_patches.apply()

# /v1 is served by a handler without the (sync) middleware stack: see proxy/handler.py.
proxy_asgi_app = ProxyHandler()


async def http_app(scope, receive, send):
    path = scope["path"]
    if path.startswith("/v1/"):
        return await proxy_asgi_app(scope, receive, send)
    if path in OPS_PATHS:  # health and metrics: no middleware, no call record (ops.asgi)
        return await ops_app(scope, receive, send)
    return await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "lifespan": proxy_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
