"""Multipart uploads: streamed to the upstream without the process holding them, parsed whatever the
field order, the model rewritten, audio durations decoded (proxy.audio)."""

import io
import tracemalloc
from decimal import Decimal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocations.models import ModelKind
from proxy import multipart

from .conftest import record_of
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import wav_bytes

MB = 1024 * 1024


def write_wav(path, data_bytes: int, rate: int = 8000):
    header = bytearray(wav_bytes(0, rate))
    header[4:8] = (36 + data_bytes).to_bytes(4, "little")
    header[40:44] = data_bytes.to_bytes(4, "little")
    block = bytes(MB)
    with open(path, "wb") as out:
        out.write(header)
        for _ in range(data_bytes // MB):
            out.write(block)
        out.write(bytes(data_bytes % MB))


def test_a_50_mb_upload_passes_without_the_process_holding_it(media, tmp_path):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="second", per_unit="0.0001")
    path = tmp_path / "long.wav"
    write_wav(path, 50 * MB)
    client = media.client(allocation)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(path, "rb") as upload:
            result = client.audio.transcriptions.create(
                model=allocation.model.slug, file=upload, extra_headers={"X-Request-Id": "req-big"}
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.text
    # Client, gateway and fake upstream all run in this process: together they stay far below 50 MB.
    assert peak - before < 12 * MB, f"the upload grew Python's heap by {(peak - before) / MB:.1f} MB"
    sent = media.upstream.last
    assert sent["files"]["file"]["size"] == path.stat().st_size and sent["body"]["model"] == "whisper-1"
    record = record_of("req-big")
    assert (record.quantity, record.unit, record.estimated) == (Decimal(3277), "second", False)  # 3276.8 s
    assert record.cost_usd == Decimal("0.3277")


def test_a_model_field_sent_after_the_file_is_found_and_rewritten(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    boundary = "----gw-test-boundary"
    audio = wav_bytes(60)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        f"Content-Type: audio/wav\r\n\r\n".encode() + audio
        + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{allocation.model.slug}"
        f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    response = httpx.post(
        f"{media.world.gateway_url}/v1/audio/transcriptions",
        content=body,
        headers={"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-late",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    sent = media.upstream.last
    assert sent["body"]["model"] == "whisper-1" and sent["files"]["file"]["size"] == len(audio)
    assert record_of("req-late").cost_usd == Decimal("0.006")


# --- the parser and the duration, without a server --------------------------------------------------


def form_bytes(boundary: bytes, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize("size", [0, 1, multipart.CHUNK - 3, multipart.CHUNK, 3 * multipart.CHUNK + 7])
async def test_the_parser_finds_parts_across_scan_windows_and_reemits_them_exactly(size):
    boundary = b"xyzBOUNDARY"
    content = (b"--xyzBOUNDAR\r\n" * (size // 14 + 1))[:size]  # almost-boundaries, across window edges
    raw = form_bytes(boundary, [("model", None, b"sim/whisper"), ("file", "a.bin", content), ("n", None, b"2")])
    form = multipart.parse_form(io.BytesIO(raw), "multipart/form-data; boundary=xyzBOUNDARY")
    assert form.fields() == {"model": "sim/whisper", "n": "2"}
    assert form.file("file").size == size
    stream, length = form.encode({"model": "whisper-1"})
    out = b"".join([chunk async for chunk in stream])
    assert out == raw.replace(b"sim/whisper", b"whisper-1") and len(out) == length


@pytest.mark.parametrize(("raw", "content_type"), [
    (b"not multipart", "multipart/form-data; boundary=abc"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end", "multipart/form-data; boundary=abc"),
    (b"--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--\r\n", "multipart/form-data; boundary=abc"),
    (b"{}", "application/json"),
])  # fmt: skip
def test_the_parser_refuses_malformed_forms(raw, content_type):
    with pytest.raises(ValueError):
        multipart.parse_form(io.BytesIO(raw), content_type)


def test_an_audio_upload_carries_its_decoded_duration_and_an_image_none():
    raw = form_bytes(b"b", [("file", "a.wav", wav_bytes(2, rate=24000))])
    form = multipart.parse_form(io.BytesIO(raw), "multipart/form-data; boundary=b")
    meta = multipart.upload_meta(form, form.file("file"), audio=True)
    assert (meta["duration_s"], meta["duration_decoded"], meta["size"]) == (2.0, True, 96_044)
    assert "duration_s" not in multipart.upload_meta(form, form.file("file"), audio=False)


names = st.sampled_from(["model", "n", "prompt", "language", "file", "image[]", "mask"])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.tuples(names, st.booleans(), st.binary(max_size=300)), min_size=1, max_size=6))
async def test_any_form_is_reemitted_byte_for_byte_but_its_model(parts):
    boundary = b"gw-prop-boundary"
    parts = [(n, "f.bin" if is_file else None, c.replace(b"\r\n--", b"")) for n, is_file, c in parts]
    raw = form_bytes(boundary, parts)
    models = [f for n, f, _ in parts if n == "model"]
    if len(models) > 1 or any(models):  # two model parts, or a file named model: refused
        with pytest.raises(ValueError):
            multipart.parse_form(io.BytesIO(raw), "multipart/form-data; boundary=gw-prop-boundary")
        return
    form = multipart.parse_form(io.BytesIO(raw), "multipart/form-data; boundary=gw-prop-boundary")
    assert [(p.name, p.filename) for p in form.parts] == [(n, f) for n, f, _ in parts]
    stream, length = form.encode({"model": "upstream-name"})
    out = b"".join([chunk async for chunk in stream])
    expected = form_bytes(
        boundary, [(n, f, b"upstream-name" if n == "model" and f is None else c) for n, f, c in parts]
    )
    assert out == expected and len(out) == length
