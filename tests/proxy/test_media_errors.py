"""Media endpoints when things go wrong: upstream errors per endpoint, a model of the wrong kind, a
form without its file, bodies over GATEWAY_MAX_BODY_MB, answers that cannot be metered. Always one
call record, nothing billed that was not consumed, and the reservation released."""

from decimal import Decimal

import httpx
import openai
import pytest
from django.test import override_settings

from allocations.models import ModelKind
from quota.models import CallRecord, Reservation

from .conftest import counter_of, record_of
from .fake_upstream import UPSTREAM_KEY
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import wav_bytes

RID = {"X-Request-Id": "req-media"}
DOC = {"type": "document_url", "document_url": "https://example.org/a.pdf"}


def call_endpoint(media, allocation, endpoint: str):
    """Calls one endpoint the way its clients do; returns the response (or raises the SDK's error)."""
    client, slug = media.client(allocation), allocation.model.slug
    if endpoint == "images.generations":
        return client.images.generate(model=slug, prompt="a cat", n=2, extra_headers=RID)
    if endpoint == "images.edits":
        return client.images.edit(model=slug, image=("a.png", b"png"), prompt="hat", extra_headers=RID)
    if endpoint == "audio.speech":
        return client.audio.speech.create(model=slug, voice="alloy", input="Hello", extra_headers=RID)
    if endpoint == "audio.transcriptions":
        return client.audio.transcriptions.create(model=slug, file=("a.wav", wav_bytes(2)), extra_headers=RID)
    if endpoint == "moderations":
        return client.moderations.create(model=slug, input="hello", extra_headers=RID)
    body = {"model": slug, "document": DOC}
    if endpoint == "rerank":
        body = {"model": slug, "query": "q", "documents": ["a"]}
    response = media.post(allocation, endpoint, body)
    if response.status_code >= 400:
        error = response.json().get("error")
        raise openai.APIStatusError(str(error), response=response, body=error)
    return response


ENDPOINTS = {
    "images.generations": (ModelKind.IMAGE, "image"),
    "images.edits": (ModelKind.IMAGE, "image"),
    "audio.speech": (ModelKind.TTS, "character"),
    "audio.transcriptions": (ModelKind.STT, "minute"),
    "moderations": (ModelKind.MODERATION, "request"),
    "rerank": (ModelKind.RERANK, "query"),
    "ocr": (ModelKind.OCR, "page"),
}


def nothing_billed_and_released(allocation):
    counter = counter_of(allocation)
    assert counter is None or (counter.cost_used, counter.cost_reserved, counter.tokens_reserved) == (0, 0, 0)
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_upstream_4xx_is_relayed_redacted_with_its_status(media, endpoint):
    kind, unit = ENDPOINTS[endpoint]
    allocation = media.allocation("fake-error-429", kind, unit=unit, per_unit="0.01", cost=Decimal("1"))
    with pytest.raises(openai.APIStatusError) as caught:
        call_endpoint(media, allocation, endpoint)
    assert caught.value.status_code == 429
    assert UPSTREAM_KEY not in caught.value.response.text and "[redacted]" in caught.value.response.text
    record = record_of("req-media")
    assert (record.outcome, record.status_code, record.endpoint) == ("upstream_error", 429, endpoint)
    assert record.cost_usd is None and UPSTREAM_KEY not in record.error_message
    nothing_billed_and_released(allocation)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_upstream_5xx_is_a_502_upstream_error(media, endpoint):
    kind, unit = ENDPOINTS[endpoint]
    allocation = media.allocation("fake-error-503", kind, unit=unit, per_unit="0.01", cost=Decimal("1"))
    with pytest.raises(openai.APIStatusError) as caught:
        call_endpoint(media, allocation, endpoint)
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_error"
    assert (record_of("req-media").outcome, record_of("req-media").status_code) == ("upstream_error", 502)
    nothing_billed_and_released(allocation)


