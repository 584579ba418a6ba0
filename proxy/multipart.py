"""Multipart uploads (images/edits, audio/transcriptions) without holding the upload in memory.

proxy.handler spools a multipart body to a SpooledTemporaryFile (the first MB in memory, the rest
in an unlinked temporary file) while it arrives, enforcing GATEWAY_MAX_BODY_MB. The form is then
scanned in fixed-size windows for its parts: text fields (`model`, `n`, `prompt`, ...) are read,
file parts are only located (offsets). The upstream body is re-emitted from the spool with the same
boundary, only the `model` field rewritten to the upstream name, with an exact Content-Length.

Why spool first rather than pipe the client's bytes straight through: the preflight needs `model`
(which a client may send after the file), the reservation needs the upload's duration or size
before the upstream is called, and a body over the limit is refused with 413 before any upstream
work is paid for. Memory stays bounded (SPOOL_MEMORY + a few CHUNKs per upload); the cost is the
disk write and the upload's latency (a proxy with request buffering, as nginx does by default).

An audio upload's duration (the transcription's reservation, and its bill when the provider
reports none) is read by proxy.audio from the spool, in the same thread as the parse.
"""

import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value
from typing import IO

from django.core.exceptions import RequestAborted

from allocations.exceptions import BadRequest, GatewayError
from lib.asgi import Receive, Scope

from .audio import EmptyAudio
from .audio import upload_duration as read_duration

SPOOL_MEMORY = 1 << 20
CHUNK = 1 << 18
MAX_FIELD = 1 << 20  # a text field past this is refused (prompts are far smaller)
MAX_HEADERS = 16 << 10
BOUNDARY = re.compile(rb'boundary="?([^";,\s]{1,200})"?', re.IGNORECASE)
HEADER_LINE = re.compile(rb"[!-9;-~]+:[^\r\n]*")  # a field name, a colon, a value; no folding, no bare CR/LF
_headers = HeaderParser()


async def spool_body(receive: Receive, scope: Scope, limit: int) -> tuple[IO[bytes] | None, bool]:
    """(spool at offset 0, False), or (None, True) past `limit` (the rest is drained for the 413)."""
    declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"0")
    too_large = declared.isdigit() and int(declared) > limit
    spool = None if too_large else tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if spool is not None:
                spool.close()
            raise RequestAborted()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit and spool is not None:
            spool.close()
            spool, too_large = None, True
        elif spool is not None and chunk:
            spool.write(chunk)
        if not message.get("more_body", False):
            break
    if spool is not None:
        spool.seek(0)
    return spool, too_large


@dataclass
class Part:
    headers: bytes  # the raw header block of the part
    name: str
    filename: str | None  # None: a text field
    content_type: str
    start: int  # content offsets in the spool
    end: int
    value: bytes | None = None  # text fields only

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Form:
    boundary: bytes
    parts: list[Part]
    spool: IO[bytes]

    def fields(self) -> dict:
        # parse_form reads the value of every text field (filename None)
        return {p.name: p.value.decode("utf-8", "replace") for p in self.parts if p.value is not None}

    def file(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.filename is not None and p.name in (name, name + "[]")), None)

    def encode(self, replace: dict[str, str], *, append: tuple[str, ...] = ()) -> tuple[object, int]:
        """(async iterator of the upstream body, its length): the parts re-emitted from the spool,
        every text field named in `replace` (whatever its case or a `[]` suffix) given that value,
        and those named in `append` that the form lacks added at its end."""
        segments: list = []
        missing = {name: replace[name] for name in append if name in replace}
        for part in self.parts:
            segments.append(b"--" + self.boundary + b"\r\n" + part.headers + b"\r\n\r\n")
            name = _field_name(part.name)
            if part.filename is None and name in replace:
                segments.append(replace[name].encode())
                missing.pop(name, None)
            else:
                segments.append(part.value if part.value is not None else (part.start, part.end))
            segments.append(b"\r\n")
        for name, value in missing.items():
            disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
            segments.append(b"--" + self.boundary + b"\r\n" + disposition + b"\r\n\r\n" + value.encode() + b"\r\n")
        segments.append(b"--" + self.boundary + b"--\r\n")
        length = sum(len(s) if isinstance(s, bytes) else s[1] - s[0] for s in segments)
        return self._emit(segments), length

    async def _emit(self, segments: list[bytes | tuple[int, int]]) -> AsyncIterator[bytes]:
        for segment in segments:
            if isinstance(segment, bytes):
                yield segment
                continue
            position, end = segment
            while position < end:
                # Page-cache reads of CHUNK bytes: short enough to do on the event loop.
                self.spool.seek(position)
                data = self.spool.read(min(CHUNK, end - position))
                if not data:
                    raise OSError("the spooled upload ended early")
                position += len(data)
                yield data

    def close(self) -> None:
        self.spool.close()


def _find(spool: IO[bytes], needle: bytes, start: int, size: int) -> int:
    """Offset of `needle` at or after `start`, scanning windows that overlap by len(needle) - 1."""
    position = start
    while position < size:
        spool.seek(position)
        window = spool.read(CHUNK + len(needle) - 1)
        at = window.find(needle)
        if at >= 0:
            return position + at
        if len(window) < len(needle):
            return -1
        position += CHUNK
    return -1


