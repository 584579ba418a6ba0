"""Transcriptions are billed from the provider's numbers, never from what the upload declares: the
gateway asks for a format that reports them, answers in the format the client asked, and reserves
(or, when the provider reports nothing, bills) the duration it decodes from the upload."""

import io
from decimal import Decimal

import httpx
import openai
import pytest

from allocations.models import ModelKind
from proxy import audio, media_meters, multipart, transcripts
from quota.models import CallRecord, Reservation
from quota.pricing import cost_for
from tests.factories import PriceVersionFactory

from .audio_files import lying_wav, mp3_bytes, opus_bytes
from .conftest import counter_of, record_of
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import wav_bytes

RID = {"X-Request-Id": "req-stt"}


def transcribe(media, allocation, upload, response_format=None):
    extra = {} if response_format is None else {"response_format": response_format}
    return media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug, file=upload, extra_headers=RID, **extra
    )


def billed(seconds: int, cost: str, *, estimated=False):
    record = record_of("req-stt")
    assert (record.outcome, record.quantity, record.unit) == ("success", Decimal(seconds), "second")
    assert (record.cost_usd, record.estimated) == (Decimal(cost), estimated)
    assert not Reservation.objects.exists()
    return record


def test_a_wav_lying_about_its_byte_rate_is_billed_its_thirty_seconds(media):
    """Its header's byte rate makes 30 s look like 0.1 ms: the provider's duration is billed, and
    the text the client asked for is what it gets."""
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    text = transcribe(media, allocation, ("lie.wav", lying_wav(30), "audio/wav"), "text")
    assert text == "Hello from the fake transcriber.\n"
    assert media.upstream.last["body"]["response_format"] == "verbose_json"
    billed(30, "0.003")


def test_without_a_reported_duration_the_lying_wav_is_billed_as_decoded(media):
    allocation = media.allocation("fake-plain", ModelKind.STT, unit="second", per_unit="0.0001")
    transcribe(media, allocation, ("lie.wav", lying_wav(30), "audio/wav"), "text")
    billed(30, "0.003")  # decoded, so not flagged estimated


EXPECTED = {
    "text": "Hello from the fake transcriber.\n",
    "srt": "1\n00:00:00,000 --> 00:00:44,600\nHello from\n\n"
    "2\n00:00:44,600 --> 00:01:29,200\nthe fake transcriber.\n\n",
    "vtt": "WEBVTT\n\n00:00:00.000 --> 00:00:44.600\nHello from\n\n"
    "00:00:44.600 --> 00:01:29.200\nthe fake transcriber.\n\n",
}


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_text_srt_and_vtt_are_made_from_the_segments_and_billed_from_the_providers_duration(media, response_format):
    """The Opus upload decodes to 60 s; the provider reports 89.2 s: 90 s are billed."""
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    headers = {"Authorization": f"Bearer {allocation.plaintext}", **RID}
    response = httpx.post(
        f"{media.world.gateway_url}/v1/audio/transcriptions",
        headers=headers,
        data={"model": allocation.model.slug, "response_format": response_format},
        files={"file": ("speech.opus", opus_bytes(60), "audio/ogg")},
    )
    assert response.status_code == 200, response.text
    assert response.text == EXPECTED[response_format]
    assert response.headers["Content-Type"].startswith("text/plain")
    assert media.upstream.last["body"]["response_format"] == "verbose_json"
    billed(90, "0.009")


def test_json_is_answered_as_text_only_and_billed_from_the_duration(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="second", per_unit="0.0001")
    result = transcribe(media, allocation, ("speech.wav", wav_bytes(12.5), "audio/wav"))
    assert result.model_dump(exclude_none=True) == {"text": "Hello from the fake transcriber."}
    billed(13, "0.0013")


def test_a_token_priced_model_is_asked_for_json_and_billed_its_tokens(media):
    allocation = media.allocation("fake-tokens", ModelKind.STT, tokens=True)
    text = transcribe(media, allocation, ("speech.wav", wav_bytes(3), "audio/wav"), "text")
    assert text == "Hello from the fake transcriber.\n"
    assert media.upstream.last["body"]["response_format"] == "json"
    record = record_of("req-stt")
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (120, 30, Decimal("0.0018"))


def test_an_undecodable_upload_without_a_reported_duration_is_billed_its_upper_bound(media):
    """75,000 bytes that no reader understands play at most 100 s (at 6 kbit/s): billed, flagged."""
    allocation = media.allocation("fake-plain", ModelKind.STT, unit="second", per_unit="0.0001")
    transcribe(media, allocation, ("speech.webm", b"\x1aE\xdf\xa3" + bytes(74_996), "audio/webm"), "text")
    billed(100, "0.01", estimated=True)
    assert counter_of(allocation).cost_used == Decimal("0.01")


