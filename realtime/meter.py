"""Metering of one realtime session: pure bookkeeping over the events relayed, no I/O.

Token-priced models are billed from the usage the upstream reports (`response.done`, and
`conversation.item.input_audio_transcription.completed`). Time-priced models (a unit price per
second or minute) are billed from the audio the client appended: decoded bytes ÷ (rate × width ×
channels) of the session's input format, the session's total rounded up to whole units of the price.
"""

import base64
import binascii
from dataclasses import dataclass, field
from decimal import Decimal

from quota.models import PriceVersion
from quota.pricing import Usage, ceil_units

# (sample rate, bytes per sample, channels) of the input formats the Realtime API accepts.
PCM16_24K = (24000, 2, 1)
G711 = (8000, 1, 1)
BETA_FORMATS = {"pcm16": PCM16_24K, "g711_ulaw": G711, "g711_alaw": G711}
GA_FORMATS = {"audio/pcm": PCM16_24K, "audio/pcmu": G711, "audio/pcma": G711}

TRANSCRIPTION_DONE = "conversation.item.input_audio_transcription.completed"
TEXT_DELTAS = ("response.text.delta", "response.output_text.delta", "response.audio_transcript.delta")
CHARS_PER_TOKEN = 4


def dict_at(event: dict, key: str) -> dict:
    """event[key] when it is a JSON object, else an empty dict (clients send anything)."""
    value = event.get(key)
    return value if isinstance(value, dict) else {}


def b64_decoded_len(data: str) -> int:
    """Decoded size of base64 text without decoding it; malformed input counts as 0."""
    n = len(data)
    if n % 4:
        try:
            return len(base64.b64decode(data))
        except (binascii.Error, ValueError):
            return 0
    return n // 4 * 3 - data[-2:].count("=")


def audio_format(session: dict, current: tuple[int, int, int]) -> tuple[int, int, int]:
    """The input audio format a `session.update` sets (beta or GA shape), else the current one."""
    beta = session.get("input_audio_format")
    if isinstance(beta, str) and beta in BETA_FORMATS:
        return BETA_FORMATS[beta]
    audio = session.get("audio")
    fmt = (
        audio.get("input", {}).get("format")
        if isinstance(audio, dict) and isinstance(audio.get("input"), dict)
        else None
    )
    if isinstance(fmt, dict) and fmt.get("type") in GA_FORMATS:
        rate, width, channels = GA_FORMATS[fmt["type"]]
        given = fmt.get("rate")
        if isinstance(given, int) and given > 0:
            rate = given
        return (rate, width, channels)
    return current


@dataclass
class SessionMeter:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    transcription_seconds: Decimal = Decimal(0)
    audio_seconds: Decimal = Decimal(0)
    fmt: tuple[int, int, int] = PCM16_24K
    # The response in progress (between response.created and response.done), if any.
    responses_open: set = field(default_factory=set)
    delta_chars: int = 0
    version: int = 0  # bumped on every change that may move the bill
    # The service tier the client's session.update asked for and the one the upstream's responses
    # report: billed like /v1's (quota.pricing.billed_tier, the price's tier multiplier).
    requested_tier: str = ""
    reported_tier: str = ""

    # --- events ----------------------------------------------------------------------------

    def client_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind in ("session.update", "transcription_session.update") and isinstance(event.get("session"), dict):
            self.fmt = audio_format(event["session"], self.fmt)
            tier = event["session"].get("service_tier")
            if isinstance(tier, str) and tier[:16] != self.requested_tier:
                self.requested_tier = tier[:16]
                self.version += 1
        elif kind == "input_audio_buffer.append" and isinstance(event.get("audio"), str):
            nbytes = b64_decoded_len(event["audio"])
            rate, width, channels = self.fmt
            self.audio_seconds += Decimal(nbytes) / Decimal(rate * width * channels)
            self.version += 1

    def upstream_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "response.created":
            self.responses_open.add((event.get("response") or {}).get("id"))
        elif kind == "response.done":
            response = event.get("response") or {}
            self.responses_open.discard(response.get("id"))
            if isinstance(response.get("service_tier"), str):
                self.reported_tier = response["service_tier"][:16]
            if not self.responses_open:
                self.delta_chars = 0
            self._add_tokens(response.get("usage"))
        elif kind == TRANSCRIPTION_DONE:
            self._add_transcription(event.get("usage"))
        elif kind in TEXT_DELTAS and self.responses_open and isinstance(event.get("delta"), str):
            self.delta_chars += len(event["delta"])

    def _add_tokens(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        details_in = usage.get("input_token_details") or {}
        details_out = usage.get("output_token_details") or {}
        self.input_tokens += _int(usage.get("input_tokens"))
        self.output_tokens += _int(usage.get("output_tokens"))
        self.cached_tokens += _int(details_in.get("cached_tokens"))
        self.audio_input_tokens += _int(details_in.get("audio_tokens"))
        self.audio_output_tokens += _int(details_out.get("audio_tokens"))
        self.version += 1

    def _add_transcription(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        if usage.get("type") == "duration":
            try:
                self.transcription_seconds += max(Decimal(str(usage.get("seconds") or 0)), Decimal(0))
            except ArithmeticError:
                return
            self.version += 1
            return
        self._add_tokens(usage)

    @property
    def response_in_progress(self) -> bool:
        return bool(self.responses_open)

    # --- the bill --------------------------------------------------------------------------

    def usage(self, price: PriceVersion | None, *, cut: bool = False) -> Usage:
        """What the session consumed so far, in the meter the price needs.

        `cut`: the session ended inside a response whose usage never came; its output is estimated
        from the text deltas relayed (~4 characters per token) and the usage is flagged estimated.
        """
        output, estimated = self.output_tokens, False
        if cut and self.response_in_progress and self.delta_chars:
            output += -(-self.delta_chars // CHARS_PER_TOKEN)
            estimated = True
        quantity, unit = None, ""
        seconds = self.audio_seconds or self.transcription_seconds
        if price is not None and price.unit in ("second", "minute"):
            per = Decimal(60) if price.unit == "minute" else Decimal(1)
            quantity, unit = ceil_units(seconds / per), price.unit
        elif seconds and not (self.input_tokens or output):
            quantity, unit = ceil_units(seconds), "second"
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=output,
            cached_tokens=self.cached_tokens,
            audio_input_tokens=self.audio_input_tokens,
            audio_output_tokens=self.audio_output_tokens,
            quantity=quantity,
            unit=unit,
            estimated=estimated,
            service_tier=self.reported_tier,
            requested_tier=self.requested_tier,
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