def _part(headers: bytes, start: int, end: int) -> Part:
    """A part from its header block, read by the standard library's MIME header parser: its name
    and filename come from its one `Content-Disposition: form-data` header, nowhere else. Anything
    two parsers could read differently (folded or bare-LF lines, a second disposition, a second
    name or filename) is refused rather than guessed."""
    lines = headers.split(b"\r\n") if headers else []
    if not all(HEADER_LINE.fullmatch(line) for line in lines):
        raise ValueError("a multipart part has a malformed header line")
    message = _headers.parsestr(headers.decode("utf-8", "surrogateescape") + "\r\n\r\n")
    if len(message.get_all("content-disposition") or ()) != 1 or message.get_content_disposition() != "form-data":
        raise ValueError("each multipart part needs exactly one Content-Disposition: form-data header")
    params = message.get_params(header="content-disposition") or []
    names = [value for key, value in params if key == "name"]
    filenames = [value for key, value in params if key == "filename"]
    if len(names) != 1 or len(filenames) > 1:
        raise ValueError("a multipart part without exactly one name (or with two filenames)")
    return Part(
        headers=headers,
        name=_text(names[0]),
        filename=_text(filenames[0]) if filenames else None,
        content_type=_text(message.get("content-type", "")).strip(),
        start=start,
        end=end,
    )


def _text(value: str | tuple[str, str, str]) -> str:
    """A header parameter as text: RFC 2231 values decoded, raw UTF-8 as sent by browsers kept."""
    text = collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _field_name(name: str) -> str:
    """A field's name as a provider's form parser may read it: trimmed, any case, `[]` or not."""
    return name.strip().lower().removesuffix("[]")


def _check_model_part(parts: list[Part]) -> None:
    """One text `model` field: the gateway rewrites it, and a second one (or a file named model)
    would reach a last-value-wins provider unrewritten."""
    models = [p for p in parts if _field_name(p.name) == "model"]
    if len(models) > 1 or any(p.filename is not None for p in models):
        raise ValueError("a multipart form may carry exactly one text field named model")


def parse_form(spool: IO[bytes], content_type: str) -> Form:
    """Locates the parts of a spooled multipart body; raises ValueError when it is malformed."""
    match = BOUNDARY.search(content_type.encode("latin1", "replace"))
    if not content_type.lower().startswith("multipart/form-data") or match is None:
        raise ValueError("the request must be multipart/form-data with a boundary")
    boundary = match.group(1)
    delimiter = b"--" + boundary
    size = spool.seek(0, 2)
    position = _find(spool, delimiter, 0, size)
    if position < 0:
        raise ValueError("the multipart body has no boundary")
    position += len(delimiter)
    parts: list[Part] = []
    while True:
        spool.seek(position)
        after = spool.read(2)
        if after == b"--":
            _check_model_part(parts)
            return Form(boundary=boundary, parts=parts, spool=spool)
        if after != b"\r\n":
            raise ValueError("a malformed multipart boundary line")
        head = spool.read(MAX_HEADERS)
        end_of_headers = 0 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if end_of_headers < 0:
            raise ValueError("multipart part headers too long or unterminated")
        start = position + 2 + end_of_headers + (2 if end_of_headers == 0 else 4)
        end = _find(spool, b"\r\n" + delimiter, start, size)
        if end < 0:
            raise ValueError("the multipart body ends inside a part")
        part = _part(head[:end_of_headers], start, end)
        if part.filename is None:
            if part.size > MAX_FIELD:
                raise ValueError(f"the form field '{part.name}' is too large")
            spool.seek(start)
            part.value = spool.read(part.size)
        parts.append(part)
        position = end + 2 + len(delimiter)


def upload_meta(form: Form, part: Part, *, audio: bool) -> dict:
    """What the meters and the simulated provider know of an upload (never its bytes); an audio
    upload's duration as proxy.audio reads it (EmptyAudio when it plays for no time)."""
    meta: dict[str, object] = {"filename": part.filename, "content_type": part.content_type, "size": part.size}
    if audio:
        duration = read_duration(form.spool, part.start, part.end)
        meta |= {"duration_s": round(duration.seconds, 6), "duration_decoded": duration.decoded}
    return meta


def request_of(
    form: Form, required: tuple[str, ...], files: tuple[str, ...], *, audio: bool = False
) -> tuple[dict, GatewayError | None]:
    """The form's text fields plus `upload` (the first file's meta) and the preflight's verdict."""
    body = form.fields()
    missing = [n for n in required if n not in files and not body.get(n)]
    missing += [n for n in files if form.file(n) is None]
    upload = next((form.file(n) for n in files if form.file(n) is not None), None)
    if upload is not None:
        try:
            body["upload"] = upload_meta(form, upload, audio=audio)
        except EmptyAudio as exc:
            name = upload.name.removesuffix("[]")
            return body, BadRequest(f"{name}: {exc}", fields={name: [f"{str(exc)[0].upper()}{str(exc)[1:]}."]})
    if missing:
        return body, BadRequest(
            f"missing required field(s): {', '.join(missing)}",
            fields={n: ["This file is required." if n in files else "This field is required."] for n in missing},
        )
    return body, None
