"""Each media endpoint's happy path through the official SDK (rerank and OCR with httpx, which the
SDK lacks), with the exact cost recorded on the call and moved into the allocation's counters."""

import io
import re
from decimal import Decimal

import httpx
import openai
import pytest
from django.core.management import call_command

from allocations.models import ModelKind, ProviderKind
from quota.models import CallRecord, Reservation, UsageCounter

from .audio_files import mp3_bytes
from .conftest import counter_of, record_of
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import PNG_1PX, wav_bytes

RID = {"X-Request-Id": "req-media"}


def billed(allocation, cost: str, quantity: str, unit: str, *, estimated=False):
    record = record_of("req-media")
    assert (record.outcome, record.status_code) == ("success", 200), record.error_message
    assert (record.quantity, record.unit) == (Decimal(quantity), unit)
    assert record.cost_usd == Decimal(cost) and record.priced and record.estimated is estimated
    counter = counter_of(allocation)
    assert counter.cost_used == Decimal(cost) and (counter.cost_reserved, counter.tokens_reserved) == (0, 0)
    assert not Reservation.objects.exists()
    return record


def test_two_generated_images_at_four_cents_cost_eight_cents(media):
    allocation = media.allocation("dall-e-3", ModelKind.IMAGE, unit="image", per_unit="0.04", cost=Decimal("5"))
    result = media.client(allocation).images.generate(
        model=allocation.model.slug, prompt="a cat in a hat", n=2, extra_headers=RID, extra_body={"style": "vivid"}
    )
    assert [d.b64_json for d in result.data] == [PNG_1PX, PNG_1PX]
    sent = media.upstream.last["body"]
    assert (sent["model"], sent["n"], sent["style"]) == ("dall-e-3", 2, "vivid")
    record = billed(allocation, "0.08", "2", "image")
    assert record.endpoint == "images.generations"


def test_a_token_priced_image_model_is_billed_by_the_tokens_it_reports(media):
    allocation = media.allocation("gpt-image-1", ModelKind.IMAGE, tokens=True)
    media.client(allocation).images.generate(model=allocation.model.slug, prompt="a cat", extra_headers=RID)
    record = billed(allocation, "0.04025", "1", "image")  # 50 in at $5/1M + 1,000 out at $40/1M
    assert (record.input_tokens, record.output_tokens) == (50, 1000)


def test_an_image_edit_uploads_the_image_and_bills_per_image(media):
    allocation = media.allocation("dall-e-2", ModelKind.IMAGE, unit="image", per_unit="0.04")
    image = b"\x89PNG\r\n\x1a\n" + bytes(300_000)
    result = media.client(allocation).images.edit(
        model=allocation.model.slug,
        image=("cat.png", image, "image/png"),
        prompt="add a hat",
        n=2,
        extra_headers=RID,
    )
    assert len(result.data) == 2
    sent = media.upstream.last
    assert (sent["body"]["model"], sent["body"]["prompt"], sent["body"]["n"]) == ("dall-e-2", "add a hat", "2")
    assert sent["files"]["image"]["size"] == len(image) and sent["files"]["image"]["filename"] == "cat.png"
    assert sent["headers"]["Content-Length"].isdigit()  # re-emitted with an exact length, not chunked
    billed(allocation, "0.08", "2", "image")


def test_twenty_characters_of_speech_at_a_tenth_of_a_cent_cost_two_cents(media):
    allocation = media.allocation("tts-1", ModelKind.TTS, unit="character", per_unit="0.001")
    with media.client(allocation).audio.speech.with_streaming_response.create(
        model=allocation.model.slug, voice="alloy", input="Twenty characters!!!", extra_headers=RID
    ) as response:
        assert response.headers["Content-Type"] == "audio/mpeg"
        audio = response.read()
    assert len(audio) == 20 * 1024 and audio.startswith(b"\xff\xf3")
    billed(allocation, "0.02", "20", "character")


def test_ninety_seconds_of_audio_at_six_tenths_of_a_cent_a_minute_cost_nine_tenths_of_a_cent(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    result = media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug, file=("speech.wav", wav_bytes(90), "audio/wav"), extra_headers=RID
    )
    assert result.text == "Hello from the fake transcriber."
    sent = media.upstream.last
    assert sent["body"]["model"] == "whisper-1" and sent["files"]["file"]["size"] == len(wav_bytes(90))
    assert sent["body"]["response_format"] == "verbose_json"  # asked for the duration it reports
    billed(allocation, "0.009", "90", "second")


