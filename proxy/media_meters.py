"""Meters and reservation estimates of the non-token endpoints (SPEC 3 and 4).

A response meter takes (request, raw response body) -> Usage; `request` is the parsed JSON body
or, for multipart, the form's text fields plus `upload` (proxy.multipart.Upload.meta()).
A meter reports every unit it can observe (say images *and* the tokens a token-priced image model
reports), and quota.pricing.cost_for picks the one the price is expressed in; when the price's unit
is none of them the call is unpriced (cost null, priced=false), never $0.

Estimates (request -> Usage) are priced with the same price before the call, for the reservation.
"""

import json
import math
from decimal import Decimal
from typing import Any

from django.conf import settings

from quota.pricing import Usage

from .meters import _int, chat_usage, prompt_estimate

# gpt-image-1 output tokens per image by quality, square and oblong (OpenAI's published table);
# the reservation for a token-priced image model assumes this many per image ("high" when unsaid).
IMAGE_OUTPUT_TOKENS: dict[str | None, tuple[int, int]] = {
    "low": (272, 408),
    "medium": (1056, 1584),
    "high": (4160, 6240),
}
# What the providers make when a request names no size or quality (dall-e-2 and dall-e-3 make
# 1024x1024 standard; gpt-image-1 reports what it made in its answer).
DEFAULT_SIZE, DEFAULT_QUALITY = "1024x1024", "standard"
# Token-priced transcription (gpt-4o-transcribe): ~1,000 audio tokens a minute in, text out.
AUDIO_TOKENS_PER_SECOND = 17
TEXT_TOKENS_PER_SECOND = 4


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def count_of(body: dict, name: str = "n", default: int = 1) -> int:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def whole_seconds(seconds: float | Decimal) -> Decimal:
    """Audio duration rounded UP to the whole second (SPEC 4)."""
    return Decimal(math.ceil(Decimal(str(seconds)))) if seconds > 0 else Decimal(0)


def _word(value: object) -> str:
    return value.strip().lower()[:40] if isinstance(value, str) else ""


def image_variant(body: dict, answer: dict | None = None) -> str:
    """What was made, as "<size>/<quality>": the answer's own `size`/`quality` (gpt-image-1
    reports them), else the request's, else what the provider makes by default."""
    answer = answer or {}
    size = _word(answer.get("size")) or _word(body.get("size")) or DEFAULT_SIZE
    quality = _word(answer.get("quality")) or _word(body.get("quality")) or DEFAULT_QUALITY
    return f"{size}/{quality}"


def _image_tokens(usage: object) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("input_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage.get("input_tokens")) or _int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("output_tokens")) or _int(usage.get("completion_tokens")),
        cached_tokens=_int(details.get("cached_tokens")),
    )


# --- response meters ---------------------------------------------------------------------------


def images_usage(request: dict, raw: bytes) -> Usage:
    """Images returned (`data`) at the size and quality made, plus tokens when a token-priced
    image model reports `usage` (which a token price bills instead)."""
    payload = _json(raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("an images answer without a `data` list")
    tokens = _image_tokens(payload.get("usage"))
    return Usage(
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        cached_tokens=tokens.cached_tokens,
        quantity=Decimal(len(payload["data"])),
        unit="image",
        variant=image_variant(request, payload),
    )


def speech_usage(request: dict, raw: bytes = b"") -> Usage:
    """Characters of `input`: the answer is audio, it carries no usage."""
    text = request.get("input")
    return Usage(quantity=Decimal(len(text) if isinstance(text, str) else 0), unit="character")


def transcription_usage(request: dict, raw: bytes) -> Usage:
    """Tokens when the upstream reports them; else the audio duration: `usage.seconds` (whisper's
    duration usage), the response's `duration` (verbose_json), else the upload's decoded duration
    (proxy.audio; its upper bound, flagged estimated, when it could not be decoded)."""
    payload = _json(raw)
    payload = payload if isinstance(payload, dict) else {}
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    if usage.get("type") == "tokens" or (_int(usage.get("input_tokens")) and usage.get("type") != "duration"):
        details = usage.get("input_token_details") or usage.get("input_tokens_details") or {}
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            audio_input_tokens=_int(details.get("audio_tokens")),
        )
    for seconds in (usage.get("seconds"), payload.get("duration")):
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            return Usage(quantity=whole_seconds(seconds), unit="second")
    upload = request.get("upload") or {}
    seconds = upload.get("duration_s")
    return Usage(
        quantity=whole_seconds(seconds or 0), unit="second", estimated=not upload.get("duration_decoded", False)
    )


