"""A minimal HTTP server for an ASGI app, on aiohttp, for tests that need the gateway on a real
loopback port inside the test process (so it uses the pytest test database). It streams response
bodies as the app sends them and tells the app `http.disconnect` when the client goes away."""

import asyncio

from aiohttp import web

from .fake_upstream import serve_in_thread


def asgi_bridge(app):
    async def handle(request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else ("127.0.0.1", 0)
        peer = request.transport.get_extra_info("peername") if request.transport else ("127.0.0.1", 0)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.raw_path.split("?", 1)[0].encode(),
            "query_string": request.query_string.encode(),
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": peer[:2],
            "server": sock[:2],
        }
        inbox: asyncio.Queue = asyncio.Queue()
        state: dict = {"body_done": False}

        async def receive():
            if not state["body_done"]:
                # The body as it arrives, like an ASGI server: a large upload is never whole in memory.
                chunk = await request.content.read(1 << 16)
                state["body_done"] = request.content.at_eof()
                return {"type": "http.request", "body": chunk, "more_body": not state["body_done"]}
            return await inbox.get()

        async def send(message):
            if message["type"] == "http.response.start":
                response = web.StreamResponse(status=message["status"])
                for name, value in message.get("headers", ()):
                    response.headers.add(name.decode("latin1"), value.decode("latin1"))
                state["response"] = response
                return
            response = state["response"]
            try:
                if not response.prepared:
                    await response.prepare(request)
                if message.get("body"):
                    await response.write(message["body"])
                if not message.get("more_body", False):
                    await response.write_eof()
            except ConnectionError:
                pass  # the client is gone: like ASGI servers, drop what is sent after a disconnect

        task = asyncio.ensure_future(app(scope, receive, send))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            inbox.put_nowait({"type": "http.disconnect"})
            await asyncio.wait([task], timeout=30)
            raise
        return state["response"]

    return handle


def start_asgi_server(app) -> tuple[str, callable]:
    application = web.Application(client_max_size=1024**3)
    application.router.add_route("*", "/{tail:.*}", asgi_bridge(app))
    box = {}
    stop = serve_in_thread(application, lambda url: box.setdefault("url", url), handler_cancellation=True)
    return box["url"], stop