def test_a_transcription_is_billed_by_the_duration_it_reports_rounded_up_per_second(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="second", per_unit="0.0001")
    result = media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug,
        file=("speech.wav", wav_bytes(89.2), "audio/wav"),
        response_format="verbose_json",
        extra_headers=RID,
    )
    assert result.duration == 89.2
    billed(allocation, "0.009", "90", "second")  # the response's 89.2 s, rounded up


def test_a_transcription_reporting_tokens_is_billed_by_tokens(media):
    allocation = media.allocation("fake-tokens", ModelKind.STT, tokens=True)
    media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug, file=("speech.wav", wav_bytes(1), "audio/wav"), extra_headers=RID
    )
    record = record_of("req-media")
    assert (record.input_tokens, record.audio_input_tokens, record.output_tokens, record.unit) == (120, 120, 30, "")
    assert record.cost_usd == Decimal("0.0018")  # 120 x $5/1M + 30 x $40/1M


def test_a_compressed_upload_without_a_reported_duration_is_billed_as_decoded(media):
    allocation = media.allocation("fake-plain", ModelKind.STT, unit="minute", per_unit="0.006")
    text = media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug,
        file=("speech.mp3", mp3_bytes(2304), "audio/mpeg"),
        response_format="text",
        extra_headers=RID,
    )
    assert text.strip() == "Hello from the fake transcriber."
    billed(allocation, "0.0061", "61", "second")  # 2,304 constant-rate frames at 128 kbit/s: 60.05 s


def test_a_moderation_is_billed_per_request(media):
    allocation = media.allocation("omni-moderation-latest", ModelKind.MODERATION, unit="request", per_unit="0.0005")
    result = media.client(allocation).moderations.create(
        model=allocation.model.slug, input=["hello", "world"], extra_headers=RID
    )
    assert len(result.results) == 2 and result.results[0].flagged is False
    billed(allocation, "0.0005", "1", "request")


def test_a_rerank_is_billed_per_query(media):
    allocation = media.allocation("rerank-v3.5", ModelKind.RERANK, unit="query", per_unit="0.002")
    response = media.post(
        allocation,
        "rerank",
        {"model": allocation.model.slug, "query": "cats", "documents": ["a cat", "a dog", "a bird"], "top_n": 2},
    )
    assert response.status_code == 200, response.text
    assert [r["index"] for r in response.json()["results"]] == [0, 1]
    assert response.headers["X-Request-Id"] == "req-media"
    assert media.upstream.last["body"]["model"] == "rerank-v3.5"
    billed(allocation, "0.002", "1", "query")


@pytest.mark.parametrize("upstream_name", ["mistral-ocr-latest", "fake-plain"])
def test_ocr_is_billed_per_page_processed_or_else_per_page_returned(media, upstream_name):
    allocation = media.allocation(upstream_name, ModelKind.OCR, unit="page", per_unit="0.001")
    document = {"type": "document_url", "document_url": "https://example.org/paper.pdf"}
    response = media.post(allocation, "ocr", {"model": allocation.model.slug, "document": document})
    assert response.status_code == 200, response.text
    assert len(response.json()["pages"]) == 3
    billed(allocation, "0.003", "3", "page")


# --- the simulated provider answers every endpoint -------------------------------------------------


@pytest.fixture
def simulated(world):
    return world.provider(kind=ProviderKind.SIMULATED, base_url="")


def test_the_simulated_provider_draws_images_and_speaks(world, simulated):
    image = world.allocation("sim-image", kind=ModelKind.IMAGE, provider=simulated, priced=False)
    result = world.client(image.plaintext).images.generate(model=image.model.slug, prompt="a cat", n=3)
    assert len({d.b64_json for d in result.data}) == 3
    assert result.data[0].b64_json.startswith("iVBORw0KGgo")  # a PNG
    edit = world.client(image.plaintext).images.edit(model=image.model.slug, image=("a.png", b"x"), prompt="hat")
    assert len(edit.data) == 1
    tts = world.allocation("sim-tts", kind=ModelKind.TTS, provider=simulated, priced=False)
    audio = world.client(tts.plaintext).audio.speech.create(model=tts.model.slug, voice="alloy", input="Hello there")
    assert audio.content.startswith(b"RIFF") and audio.response.headers["Content-Type"] == "audio/wav"