@pytest.mark.parametrize("upload", [wav_bytes(0), b""])
def test_an_upload_that_plays_for_no_time_is_a_400_and_goes_nowhere(media, upload):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    before = len(media.upstream.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        transcribe(media, allocation, ("empty.wav", upload, "audio/wav"))
    assert caught.value.status_code == 400 and "file" in caught.value.body["fields"]
    assert len(media.upstream.requests) == before
    record = CallRecord.objects.get(request_id="req-stt")
    assert (record.outcome, record.cost_usd) == ("rejected_bad_request", None)


# --- the reservation's duration, without a server ------------------------------------------------


def duration_of(data: bytes) -> audio.Duration:
    return audio.upload_duration(io.BytesIO(b"--head--" + data + b"--tail--"), 8, 8 + len(data))


@pytest.mark.parametrize(
    ("data", "seconds"),
    [
        (lying_wav(30), 30.0),  # byte rate 0xFFFFFFF0
        (lying_wav(30, byte_rate=1), 30.0),
        (opus_bytes(60), 60.0),  # 35 kB: 2.2 s at the 128 kbit/s a size guess assumes
        (mp3_bytes(1000), 26.0625),
        (wav_bytes(2)[:40] + b"\xff\xff\xff\xff" + bytes(32_000), 2.0),  # streamed: data size unknown
    ],
)
def test_the_reservation_comes_from_the_decoded_duration(data, seconds):
    assert duration_of(data) == audio.Duration(seconds=seconds, decoded=True)


def test_an_undecodable_upload_is_reserved_at_its_upper_bound():
    assert duration_of(b"\x1aE\xdf\xa3" + bytes(7_496)) == audio.Duration(seconds=10.0, decoded=False)
    raw = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n' + bytes(1500)
    form = multipart.parse_form(io.BytesIO(raw + b"\r\n--b--\r\n"), "multipart/form-data; boundary=b")
    meta = multipart.upload_meta(form, form.file("file"), audio=True)
    assert (meta["duration_s"], meta["duration_decoded"]) == (2.0, False)
    per_minute = PriceVersionFactory.build(unit="minute", price_per_unit=Decimal("0.006"), input_per_1m=None,
                                           output_per_1m=None)  # fmt: skip
    assert cost_for(per_minute, media_meters.estimate_transcription({"upload": meta})) == Decimal("0.0002")


@pytest.mark.parametrize("data", [wav_bytes(0), b""])
def test_audio_of_no_length_is_refused(data):
    with pytest.raises(audio.EmptyAudio):
        duration_of(data)


# --- formats -------------------------------------------------------------------------------------


def test_the_format_asked_upstream_follows_the_price():
    per_minute = PriceVersionFactory.build(unit="minute", price_per_unit=Decimal("0.006"), input_per_1m=None,
                                           output_per_1m=None)  # fmt: skip
    tokens = PriceVersionFactory.build(input_per_1m=Decimal("2.5"), output_per_1m=Decimal("10"))
    asked = [None, "json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
    assert [transcripts.upstream_format(a, per_minute) for a in asked] == [
        "verbose_json", "verbose_json", "verbose_json", "verbose_json", "verbose_json", None, None
    ]  # fmt: skip
    assert [transcripts.upstream_format(a, tokens) for a in asked] == [
        None, None, "json", "verbose_json", "verbose_json", None, None
    ]  # fmt: skip
    assert transcripts.upstream_format("text", None) is None  # unpriced: nothing to bill, nothing to ask


def test_subtitles_count_hours_and_an_answer_without_segments_is_one_cue():
    answer = b'{"text": " Long talk.", "duration": 3723.4567}'
    body, content_type = transcripts.for_client("srt", answer)
    assert body == b"1\n00:00:00,000 --> 01:02:03,457\nLong talk.\n\n" and content_type.startswith("text/plain")
    assert transcripts.for_client("vtt", b"not json") is None


async def test_the_form_gets_the_format_it_lacks_and_any_spelling_of_it_rewritten():
    raw = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n"
           b"--b\r\nContent-Disposition: form-data; name=\"Response_Format\"\r\n\r\ntext\r\n--b--\r\n")  # fmt: skip
    form = multipart.parse_form(io.BytesIO(raw), "multipart/form-data; boundary=b")
    stream, length = form.encode({"model": "up", "response_format": "verbose_json"}, append=("response_format",))
    out = b"".join([chunk async for chunk in stream])
    assert out.count(b"verbose_json") == 1 and b"text" not in out and len(out) == length
    without = raw.replace(b"Response_Format", b"language")
    form = multipart.parse_form(io.BytesIO(without), "multipart/form-data; boundary=b")
    stream, length = form.encode({"model": "up", "response_format": "json"}, append=("response_format",))
    out = b"".join([chunk async for chunk in stream])
    assert out.endswith(b'name="response_format"\r\n\r\njson\r\n--b--\r\n') and len(out) == length
