"""A real local fake upstream for the proxy tests: an aiohttp server on a loopback port speaking the
OpenAI and Azure OpenAI wire formats (JSON and SSE), with fault modes chosen by model name:

- fake-error-NNN: status NNN with an OpenAI error body that quotes the key it was sent
- fake-drop-N: a stream of N content chunks, then the TCP connection is cut (no usage, no [DONE])
- fake-garbage: one valid chunk, then `data: {not json`, then `data: [DONE]`; fake-garbage-stall:
  the same chunk and `data: {not json`, then silence on an open connection
- fake-hang: never answers
- fake-stall-N: a stream of N content chunks, then silence on an open connection
- fake-pace-MS: a stream with MS milliseconds between its content chunks
- fake-slow: answers after 0.6 s; fake-sleep-MS: after MS milliseconds; fake-trickle: a stream with 0.3 s between chunks
- fake-nousage: a stream that never reports usage
- fake-tier-NAME: answers report service tier NAME (otherwise the tier asked for, auto -> default)
- fake-calls-N: a Responses answer has N calls of each built-in tool the request declared (else 1)
- fake-unsupported-NAME: a 400 naming the request parameter NAME as unsupported when the request
  has it (OpenAI's `unsupported_parameter` error), otherwise a normal answer

Answers report `service_tier` like OpenAI's, and a Responses answer has one `<tool>_call` output
item per built-in tool the request declared (web_search -> web_search_call ...); its stream reports
each in a `response.output_item.done` event before the text.
"""

import asyncio
import json
import threading
import uuid

from aiohttp import web

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
CHAT_USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
WORDS = ["Hello", " from", " the", " fake"]


CALL_ITEMS = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",
    "image_generation": "image_generation_call",
}


def tier_of(body: dict, model: str) -> str:
    if model.startswith("fake-tier-"):
        return model.removeprefix("fake-tier-")
    tier = body.get("service_tier")
    return "default" if tier in (None, "auto") else tier


def tool_call_items(body: dict, model: str) -> list[dict]:
    count = int(model.rsplit("-", 1)[1]) if model.startswith("fake-calls-") else 1
    items = []
    for tool in body.get("tools") or ():
        kind = CALL_ITEMS.get(tool.get("type") if isinstance(tool, dict) else None)
        items += [{"id": f"{kind}_{n}", "type": kind, "status": "completed"} for n in range(count) if kind]
    return items


def _sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class RecordingUpstream:
    """What the fake upstreams share: the requests they received, their URL, the bearer check."""

    def __init__(self):
        self.requests: list[dict] = []
        self.url = ""
        self.in_flight = self.max_in_flight = 0  # requests being answered now / at most at once

    @property
    def last(self) -> dict:
        return self.requests[-1]

    @staticmethod
    def bad_bearer(request: web.Request) -> web.Response | None:
        """The provider's 401 unless the request carries the upstream key as a bearer token."""
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        return None