def test_the_simulated_provider_transcribes_moderates_reranks_and_reads(world, simulated):
    stt = world.allocation("sim-stt", kind=ModelKind.STT, provider=simulated, priced=False)
    result = world.client(stt.plaintext).audio.transcriptions.create(
        model=stt.model.slug, file=("speech.wav", wav_bytes(2), "audio/wav"), response_format="verbose_json"
    )
    assert result.duration == 2.0 and "speech.wav" in result.text
    moderation = world.allocation("sim-mod", kind=ModelKind.MODERATION, provider=simulated, priced=False)
    assert world.client(moderation.plaintext).moderations.create(model=moderation.model.slug, input="hi").results
    rerank = world.allocation("sim-rerank", kind=ModelKind.RERANK, provider=simulated, priced=False)
    auth = {"Authorization": f"Bearer {rerank.plaintext}"}
    answer = httpx.post(
        world.gateway_url + "/v1/rerank",
        headers=auth,
        json={
            "model": rerank.model.slug,
            "query": "red cat",
            "documents": ["a dog", "a red cat"],
            "return_documents": True,
        },
    )
    assert [r["index"] for r in answer.json()["results"]] == [1, 0]
    ocr = world.allocation("sim-ocr", kind=ModelKind.OCR, provider=simulated, priced=False)
    answer = httpx.post(world.gateway_url + "/v1/ocr", headers={"Authorization": f"Bearer {ocr.plaintext}"},
                        json={"model": ocr.model.slug, "document": {"type": "document_url", "document_url": "x"},
                              "pages": [0, 1, 2, 3]})  # fmt: skip
    assert answer.json()["usage_info"]["pages_processed"] == 4


def test_every_media_endpoint_works_against_the_demo_and_shows_in_its_counters(gateway, fast_password_hasher):
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    key = re.search(r"sk-gw-[A-Za-z0-9_\-]{43}", out.getvalue()).group(0)
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)
    assert len(client.images.generate(model="sim/gpt-image-1", prompt="a cat", n=2).data) == 2
    assert len(client.images.edit(model="sim/gpt-image-1", image=("a.png", b"x"), prompt="a hat").data) == 1
    assert client.audio.speech.create(model="sim/tts-1", voice="alloy", input="Hello!").content.startswith(b"RIFF")
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(90)), response_format="text")
    assert "a.wav" in text
    assert client.moderations.create(model="sim/omni-moderation-latest", input="hi").results
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(
        gateway + "/v1/rerank", headers=auth, json={"model": "sim/rerank-1", "query": "q", "documents": ["a", "q"]}
    ).json()["results"]
    assert httpx.post(gateway + "/v1/ocr", headers=auth,
                      json={"model": "sim/ocr-1", "document": {"type": "document_url", "document_url": "x"}}
                      ).json()["usage_info"]["pages_processed"] == 2  # fmt: skip
    spend = {c.allocation.model.slug: c.cost_used for c in UsageCounter.objects.select_related("allocation__model")}
    assert spend["sim/gpt-image-1"] == Decimal("0.12")  # 3 images at $0.04
    assert spend["sim/tts-1"] == Decimal("0.00009")  # 6 characters at $0.000015
    assert spend["sim/whisper-1"] == Decimal("0.009")  # 90 s at $0.006/min
    assert spend["sim/ocr-1"] == Decimal("0.002") and spend["sim/rerank-1"] == Decimal("0.002")
    assert spend["sim/omni-moderation-latest"] == Decimal("0.0001")
    assert not CallRecord.objects.filter(priced=False).exclude(outcome__startswith="rejected").exists()


def test_speech_whose_client_leaves_is_cut_upstream_and_billed_by_its_characters(media):
    allocation = media.allocation("fake-trickle", ModelKind.TTS, unit="character", per_unit="0.001")
    headers = {"Authorization": f"Bearer {allocation.plaintext}", **RID}
    body = {"model": allocation.model.slug, "voice": "alloy", "input": "A long text to speak."}
    with httpx.stream("POST", media.world.gateway_url + "/v1/audio/speech", json=body, headers=headers) as response:
        assert response.headers["Content-Type"] == "audio/mpeg"
        next(response.iter_raw())
    record = record_of("req-media")
    assert (record.outcome, record.quantity, record.cost_usd) == ("client_cancelled", Decimal(21), Decimal("0.021"))
    assert counter_of(allocation).cost_used == Decimal("0.021") and not Reservation.objects.exists()
