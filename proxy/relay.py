"""Server-sent events relay: what the upstream sends goes to the client as it came, in whole events;
only the events the gateway must read (usage) are parsed, and only the chat usage chunk may be
rewritten (SPEC 3).

A relay is fed the upstream's chunks in order and answers the bytes to send for each. The bytes of
whole events pass unchanged (the same object when a chunk ends an event, which is the usual case)
after one scan for the mark of an event that must be read: a chat usage object, a Responses final
event. Only a run of events that holds such a mark is split into events. What was relayed is kept by
reference, and parsed only if the stream ends without usage (the meter's estimate)."""

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import StreamingHttpResponse

from lib import asgi

from . import meters
from .bodies import encode_compact

# A byte looked for by its value: `bytes in bytes` first tries its operand as an integer and makes,
# then drops, a TypeError before it searches (once a chunk here).
_CR = ord("\r")


class EventStream(StreamingHttpResponse):
    """A relayed event stream. The server iterates the relay's parts as they are (bytes already):
    Django's StreamingHttpResponse would pass each part through two more generators and a copy
    check on the way to the ASGI send. `parts` makes the relay's generator for this response:
    once its first part went as an ASGI message (the headers leave with it), the generator writes
    every later one through `writer` when the server has one (`lib.asgi.part_writer`, set by the
    handler): no message, no send loop and no server reply coroutine per part."""

    writer: asgi.PartWriter | None = None

    def __init__(self, parts: Callable[["EventStream"], AsyncIterator[bytes]], **kwargs: Any) -> None:
        self._parts = parts(self)
        super().__init__(self._parts, **kwargs)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._parts


class Relay:
    """Events in, bytes out. Subclasses name the mark of an event to read and read it (`event`)."""

    MARK: re.Pattern[bytes]

    def __init__(self, meter: meters.StreamMeter) -> None:
        self.meter = meter
        self._buffer = b""  # the start of an event not yet complete
        self._done = b""  # a `data: [DONE]` event held back (`held`)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send for `chunk`: the events it completes (b"" while none is complete)."""
        if self._done:  # events after a [DONE]: it goes first, in the upstream's order
            return self.held() + self.feed(chunk)
        if self._buffer:
            chunk, self._buffer = self._buffer + chunk, b""
        if _CR in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        end = chunk.rfind(b"\n\n") + 2
        if end == 1:
            self._buffer = chunk
            return b""
        if end < len(chunk):
            chunk, self._buffer = chunk[:end], chunk[end:]
        if self.MARK.search(chunk) is None:
            self.meter.keep(chunk)
            return self._hold_done(chunk)
        out = []
        for event in chunk.split(b"\n\n"):
            if event and (relayed := self.event(event)) is not None:
                out.append(relayed)
                out.append(b"\n\n")
        return self._hold_done(b"".join(out))

    def rest(self) -> bytes:
        """The last event of a stream that ended without its blank line (b"" when there is none)."""
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        relayed = self.event(rest) if rest else None
        return b"" if relayed is None else self.held() + self._hold_done(relayed + b"\n\n")

    def held(self) -> bytes:
        """The `data: [DONE]` event held back, sent after the call's settlement: a client that stops
        reading at [DONE] (the OpenAI SDKs do) finds the call's record and counters written."""
        done, self._done = self._done, b""
        return done

    def _hold_done(self, out: bytes) -> bytes:
        """`out` less a `[DONE]` event it ends with, which is kept for `held`."""
        if not out.endswith(b"[DONE]\n\n"):
            return out
        previous = out.rfind(b"\n\n", 0, len(out) - 2)
        start = 0 if previous < 0 else previous + 2
        if meters.data_of(out[start:-2]) != b"[DONE]":
            return out
        self._done = out[start:]
        return out[:start]

    def event(self, event: bytes) -> bytes | None:  # pragma: no cover - overridden
        raise NotImplementedError


class ChatRelay(Relay):
    """Chat completions: reads the usage chunk; strips it again when the client did not ask."""

    MARK = re.compile(rb'"usage"\s*:\s*\{')

    def __init__(self, meter: meters.StreamMeter, *, strip_usage: bool) -> None:
        super().__init__(meter)
        self.strip_usage = strip_usage

    def event(self, event: bytes) -> bytes | None:
        data = meters.data_of(event)
        if not meters.has_usage_object(data):
            self.meter.keep(event)
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
        self.meter.keep(event)
        return b"data: " + encode_compact(obj).encode()


class ResponsesRelay(Relay):
    """Responses API: usage (with cached and reasoning tokens) from response.completed/incomplete;
    the built-in tool calls of finished output items, for a stream cut before those."""

    MARK = re.compile(rb"response\.(?:completed|incomplete|failed)")

    def __init__(self, meter: meters.StreamMeter) -> None:
        super().__init__(meter)
        self.failed = False
        self.response_id: object = None  # the relayed response's id, from its final event

    def event(self, event: bytes) -> bytes:
        data = meters.data_of(event)
        if not (self.MARK.search(event) and meters.has_usage_object(data)):
            self.meter.keep(event)
            return event
        try:
            obj = json.loads(data)
            if not isinstance(obj["response"]["usage"], dict):
                raise TypeError("usage is not an object")
            self.meter.usage = self.meter.answer_of(obj["response"])
            self.response_id = obj["response"].get("id")
            self.failed = obj.get("type") == "response.failed"
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            self.meter.malformed = True
        return event


def error_event(*, responses: bool, body: dict) -> bytes:
    """The error the client sees when the upstream fails mid-stream (the official SDKs raise on it)."""
    payload = json.dumps({"type": "error", **body["error"], "error": body["error"]}) if responses else json.dumps(body)
    prefix = b"event: error\n" if responses else b""
    return prefix + b"data: " + payload.encode() + b"\n\n"