class FakeUpstream(RecordingUpstream):
    # --- routing ---------------------------------------------------------------------------------

    async def openai(self, request: web.Request):
        if (refused := self.bad_bearer(request)) is not None:
            return refused
        return await self.serve(request, request.match_info["path"], None)

    async def azure_deployment(self, request: web.Request):
        if request.headers.get("api-key") != UPSTREAM_KEY or not request.query.get("api-version"):
            return web.json_response({"error": {"code": "401", "message": "Access denied"}}, status=401)
        return await self.serve(request, request.match_info["path"], request.match_info["deployment"])

    async def azure_v1(self, request: web.Request):
        if request.headers.get("api-key") != UPSTREAM_KEY:
            return web.json_response({"error": {"code": "401", "message": "Access denied"}}, status=401)
        return await self.serve(request, request.match_info["path"], None)

    async def serve(self, request: web.Request, path: str, deployment: str | None):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._serve(request, path, deployment)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: web.Request, path: str, deployment: str | None):
        body = await request.json()
        self.requests.append(
            {"path": request.path, "query": dict(request.query), "headers": dict(request.headers), "body": body}
        )
        model = deployment or body.get("model", "")
        if model.startswith("fake-unsupported-") and model.removeprefix("fake-unsupported-") in body:
            name = model.removeprefix("fake-unsupported-")
            error = {
                "message": f"Unsupported parameter: '{name}' is not supported with this model.",
                "type": "invalid_request_error",
                "param": name,
                "code": "unsupported_parameter",
            }
            return web.json_response({"error": error}, status=400)
        if model.startswith("fake-error-"):
            status = int(model.rsplit("-", 1)[1])
            message = f"Incorrect API key provided: {UPSTREAM_KEY} at {self.url}"
            return web.json_response(
                {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
                status=status,
            )
        if model == "fake-hang":
            await asyncio.sleep(3600)
        if model == "fake-slow":
            await asyncio.sleep(0.6)
        if model.startswith("fake-sleep-"):
            await asyncio.sleep(int(model.rsplit("-", 1)[1]) / 1000)
        if path == "embeddings":
            return web.json_response(
                {
                    "object": "list",
                    "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": 5, "total_tokens": 5},
                }
            )
        if path == "responses":
            return await self.responses(request, body, model)
        if body.get("stream"):
            return await self.chat_stream(request, body, model)
        if model == "fake-garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        message = {"role": "assistant", "content": "".join(WORDS), "refusal": None}
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": CHAT_USAGE,
                "service_tier": tier_of(body, model),
            }
        )

    async def chat_stream(self, request, body, model):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include = (body.get("stream_options") or {}).get("include_usage") and model != "fake-nousage"
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "service_tier": tier_of(body, model),
        }
        if include:
            base["usage"] = None

        def chunk(delta, finish=None):
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        await response.write(chunk({"role": "assistant", "content": ""}))
        words = WORDS
        if model.startswith(("fake-drop-", "fake-stall-")):
            words = (WORDS * 10)[: int(model.rsplit("-", 1)[1])]
        for word in words:
            if model == "fake-trickle":
                await asyncio.sleep(0.3)
            elif model.startswith("fake-pace-"):
                await asyncio.sleep(int(model.rsplit("-", 1)[1]) / 1000)
            await response.write(chunk({"content": word}))
        if model.startswith("fake-stall-"):
            await asyncio.sleep(3600)  # the connection stays open, silent
        if model.startswith("fake-drop-"):
            request.transport.close()  # FIN without the terminating chunk
            return response
        if model.startswith("fake-garbage"):
            await response.write(b"data: {not json\n\n")
            if model == "fake-garbage-stall":
                await asyncio.sleep(3600)
            await response.write(_sse(b"[DONE]"))
            return response
        await response.write(chunk({}, "stop"))
        if include:
            await response.write(_sse({**base, "choices": [], "usage": CHAT_USAGE}))
        await response.write(_sse(b"[DONE]"))
        return response

    async def responses(self, request, body, model):
        usage = {
            "input_tokens": 13,
            "input_tokens_details": {"cached_tokens": 4 if body.get("prompt_cache_key") else 0},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 2 if body.get("reasoning") else 0},
            "total_tokens": 22,
        }
        item = {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "".join(WORDS), "annotations": []}],
        }
        resp = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": model,
            "output": [*tool_call_items(body, model), item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "metadata": body.get("metadata") or {},
            "service_tier": tier_of(body, model),
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(resp)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [
            {"type": "response.created", "response": {**resp, "status": "in_progress", "usage": None, "output": []}}
        ]
        events += [
            {"type": "response.output_item.done", "output_index": n, "item": call}
            for n, call in enumerate(tool_call_items(body, model))
        ]
        head = len(events)
        events += [
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": w,
            }
            for w in WORDS
        ]
        if model.startswith("fake-drop-"):
            events = events[: head + int(model.rsplit("-", 1)[1])]
        else:
            events.append({"type": "response.completed", "response": resp})
        for n, event in enumerate(events):
            event["sequence_number"] = n
            if model == "fake-trickle" and n:
                await asyncio.sleep(0.3)
            await response.write(f"event: {event['type']}\n".encode() + _sse(event))
        if model.startswith("fake-drop-"):
            request.transport.close()
        return response


def start_fake_upstream() -> tuple[FakeUpstream, callable]:
    """Serves on 127.0.0.1:<free port> from a background thread; returns (fake, stop)."""
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/{path:.*}", fake.openai)
    app.router.add_post("/openai/deployments/{deployment}/{path:.*}", fake.azure_deployment)
    app.router.add_post("/openai/v1/{path:.*}", fake.azure_v1)
    return fake, serve_in_thread(app, lambda url: setattr(fake, "url", url), handler_cancellation=True)


def serve_in_thread(app: web.Application, on_url, **runner_kwargs):
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def start():
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, **runner_kwargs)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        state["runner"] = runner
        on_url(f"http://127.0.0.1:{port}")
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(10)

    def stop(before=None):
        async def shutdown():
            if before is not None:
                await before()
            await state["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return stop
