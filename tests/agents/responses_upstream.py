"""A scripted upstream speaking the Responses API's event stream the way agent clients (the Codex
CLI) read it: `response.created`, `response.in_progress`, each output item `added`, its deltas and
`done`, then `response.completed` with usage, every event with its `sequence_number`.

Each answer is the next entry of `script` (a plain message when the script is empty):
- `{"text": "..."}`: an assistant message;
- `{"call": name, "arguments": {...}}`: a `function_call` item for the client to run; the client
  answers it with a `function_call_output` item in its next request.

The requests received are kept (`requests`, each `{"path", "headers", "body"}`) and the provider's
key is checked like tests.proxy.fake_upstream's.
"""

import json
import uuid

from aiohttp import web

from tests.proxy.fake_upstream import RecordingUpstream, serve_in_thread

DEFAULT_TEXT = "Hello from the agent upstream."


def tokens_of(body: dict) -> int:
    """A rough, deterministic input size (characters / 4) so that every answer reports usage."""
    return max(1, len(json.dumps(body.get("input") or "")) // 4)


class ResponsesUpstream(RecordingUpstream):
    def __init__(self):
        super().__init__()
        self.script: list[dict] = []

    async def handle(self, request: web.Request):
        if (refused := self.bad_bearer(request)) is not None:
            return refused
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if request.match_info["path"] != "responses":
            return web.json_response({"error": {"message": "not served here", "type": "invalid_request_error"}}, 404)
        step = self.script.pop(0) if self.script else {"text": DEFAULT_TEXT}
        return await self.stream(request, body, step)

    async def stream(self, request: web.Request, body: dict, step: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        rid = f"resp_{uuid.uuid4().hex}"
        usage = {
            "input_tokens": tokens_of(body),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_of(body) + 12,
        }
        head = {"id": rid, "object": "response", "created_at": 1, "model": body.get("model"), "output": []}
        events: list[dict] = [
            {"type": "response.created", "response": {**head, "status": "in_progress", "usage": None}},
            {"type": "response.in_progress", "response": {**head, "status": "in_progress", "usage": None}},
        ]
        item = self.call_events(events, step) if "call" in step else self.message_events(events, step["text"])
        done = {**head, "status": "completed", "output": [item], "usage": usage}
        events.append({"type": "response.completed", "response": done})
        for n, event in enumerate(events):
            event["sequence_number"] = n
            data = json.dumps(event).encode()
            await response.write(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
        return response

    @staticmethod
    def message_events(events: list[dict], text: str) -> dict:
        mid = f"msg_{uuid.uuid4().hex}"
        part = {"type": "output_text", "annotations": [], "text": ""}
        item = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        at = {"item_id": mid, "output_index": 0, "content_index": 0}
        events.append({"type": "response.output_item.added", "output_index": 0, "item": item})
        events.append({"type": "response.content_part.added", **at, "part": part})
        events += [{"type": "response.output_text.delta", **at, "delta": word} for word in text.split(" ")[:1]]
        events += [{"type": "response.output_text.delta", **at, "delta": " " + w} for w in text.split(" ")[1:]]
        events.append({"type": "response.output_text.done", **at, "text": text})
        events.append({"type": "response.content_part.done", **at, "part": {**part, "text": text}})
        done = {**item, "status": "completed", "content": [{**part, "text": text}]}
        events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
        return done

    @staticmethod
    def call_events(events: list[dict], step: dict) -> dict:
        arguments = json.dumps(step.get("arguments") or {})
        item = {
            "id": f"fc_{uuid.uuid4().hex}",
            "type": "function_call",
            "status": "in_progress",
            "call_id": f"call_{uuid.uuid4().hex[:12]}",
            "name": step["call"],
            "arguments": "",
        }
        events.append({"type": "response.output_item.added", "output_index": 0, "item": item})
        events.append(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": item["id"],
                "output_index": 0,
                "delta": arguments,
            }
        )
        events.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "output_index": 0,
                "arguments": arguments,
            }
        )
        done = {**item, "status": "completed", "arguments": arguments}
        events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
        return done


def start_responses_upstream() -> tuple[ResponsesUpstream, callable]:
    """Serves on 127.0.0.1:<free port> from a background thread (OpenAI paths under /v1)."""
    upstream = ResponsesUpstream()
    app = web.Application()
    app.router.add_post("/v1/{path:.*}", upstream.handle)
    return upstream, serve_in_thread(app, lambda url: setattr(upstream, "url", url), handler_cancellation=True)
