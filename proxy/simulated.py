"""The built-in `simulated` provider: a deterministic upstream inside the gateway process.

No network, no key. It answers in the OpenAI wire format with realistic bodies and `usage`, JSON or
SSE, so the demo (`make run`) and tests work on a laptop. Each endpoint is one handler registered
with @handles(endpoint name): chat, responses, embeddings here, the media endpoints in
proxy.simulated_media.
"""

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

from .meters import CHARS_PER_TOKEN

CREATED = 1_764_288_000  # fixed: output is deterministic
REPLY = "This is a simulated reply from the gateway's built-in provider; no model was called."

Handler: TypeAlias = Callable[[dict], "SimReply"]
HANDLERS: dict[str, Handler] = {}


def handles(endpoint_name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[endpoint_name] = fn
        return fn

    return register


class SimReply:
    """Same surface as proxy.upstream.Reply."""

    secrets: tuple[str, ...] = ()
    retry_after: str | None = None

    def __init__(self, *, status: int = 200, body: bytes = b"", events: list[bytes] | None = None) -> None:
        self.status = status
        self.content_type = "text/event-stream" if events is not None else "application/json"
        self._body = body
        self._events = events

    @property
    def is_event_stream(self) -> bool:
        return self._events is not None

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        for event in self._events or ():
            await asyncio.sleep(0)  # arrives piece by piece, like a real stream
            yield event

    def close(self) -> None:
        pass


def reply(endpoint_name: str, body: dict) -> SimReply:
    handler = HANDLERS.get(endpoint_name)
    if handler is None:
        return _json(
            {"error": {"message": f"simulated provider has no {endpoint_name}", "type": "invalid_request_error"}}, 404
        )
    return handler(body)


def _json(obj: dict, status: int = 200) -> SimReply:
    return SimReply(status=status, body=json.dumps(obj, separators=(",", ":")).encode())


def _sse(objs: list[dict], *, done: bool = True, typed: bool = False) -> SimReply:
    events = []
    for obj in objs:
        prefix = f"event: {obj['type']}\n".encode() if typed else b""
        events.append(prefix + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")
    if done:
        events.append(b"data: [DONE]\n\n")
    return SimReply(events=events)


def _tokens(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def _words(limit: object) -> list[str]:
    words = [w + " " for w in REPLY.split(" ")]
    words[-1] = words[-1].rstrip()
    if isinstance(limit, int) and limit > 0:
        words = words[:limit]
    return words


@handles("chat.completions")
def chat(body: dict) -> SimReply:
    words = _words(body.get("max_completion_tokens") or body.get("max_tokens"))
    usage = {"prompt_tokens": _tokens(body.get("messages", "")), "completion_tokens": len(words)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    base = {"id": "chatcmpl-simulated", "created": CREATED, "model": body.get("model"), "system_fingerprint": "sim"}
    finish = "length" if len(words) < len(_words(None)) else "stop"
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(words), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return _json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
    chunk = {**base, "object": "chat.completion.chunk"}

    def delta(d: dict, finish_reason: str | None = None) -> dict:
        return {**chunk, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]}

    objs = [delta({"role": "assistant", "content": ""})]
    objs += [delta({"content": w}) for w in words]
    objs.append(delta({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        objs.append({**chunk, "choices": [], "usage": usage})
    return _sse(objs)


@handles("responses")
def responses(body: dict) -> SimReply:
    words = _words(body.get("max_output_tokens"))
    input_tokens = _tokens(body.get("input", "")) + (_tokens(body["instructions"]) if body.get("instructions") else 0)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(words),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + len(words),
    }
    text = "".join(words)
    content = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": "msg_simulated", "type": "message", "status": "completed", "role": "assistant", "content": [content]}
    response = {
        "id": "resp_simulated",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "model": body.get("model"),
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }
    if not body.get("stream"):
        return _json(response)
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "item_id": item["id"],
            "output_index": 0,
            "content_index": 0,
            "part": {**content, "text": ""},
        },
    ]
    events += [
        {"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0, "content_index": 0, "delta": w}
        for w in words
    ]
    events += [
        {
            "type": "response.output_text.done",
            "item_id": item["id"],
            "output_index": 0,
            "content_index": 0,
            "text": text,
        },
        {
            "type": "response.content_part.done",
            "item_id": item["id"],
            "output_index": 0,
            "content_index": 0,
            "part": content,
        },
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return _sse(events, done=False, typed=True)


@handles("embeddings")
def embeddings(body: dict) -> SimReply:
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    dims = body.get("dimensions")
    if not isinstance(dims, int) or dims <= 0:
        dims = 8
    data = []
    for index, text in enumerate(inputs):
        seed = sum(ord(c) for c in str(text)) % 97
        vector = [round(((seed + i * 7) % 19) / 19 - 0.5, 6) for i in range(dims)]
        embedding: list[float] | str = vector
        if body.get("encoding_format") == "base64":  # what the official SDKs ask for by default
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_tokens(t) for t in inputs)
    return _json(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