def moderation_usage(request: dict, raw: bytes) -> Usage:
    """One request, plus tokens when the upstream reports them (Mistral does, OpenAI does not)."""
    payload = _json(raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise ValueError("a moderation answer without `results`")
    usage = payload.get("usage")
    tokens = chat_usage(usage) if isinstance(usage, dict) else Usage()
    return Usage(
        input_tokens=tokens.input_tokens or _int((usage or {}).get("total_tokens")),
        output_tokens=tokens.output_tokens,
        quantity=Decimal(1),
        unit="request",
    )


def rerank_usage(request: dict, raw: bytes) -> Usage:
    """One query (Cohere bills search units per query), plus tokens when reported (Jina)."""
    payload = _json(raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise ValueError("a rerank answer without `results`")
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    tokens = _int(usage.get("prompt_tokens")) or _int(usage.get("total_tokens"))
    return Usage(input_tokens=tokens, quantity=Decimal(1), unit="query")


def ocr_usage(request: dict, raw: bytes) -> Usage:
    """Pages: `usage_info.pages_processed`, else the number of pages returned (Mistral's shape)."""
    payload = _json(raw)
    if not isinstance(payload, dict):
        raise ValueError("an OCR answer that is not a JSON object")
    info = payload.get("usage_info")
    if not isinstance(info, dict):
        info = {}
    processed = info.get("pages_processed")
    if isinstance(processed, int) and not isinstance(processed, bool) and processed >= 0:
        return Usage(quantity=Decimal(processed), unit="page")
    pages = payload.get("pages")
    if not isinstance(pages, list):
        raise ValueError("an OCR answer without `pages`")
    return Usage(quantity=Decimal(len(pages)), unit="page")


# --- reservation estimates ---------------------------------------------------------------------


def estimate_images(body: dict) -> Usage:
    """`n` images at the requested size and quality (tokens: OpenAI's table for that quality and
    shape)."""
    n = count_of(body)
    square, oblong = IMAGE_OUTPUT_TOKENS.get(_word(body.get("quality")), IMAGE_OUTPUT_TOKENS["high"])
    width, _, height = _word(body.get("size")).partition("x")
    per_image = square if width and width == height else oblong  # auto: the larger
    return Usage(
        input_tokens=prompt_estimate(body, "prompt"),
        output_tokens=n * per_image,
        quantity=Decimal(n),
        unit="image",
        variant=image_variant(body),
    )


def estimate_speech(body: dict) -> Usage:
    return speech_usage(body)


def estimate_transcription(body: dict) -> Usage:
    """The upload's duration as proxy.audio read it (decoded, or an upper bound)."""
    seconds = (body.get("upload") or {}).get("duration_s") or 0
    return Usage(
        input_tokens=math.ceil(seconds * AUDIO_TOKENS_PER_SECOND),
        output_tokens=math.ceil(seconds * TEXT_TOKENS_PER_SECOND),
        quantity=whole_seconds(seconds),
        unit="second",
    )


def estimate_moderation(body: dict) -> Usage:
    return Usage(input_tokens=prompt_estimate(body, "input"), quantity=Decimal(1), unit="request")


def estimate_rerank(body: dict) -> Usage:
    return Usage(input_tokens=prompt_estimate(body, "query", "documents"), quantity=Decimal(1), unit="query")


def estimate_ocr(body: dict) -> Usage:
    """The pages asked for (`pages: [0, 2, ...]`), else GATEWAY_OCR_ESTIMATE_PAGES."""
    pages = body.get("pages")
    if isinstance(pages, list) and pages:
        count = len(pages)
    else:
        count = settings.GATEWAY_OCR_ESTIMATE_PAGES
    return Usage(quantity=Decimal(count), unit="page")