# Speech is metered by its request, a transcription may be plain text (response_format text/srt/vtt).
@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e not in ("audio.speech", "audio.transcriptions")])
def test_an_answer_that_cannot_be_metered_is_a_502_billed_on_the_estimate(media, endpoint):
    kind, unit = ENDPOINTS[endpoint]
    allocation = media.allocation("fake-garbage", kind, unit=unit, per_unit="0.01")
    with pytest.raises(openai.APIStatusError) as caught:
        call_endpoint(media, allocation, endpoint)
    assert caught.value.status_code == 502
    record = record_of("req-media")
    assert (record.outcome, record.estimated) == ("upstream_error", True) and record.quantity > 0
    assert counter_of(allocation).cost_used == record.cost_usd and not Reservation.objects.exists()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_model_of_the_wrong_kind_is_refused_with_model_kind_mismatch(media, endpoint):
    allocation = media.allocation("text-embedding-3-small", ModelKind.EMBEDDING, cost=Decimal("1"))
    with pytest.raises(openai.APIStatusError) as caught:
        call_endpoint(media, allocation, endpoint)
    assert caught.value.status_code == 400 and caught.value.body["code"] == "model_kind_mismatch"
    record = record_of("req-media")
    assert (record.outcome, record.status_code) == ("rejected_model_kind", 400)
    assert media.upstream.requests == [] and not Reservation.objects.exists()


@pytest.mark.parametrize(("path", "fields", "missing"), [
    ("audio/transcriptions", {"model": "M", "language": "en"}, "file"),
    ("images/edits", {"model": "M", "prompt": "add a hat"}, "image"),
    ("images/edits", {"model": "M"}, "prompt"),
])  # fmt: skip
def test_a_form_without_its_file_or_field_is_a_400(media, path, fields, missing):
    kind = ModelKind.STT if path.startswith("audio") else ModelKind.IMAGE
    allocation = media.allocation("whisper-1", kind, unit="minute", per_unit="0.006")
    files = {"other": ("notes.txt", b"not the file")} if missing != "image" else None
    data = {k: allocation.model.slug if v == "M" else v for k, v in fields.items()}
    response = httpx.post(f"{media.world.gateway_url}/v1/{path}", data=data, files=files or {"x": ("x", b"")},
                          headers={"Authorization": f"Bearer {allocation.plaintext}", **RID})  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request" and missing in error["fields"] and missing in error["message"]
    record = record_of("req-media")
    assert (record.outcome, record.allocation_id) == ("rejected_bad_request", allocation.pk)
    assert media.upstream.requests == []


def test_a_transcription_that_is_not_multipart_is_a_400(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    response = media.post(allocation, "audio/transcriptions", {"model": allocation.model.slug, "file": "a.wav"})
    assert response.status_code == 400 and "multipart" in response.json()["error"]["message"]


@override_settings(GATEWAY_MAX_BODY_MB=1)
def test_an_upload_over_the_body_limit_is_a_413_and_never_reaches_the_upstream(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    with pytest.raises(openai.APIStatusError) as caught:
        media.client(allocation).audio.transcriptions.create(
            model=allocation.model.slug,
            file=("long.wav", wav_bytes(70)),
            extra_headers=RID,  # 1.1 MB
        )
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    assert record_of("req-media").outcome == "rejected_bad_request" and media.upstream.requests == []


@override_settings(GATEWAY_MAX_BODY_MB=1)
def test_a_json_body_over_the_limit_is_a_413(media):
    allocation = media.allocation("tts-1", ModelKind.TTS, unit="character", per_unit="0.001")
    with pytest.raises(openai.APIStatusError) as caught:
        media.client(allocation).audio.speech.create(
            model=allocation.model.slug, voice="alloy", input="x" * 1_100_000, extra_headers=RID
        )
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    assert CallRecord.objects.get().outcome == "rejected_bad_request" and media.upstream.requests == []


@pytest.mark.parametrize(("endpoint", "body", "field"), [
    ("audio/speech", {"voice": "alloy", "input": ["not", "a", "string"]}, "input"),
    ("images/generations", {"prompt": "a cat", "n": 0}, "n"),
    ("rerank", {"query": "q", "documents": "not a list"}, "documents"),
    ("ocr", {}, "document"),
])  # fmt: skip
def test_a_json_body_missing_or_misshaping_what_the_meter_needs_is_a_400(media, endpoint, body, field):
    allocation = media.allocation("m", ModelKind.TTS, unit="character", per_unit="0.001")
    response = media.post(allocation, endpoint, {"model": allocation.model.slug, **body})
    assert response.status_code == 400 and field in response.json()["error"]["fields"]
    assert record_of("req-media").outcome == "rejected_bad_request"
