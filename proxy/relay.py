"""Server-sent events relay: chunks go to the client as they arrive; only the events the gateway
must read (usage) are parsed, and only the chat usage chunk may be rewritten (SPEC 3)."""

import json

from . import meters


class EventSplitter:
    """Splits an SSE byte stream into whole events (without the blank line that ends each)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self._buffer + chunk if self._buffer else chunk
        parts = data.split(b"\n\n")
        self._buffer = parts.pop()
        return [p for p in parts if p]

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return rest


def data_of(event: bytes) -> bytes:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


class ChatRelay:
    """Chat completions: reads the usage chunk; strips it again when the client did not ask."""

    def __init__(self, meter: meters.StreamMeter, *, strip_usage: bool) -> None:
        self.meter = meter
        self.strip_usage = strip_usage
        self.done = False

    def event(self, event: bytes) -> bytes | None:
        data = data_of(event)
        if data == b"[DONE]":
            self.done = True
            return event
        if not meters.has_usage_object(data):
            self.meter.keep_delta(data)
            return event
        try:
            obj = json.loads(data)
            if not isinstance(obj["usage"], dict):
                raise TypeError("usage is not an object")
            self.meter.usage = self.meter.answer_of(obj)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            self.meter.malformed = True
            return event
        if not self.strip_usage:
            return event
        if not obj.get("choices"):
            return None
        obj["usage"] = None  # a chunk carrying both: keep the choices, hide the forced usage
        self.meter.keep_delta(data)
        return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class ResponsesRelay:
    """Responses API: usage (with cached and reasoning tokens) from response.completed/incomplete;
    the built-in tool calls of finished output items, for a stream cut before those."""

    def __init__(self, meter: meters.StreamMeter) -> None:
        self.meter = meter
        self.done = False
        self.failed = False
        self.response_id: object = None  # the relayed response's id, from its final event

    def event(self, event: bytes) -> bytes:
        data = data_of(event)
        if any(name in event for name in meters.ResponsesStreamMeter.FINAL_EVENTS) and meters.has_usage_object(data):
            try:
                obj = json.loads(data)
                if not isinstance(obj["response"]["usage"], dict):
                    raise TypeError("usage is not an object")
                self.meter.usage = self.meter.answer_of(obj["response"])
                self.response_id = obj["response"].get("id")
                self.done = True
                self.failed = obj.get("type") == "response.failed"
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                self.meter.malformed = True
        elif b"output_text.delta" in data or not event.startswith(b"event:"):
            self.meter.keep_delta(data)
        elif meters.ResponsesStreamMeter.ITEM_DONE in event:
            self.meter.item_done(data)
        return event


def error_event(*, responses: bool, body: dict) -> bytes:
    """The error the client sees when the upstream fails mid-stream (the official SDKs raise on it)."""
    payload = json.dumps({"type": "error", **body["error"], "error": body["error"]}) if responses else json.dumps(body)
    prefix = b"event: error\n" if responses else b""
    return prefix + b"data: " + payload.encode() + b"\n\n"
