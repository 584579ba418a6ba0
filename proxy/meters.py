"""Meters: what the upstream answered -> quota.pricing.Usage, and the reservation estimates.

Pure functions over parsed JSON (or bytes); one per wire shape, named in proxy.registry.
Token fields follow OpenAI: cached ⊂ input, reasoning ⊂ output.
"""

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from allocations.cost_options import CALL_ITEM_TYPES
from lib.conf import setting
from lib.frozen import quick_init
from lib.jsontext import text_encoder
from quota import options
from quota.billing import bill as billing
from quota.pricing import Usage

CHARS_PER_TOKEN = 4
_decoder = json.JSONDecoder()
# json.dumps(value, ensure_ascii=False) without an encoder made per call (dumps reuses its own
# only with every option at its default), from the C encoder: the same text. Its values are the
# request's, as the JSON decoder made them: no cycle.
_encode_text = text_encoder(ensure_ascii=False, acyclic=True)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_for_text(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


# --- usage objects -> Usage ----------------------------------------------------------------------


def chat_usage(usage: dict, **extras: Any) -> Usage:
    """Chat completions and embeddings: prompt_tokens / completion_tokens (+ details)."""
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return Usage(
        **extras,
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        cached_tokens=_int(prompt.get("cached_tokens")),
        audio_input_tokens=_int(prompt.get("audio_tokens")),
        reasoning_tokens=_int(completion.get("reasoning_tokens")),
        audio_output_tokens=_int(completion.get("audio_tokens")),
    )


def responses_usage(usage: dict, **extras: Any) -> Usage:
    """Responses API: input_tokens / output_tokens with cached and reasoning details."""
    inp = usage.get("input_tokens_details") or {}
    out = usage.get("output_tokens_details") or {}
    return Usage(
        **extras,
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cached_tokens=_int(inp.get("cached_tokens")),
        reasoning_tokens=_int(out.get("reasoning_tokens")),
    )


def embeddings_usage(usage: dict) -> Usage:
    return Usage(input_tokens=_int(usage.get("prompt_tokens")) or _int(usage.get("total_tokens")))


# --- whole answers -> Usage (the top-level usage, service tier and output only) -------------------


def _tier(answer: dict) -> str:
    tier = answer.get("service_tier")
    return tier[:16] if isinstance(tier, str) else ""


def chat_answer(answer: dict) -> Usage:
    """A chat completion (or its stream's usage chunk): its usage and the tier it was served at."""
    usage = answer.get("usage")
    tier = _tier(answer)
    return chat_usage(usage, service_tier=tier) if isinstance(usage, dict) else Usage(service_tier=tier)


def tool_call_items(output: object) -> tuple[tuple[str, int], ...]:
    """The built-in tool calls among a Responses answer's top-level output items, by item type."""
    if not isinstance(output, list):
        return ()
    counts = Counter(item["type"] for item in output if isinstance(item, dict) and item.get("type") in CALL_ITEM_TYPES)
    return tuple(sorted(counts.items()))


def responses_answer(answer: dict) -> Usage:
    """A Responses API answer (or its stream's final `response`): its usage, tier and tool calls."""
    usage, tier, calls = answer.get("usage"), _tier(answer), tool_call_items(answer.get("output"))
    if isinstance(usage, dict):
        return responses_usage(usage, service_tier=tier, tool_calls=calls)
    return Usage(service_tier=tier, tool_calls=calls)


@quick_init
@dataclasses.dataclass(frozen=True)
class Answer:
    """A JSON answer read once: whether it is JSON, its top-level id, and its usage (None when it
    has no top-level `usage` object; `extras` then still holds its tier and tool calls)."""

    is_json: bool
    usage: Usage | None = None
    extras: Usage = Usage()
    id: object = None


def read_answer(
    body: bytes, *, answer_meter: Callable[[dict], Usage] | None, usage_meter: Callable[[dict], Usage]
) -> Answer:
    """One parse of an answer. An endpoint with an answer meter (chat, responses) is parsed whole
    once (its tier and output are read beside its usage); others (embeddings: mostly float
    arrays) take find_usage's shortcut to the top-level usage object."""
    if answer_meter is None:
        usage_obj = find_usage(body)
        if usage_obj is not None:
            return Answer(True, usage_meter(usage_obj))
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            return Answer(False)
        return Answer(True)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return Answer(False)
    if not isinstance(payload, dict):
        return Answer(True)
    metered = answer_meter(payload)
    has_usage = isinstance(payload.get("usage"), dict)
    return Answer(True, metered if has_usage else None, metered, payload.get("id"))


# --- finding the usage object in a JSON body without parsing all of it ----------------------------


def find_usage(body: bytes) -> dict | None:
    """The top-level `usage` object of a JSON response (never a `usage` key nested in echoed client
    content such as `metadata`). Embeddings bodies are mostly float arrays, so the last `"usage"`
    key is decoded alone when it is a key (a colon right after it) and what follows its value can
    only be the end of the top-level object; anything else falls back to a full parse."""
    at = body.rfind(b'"usage"')
    if at >= 0 and body[max(0, at - 64) : at].rstrip()[-1:] in (b"{", b","):  # a key, not a string's end
        try:
            text = body[at + 7 :].decode()
            colon = len(text[:64]) - len(text[:64].lstrip())
            if text[colon : colon + 1] != ":":  # a string in an array, not a key: its colon is someone else's
                raise ValueError(text[:colon])
            start = colon + 1
            start += len(text[start : start + 64]) - len(text[start : start + 64].lstrip())
            value, end = _decoder.raw_decode(text, start)
        except (ValueError, UnicodeDecodeError, RecursionError):
            value = None
        if isinstance(value, dict) and _closes_top_level(text, end):
            return value
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return usage if isinstance(usage, dict) else None


def _closes_top_level(text: str, at: int) -> bool:
    """True when text[at:] is `(, "key": value)* }` and then the end: the members that follow a
    key at depth one. A key nested deeper is followed by more than one closing bracket."""
    try:
        while True:
            at = len(text) - len(text[at:].lstrip())
            if text[at : at + 1] == "}":
                return not text[at + 1 :].strip()
            if text[at : at + 1] != ",":
                return False
            key, at = _decoder.raw_decode(text, len(text) - len(text[at + 1 :].lstrip()))
            at = len(text) - len(text[at:].lstrip())
            if not isinstance(key, str) or text[at : at + 1] != ":":
                return False
            _, at = _decoder.raw_decode(text, len(text) - len(text[at + 1 :].lstrip()))
    except (ValueError, RecursionError):
        return False


# Looked for by value or by `find`: `bytes in bytes` first tries its operand as an integer and
# makes, then drops, a TypeError before it searches (an event at a time here).
_LF = ord("\n")

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def has_usage_object(data: bytes) -> bool:
    """True when an SSE data payload carries `"usage": {...}` (not `"usage": null`). A quote inside
    a JSON string is escaped, so `"usage"` with bare quotes is a key (or the string "usage")."""
    return _USAGE_OBJECT.search(data) is not None


def data_of(event: bytes) -> bytes:
    """An SSE event's data (its `data:` lines joined)."""
    if event.startswith(b"data: ") and _LF not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


# --- reservation estimates -----------------------------------------------------------------------


def prompt_estimate(body: dict, *fields: str) -> int:
    """~4 characters per token of the request's prompt-bearing fields (JSON-encoded length)."""
    chars = 0
    for name in fields:
        value = body.get(name)
        if isinstance(value, str):
            chars += len(value)
        elif value is not None:
            chars += len(_encode_text(value))
    return tokens_for_text(chars)


def output_limit(body: dict, *fields: str) -> int:
    for name in fields:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return setting("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS")


def estimate_chat(body: dict) -> Usage:
    usage = Usage(
        input_tokens=prompt_estimate(body, "messages", "tools"),
        output_tokens=output_limit(body, "max_completion_tokens", "max_tokens"),
    )
    return billing.billed_usage(facts=options.facts(options.CHAT, body), usage=usage, estimate=True)


def estimate_responses(body: dict) -> Usage:
    usage = Usage(
        input_tokens=prompt_estimate(body, "instructions", "input", "tools"),
        output_tokens=output_limit(body, "max_output_tokens"),
    )
    return billing.billed_usage(facts=options.facts(options.RESPONSES, body), usage=usage, estimate=True)


def estimate_embeddings(body: dict) -> Usage:
    return Usage(input_tokens=prompt_estimate(body, "input"))


# --- streams: usage from the final event, else an estimate from the relayed deltas ----------------


class StreamMeter:
    """Collects what a stream reports. Subclasses know their event shapes."""

    answer_of = staticmethod(chat_answer)  # the usage chunk (chat) or final response (responses)
    FOLD_AT = 1 << 20  # relayed bytes held before they are read into a count

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.usage: Usage | None = None
        self.malformed = False
        self._kept: list[bytes] = []
        self._delta_chars = 0
        self._pending = 0

    def keep(self, events: bytes) -> None:
        """Whole events as relayed, by reference. Read only if the stream ends without usage (rare),
        or once a megabyte is held, so the common path costs a list append per chunk."""
        self._kept.append(events)
        self._pending += len(events)
        if self._pending > self.FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        for events in self._kept:
            for event in events.split(b"\n\n"):
                if event:
                    self.fold_event(event)
        self._kept, self._pending = [], 0

    def fold_event(self, event: bytes) -> None:
        """Counts one relayed event's text into the estimate."""
        data = data_of(event)
        if not data or data == b"[DONE]":
            return
        try:
            self._delta_chars += self.delta_chars(json.loads(data))
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError):
            self.malformed = True

    def delta_chars(self, event: dict) -> int:  # pragma: no cover - overridden
        return 0

    def broken(self) -> bool:
        """Whether an event relayed so far could not be read (the events held are read to know)."""
        self._fold()
        return self.malformed

    def result(self) -> Usage:
        if self.usage is not None:
            return self.usage
        self._fold()
        return Usage(input_tokens=self.prompt_tokens, output_tokens=tokens_for_text(self._delta_chars), estimated=True)


