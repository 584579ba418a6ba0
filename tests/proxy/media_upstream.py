"""A real local fake upstream for the media endpoints: an aiohttp server on a loopback
port answering images, speech, transcriptions, moderations, rerank and OCR in the providers' wire
shapes. It reads multipart uploads as a stream (it never holds a file: it counts its bytes and keeps
its first 64 bytes) so the large-upload test measures the gateway, not the fake. Fault modes by
model name, as in tests/proxy/fake_upstream.py:

- fake-error-NNN: status NNN with an OpenAI error body quoting the key it was sent
- fake-garbage: 200 with a body that is not JSON
- fake-tokens: a transcription reporting token usage (gpt-4o-transcribe)
- fake-plain: a transcription with neither usage nor duration in JSON; OCR without usage_info
- fake-trickle: speech audio with 0.2 s between chunks
- gpt-image-*: images answered with token usage (token-priced image models)
"""

import asyncio
import math
import struct

from aiohttp import web

from .fake_upstream import UPSTREAM_KEY, RecordingUpstream, serve_in_thread

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE_USAGE = {"input_tokens": 50, "output_tokens": 1000, "total_tokens": 1050,
               "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}  # fmt: skip
AUDIO_CHUNK = b"\xff\xf3" + bytes(1022)  # an mp3-ish frame


def heard_seconds(upload: dict) -> float:
    """A canonical WAV's duration from its first bytes (data bytes / (channels x sample width) /
    sample rate, as decoders count it), anything else 89.2 s."""
    head = upload.get("head") or b""
    if len(head) < 44 or head[:4] != b"RIFF" or head[36:40] != b"data":
        return 89.2
    channels, rate = struct.unpack("<HI", head[22:28])
    (bits,) = struct.unpack("<H", head[34:36])
    return round((upload["size"] - 44) / (channels * bits // 8) / rate, 3)


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV of `seconds`."""
    pcm = bytes(int(seconds * rate) * 2)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(pcm))  # fmt: skip
    return header + pcm


class MediaUpstream(RecordingUpstream):
    async def route(self, request: web.Request):
        if (refused := self.bad_bearer(request)) is not None:
            return refused
        path = request.match_info["path"]
        if request.content_type == "multipart/form-data":
            body, files = await self.read_form(request)
        else:
            body, files = await request.json(), {}
        self.requests.append({"path": path, "headers": dict(request.headers), "body": body, "files": files})
        model = str(body.get("model", ""))
        if model.startswith("fake-error-"):
            status = int(model.rsplit("-", 1)[1])
            message = f"Incorrect API key provided: {UPSTREAM_KEY} at {self.url}"
            return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                                "code": "invalid_api_key", "param": None}}, status=status)  # fmt: skip
        if model == "fake-garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        return await getattr(self, path.replace("/", "_"))(request, body, files, model)

    async def read_form(self, request):
        """Text fields, and per file its size and first bytes: read as a stream, never whole."""
        reader = await request.multipart()
        body, files = {}, {}
        while (part := await reader.next()) is not None:
            if part.filename is None:
                body[part.name] = (await part.read()).decode()
                continue
            size, head = 0, b""
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                head = head or chunk[:64]
            files[part.name] = {"filename": part.filename, "size": size, "head": head,
                                "content_type": part.headers.get("Content-Type", "")}  # fmt: skip
        return body, files

    async def chat_completions(self, request, body, files, model):
        """For an image model called on chat (one allocation, one cap for both endpoints)."""
        message = {"role": "assistant", "content": "A picture of a cat.", "refusal": None}
        usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
        return web.json_response({"id": "chatcmpl-media", "object": "chat.completion", "created": 1, "model": model,
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop",
                                               "logprobs": None}], "usage": usage})  # fmt: skip

    async def images_generations(self, request, body, files, model):
        n = int(body.get("n") or 1)
        answer = {"created": 1, "data": [{"b64_json": PNG_1PX} for _ in range(n)]}
        if model.startswith("gpt-image"):
            answer["usage"] = IMAGE_USAGE
        return web.json_response(answer)

    images_edits = images_generations

    async def audio_speech(self, request, body, files, model):
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        for _ in range(len(body.get("input", ""))):
            if model == "fake-trickle":
                await asyncio.sleep(0.2)
            await response.write(AUDIO_CHUNK)
        return response

    async def audio_transcriptions(self, request, body, files, model):
        """Like whisper-1: text, srt and vtt carry no usage; json reports `usage` in seconds and
        verbose_json the `duration` with its segments. It hears the duration a decoder would: a
        WAV's from its sample layout (never its declared byte rate), anything else 89.2 s."""
        fmt = body.get("response_format", "json")
        text = "Hello from the fake transcriber."
        seconds = heard_seconds(files.get("file") or {})
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            stamp = f"00:00:00{',' if fmt == 'srt' else '.'}000 --> {seconds:.3f}"
            head = "1" if fmt == "srt" else "WEBVTT"
            return web.Response(text=f"{head}\n{stamp}\n{text}\n\n", content_type="text/plain")
        if model == "fake-tokens":
            usage = {"type": "tokens", "input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
                     "input_token_details": {"audio_tokens": 120, "text_tokens": 0}}  # fmt: skip
            return web.json_response({"text": text, "usage": usage})
        if model == "fake-plain":
            return web.json_response({"text": text})  # no usage, no duration: the gateway decodes the upload
        if fmt == "verbose_json":
            half = round(seconds / 2, 2)
            segments = [{"id": 0, "start": 0.0, "end": half, "text": " Hello from"},
                        {"id": 1, "start": half, "end": seconds, "text": " the fake transcriber."}]  # fmt: skip
            return web.json_response({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                                      "segments": segments})  # fmt: skip
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}})

    async def moderations(self, request, body, files, model):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        result = {"flagged": False, "categories": {"hate": False}, "category_scores": {"hate": 0.0001}}
        return web.json_response({"id": "modr-1", "model": model, "results": [result for _ in inputs]})

    async def rerank(self, request, body, files, model):
        results = [{"index": i, "relevance_score": round(1 / (i + 1), 3)} for i in range(len(body["documents"]))]
        return web.json_response({"id": "rr-1", "results": results[: body.get("top_n") or len(results)],
                                  "meta": {"billed_units": {"search_units": 1}}})  # fmt: skip

    async def ocr(self, request, body, files, model):
        pages = [{"index": i, "markdown": f"page {i}", "images": [], "dimensions": None} for i in range(3)]
        answer = {"pages": pages, "model": model}
        if model != "fake-plain":
            answer["usage_info"] = {"pages_processed": 3, "doc_size_bytes": 1234}
        return web.json_response(answer)


def start_media_upstream():
    fake = MediaUpstream()
    app = web.Application(client_max_size=1024**3)
    app.router.add_post("/v1/{path:.*}", fake.route)
    return fake, serve_in_thread(app, lambda url: setattr(fake, "url", url))
