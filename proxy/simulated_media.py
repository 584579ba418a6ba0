"""The simulated provider's answers for images, speech, transcription, moderation, rerank and OCR.

Deterministic (same request, same bytes) and in the wire shapes of the real providers: OpenAI for
images (b64 PNGs), speech (audio bytes), transcriptions and moderations, Cohere/Jina for rerank,
Mistral for OCR. Registered into proxy.simulated's handler table on import (proxy.media_views).
Speech is always WAV (or raw PCM for `response_format: pcm`): the simulator has no mp3 encoder,
and says so with its Content-Type.
"""

import base64
import functools
import hashlib
import json
import math
import struct
import zlib
from typing import Any

from .simulated import CREATED, SimReply, _json, _tokens, handles

SAMPLE_RATE = 24_000
CHARS_PER_SECOND = 15  # simulated speaking rate
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class SimBinary(SimReply):
    """A binary answer (audio), relayed in chunks like an upstream body."""

    def __init__(self, *, body: bytes, content_type: str, chunk: int = 16 << 10) -> None:
        super().__init__(events=[body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""])
        self.content_type = content_type
        self._body = body

    @property
    def is_event_stream(self) -> bool:
        return False


def _seed(*values: Any) -> bytes:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).digest()


def png(seed: bytes, size: int = 8) -> bytes:
    """A small solid-colour PNG, the colour taken from the seed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + seed[:3] * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")
    )


def wav(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(pcm))  # fmt: skip
    return header + pcm


def _count(body: dict, name: str = "n") -> int:
    value = body.get(name, 1)
    value = int(value) if isinstance(value, str) and value.isdigit() else value
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10 else 1


def _images(body: dict, kind: str) -> SimReply:
    n = _count(body)
    data = []
    for index in range(n):
        image = base64.b64encode(png(_seed(kind, body.get("prompt"), index))).decode()
        if body.get("response_format") == "url":
            data.append({"url": "data:image/png;base64," + image, "revised_prompt": body.get("prompt")})
        else:
            data.append({"b64_json": image, "revised_prompt": body.get("prompt")})
    prompt_tokens = _tokens(body.get("prompt") or "")
    usage = {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
        "output_tokens": 272 * n,
        "total_tokens": prompt_tokens + 272 * n,
    }
    return _json({"created": CREATED, "data": data, "usage": usage})


@handles("images.generations")
def images_generations(body: dict) -> SimReply:
    return _images(body, "generation")


@handles("images.edits")
def images_edits(body: dict) -> SimReply:
    return _images(body, "edit")


@functools.cache
def _tone() -> bytes:
    """One second of a quiet 440 Hz tone (a whole number of cycles, so it repeats seamlessly)."""
    return b"".join(
        struct.pack("<h", int(800 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE))) for i in range(SAMPLE_RATE)
    )


@handles("audio.speech")
def speech(body: dict) -> SimReply:
    text = body.get("input")
    if not isinstance(text, str):
        text = ""
    samples = max(1, math.ceil(len(text) / CHARS_PER_SECOND * SAMPLE_RATE))
    pcm = (_tone() * math.ceil(samples / SAMPLE_RATE))[: samples * 2]
    if body.get("response_format") == "pcm":
        return SimBinary(body=pcm, content_type="audio/pcm")
    return SimBinary(body=wav(pcm), content_type="audio/wav")


@handles("audio.transcriptions")
def transcription(body: dict) -> SimReply:
    upload = body.get("upload") or {}
    seconds = float(upload.get("duration_s") or 0)
    text = f"This is a simulated transcription of {upload.get('filename') or 'the upload'} ({seconds:.1f} s)."
    fmt = body.get("response_format") or "json"
    if fmt in ("text", "srt", "vtt"):
        end = f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:06.3f}"
        lines = {
            "text": text + "\n",
            "srt": f"1\n00:00:00,000 --> {end.replace('.', ',')}\n{text}\n\n",
            "vtt": f"WEBVTT\n\n00:00:00.000 --> {end}\n{text}\n\n",
        }
        reply = SimReply(body=lines[fmt].encode())
        reply.content_type = "text/plain; charset=utf-8"
        return reply
    usage = {"type": "duration", "seconds": math.ceil(seconds)}
    if fmt == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text, "tokens": [], "temperature": 0.0,
                   "avg_logprob": -0.2, "compression_ratio": 1.0, "no_speech_prob": 0.01}  # fmt: skip
        return _json({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                      "segments": [segment], "usage": usage})  # fmt: skip
    return _json({"text": text, "usage": usage})


@handles("moderations")
def moderations(body: dict) -> SimReply:
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    results = []
    for item in inputs:
        seed = _seed("moderation", item)
        scores = {c: round(seed[i] / 255 / 1000, 6) for i, c in enumerate(CATEGORIES)}
        results.append({
            "flagged": False,
            "categories": dict.fromkeys(CATEGORIES, False),
            "category_scores": scores,
            "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
        })  # fmt: skip
    return _json({"id": "modr-simulated", "model": body.get("model"), "results": results})


def _relevance(query: str, document: str) -> float:
    words = set(query.lower().split())
    hits = sum(1 for w in document.lower().split() if w in words)
    return round(hits / (len(document.split()) or 1), 6)


@handles("rerank")
def rerank(body: dict) -> SimReply:
    query = str(body.get("query") or "")
    documents = body.get("documents")
    if not isinstance(documents, list):
        documents = []
    texts = [d.get("text", "") if isinstance(d, dict) else str(d) for d in documents]
    ranked = sorted(range(len(texts)), key=lambda i: (-_relevance(query, texts[i]), i))
    top_n = body.get("top_n") if isinstance(body.get("top_n"), int) and body["top_n"] > 0 else len(ranked)
    results = []
    for index in ranked[:top_n]:
        result: dict[str, object] = {"index": index, "relevance_score": _relevance(query, texts[index])}
        if body.get("return_documents"):
            result["document"] = {"text": texts[index]}
        results.append(result)
    tokens = _tokens(query) + sum(_tokens(t) for t in texts)
    return _json({
        "id": "rerank-simulated",
        "model": body.get("model"),
        "results": results,
        "usage": {"total_tokens": tokens},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    })  # fmt: skip


@handles("ocr")
def ocr(body: dict) -> SimReply:
    asked = body.get("pages")
    indexes = [p for p in asked if isinstance(p, int)] if isinstance(asked, list) else [0, 1]
    document = body.get("document")
    if not isinstance(document, dict):
        document = {}
    source = document.get("document_url") or document.get("image_url") or "the document"
    source = source if isinstance(source, str) and len(source) < 200 else "the document"
    pages = [
        {
            "index": i,
            "markdown": f"# Page {i + 1}\n\nSimulated text recognised on page {i + 1} of {source}.",
            "images": [],
            "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
        }
        for i in indexes
    ]
    usage_info = {"pages_processed": len(pages), "doc_size_bytes": None}
    return _json({"pages": pages, "model": body.get("model"), "document_annotation": None, "usage_info": usage_info})