class ChatStreamMeter(StreamMeter):
    def delta_chars(self, event: dict) -> int:
        chars = 0
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            chars += len(delta.get("content") or "") + len(delta.get("refusal") or "")
            for call in delta.get("tool_calls") or ():
                chars += len((call.get("function") or {}).get("arguments") or "")
        return chars


class ResponsesStreamMeter(StreamMeter):
    """Usage from the final event; a stream cut before it is estimated from its text deltas plus
    the built-in tool calls its `response.output_item.done` events reported (the provider bills
    a search it ran whether or not the answer was finished)."""

    answer_of = staticmethod(responses_answer)
    FINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")
    ITEM_DONE = b"response.output_item.done"
    # A call item's type as a JSON string token: an escaped quote inside a text never matches.
    CALL_MARKS = tuple(f'"{kind}"'.encode() for kind in sorted(CALL_ITEM_TYPES))

    def __init__(self, prompt_tokens: int) -> None:
        super().__init__(prompt_tokens)
        self._calls: Counter = Counter()

    def delta_chars(self, event: dict) -> int:
        delta = event.get("delta")
        return len(delta) if isinstance(delta, str) else 0

    def fold_event(self, event: bytes) -> None:
        if event.startswith(b"event:") and event.find(b"output_text.delta") < 0:
            if event.find(self.ITEM_DONE) >= 0:
                self.item_done(data_of(event))
            return  # the stream's other typed events carry no text of the answer
        super().fold_event(event)

    def item_done(self, data: bytes) -> None:
        if not any(mark in data for mark in self.CALL_MARKS):
            return  # a message or a client tool's call: not parsed
        try:
            item = json.loads(data).get("item")
        except (ValueError, AttributeError, RecursionError):
            self.malformed = True
            return
        if isinstance(item, dict) and item.get("type") in CALL_ITEM_TYPES:
            self._calls[item["type"]] += 1

    def result(self) -> Usage:
        usage = super().result()
        if self.usage is None and self._calls:
            return dataclasses.replace(usage, tool_calls=tuple(sorted(self._calls.items())))
        return usage
