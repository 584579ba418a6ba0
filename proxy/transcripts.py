"""Transcription answers: the format asked of the provider, and the client's format made from it.

A transcription is billed from what the provider reports (SPEC 4), and `text`, `srt` and `vtt`
answers report nothing. So the gateway asks the provider for a format that reports what the
model's price is expressed in, whatever the client asked, and converts the answer back:

- a price per second or minute: `verbose_json` (the audio's `duration`, and the segments that
  `srt` and `vtt` are made from; every Whisper-style provider offers it);
- a token price (gpt-4o-transcribe and its kin, which offer only `json` and `text`): `json`, whose
  `usage` carries the tokens; `srt`/`vtt` are asked as `verbose_json` all the same (such a model
  refuses those formats either way, and no unmetered answer comes back).

A format the gateway does not convert (`verbose_json`, `diarized_json`, ...), or a model without
a price in force, goes upstream as the client asked. An answer that cannot be converted (not the
JSON asked for) is relayed as it came.
"""

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quota.models import PriceVersion

CONVERTED = ("json", "text", "srt", "vtt")
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"


def upstream_format(asked: object, price: "PriceVersion | None") -> str | None:
    """The `response_format` to send upstream instead of the client's; None: the client's."""
    asked = asked or "json"
    if asked not in CONVERTED or price is None:
        return None
    if not price.unit and asked in ("json", "text"):
        return None if asked == "json" else "json"
    return "verbose_json"


def _timestamp(seconds: object, separator: str) -> str:
    value = float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else 0.0
    millis = max(0, round(value * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


def _cues(answer: dict) -> list[tuple[object, object, str]]:
    """(start, end, text) per segment; one cue over the whole duration when there are none."""
    segments = answer.get("segments")
    cues: list[tuple[object, object, str]] = [
        (s.get("start"), s.get("end"), str(s.get("text") or "").strip())
        for s in (segments if isinstance(segments, list) else [])
        if isinstance(s, dict)
    ]
    return cues or [(0, answer.get("duration"), str(answer.get("text") or "").strip())]


def _subtitles(answer: dict, fmt: str) -> str:
    if fmt == "srt":
        return "".join(
            f"{index}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n\n"
            for index, (start, end, text) in enumerate(_cues(answer), start=1)
        )
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n\n" for start, end, text in _cues(answer)
    )


def for_client(asked: object, raw: bytes) -> tuple[bytes, str] | None:
    """(body, content type) in the format the client asked, from the provider's JSON answer;
    None when it is not one (relayed as it came)."""
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        return None
    fmt = asked or "json"
    if fmt == "text":
        return (answer["text"] + "\n").encode(), TEXT_TYPE
    if fmt in ("srt", "vtt"):
        return _subtitles(answer, fmt).encode(), TEXT_TYPE
    body = {"text": answer["text"]}
    if isinstance(answer.get("usage"), dict):
        body["usage"] = answer["usage"]
    return json.dumps(body, ensure_ascii=False).encode(), JSON_TYPE
