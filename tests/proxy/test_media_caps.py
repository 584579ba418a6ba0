"""The cost cap governs the media endpoints like chat: one cap per allocation whatever the endpoint;
unpriced calls (no price, or a price in a unit the meter does not produce) are recorded as
unpriced, never $0, and listed for admins; reservations are estimated per endpoint."""

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
from django.test import Client
from django.utils import timezone

from allocations.models import ModelKind
from proxy import media_meters
from quota import ledger
from quota.models import CallRecord, Reservation
from quota.pricing import cost_for
from tests.factories import MemberFactory, PriceVersionFactory

from .conftest import counter_of, record_of
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import wav_bytes

MESSAGES = [{"role": "user", "content": "Draw me a cat"}]


def test_image_spend_that_reaches_the_cap_blocks_the_next_chat_call(media):
    allocation = media.allocation("gpt-image-1", ModelKind.IMAGE, tokens=True, cost=Decimal("0.04"))
    client = media.client(allocation)
    client.images.generate(model=allocation.model.slug, prompt="a cat", extra_headers={"X-Request-Id": "img"})
    assert record_of("img").cost_usd == Decimal("0.04025")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=allocation.model.slug, messages=MESSAGES)
    assert caught.value.body["code"] == "cost_quota_exceeded" and "$0.04025 / $0.04" in caught.value.message
    assert CallRecord.objects.filter(outcome="rejected_cost_quota_exceeded", endpoint="chat.completions").exists()


def test_chat_spend_that_reaches_the_cap_blocks_the_next_image_call(media):
    allocation = media.allocation("gpt-image-1", ModelKind.IMAGE, tokens=True, cost=Decimal("0.04"))
    client = media.client(allocation)
    client.chat.completions.create(model=allocation.model.slug, messages=MESSAGES)
    assert counter_of(allocation).cost_used == Decimal("0.045")  # 1,000 in at $5/1M + 1,000 out at $40/1M
    for call in (
        lambda: client.images.generate(model=allocation.model.slug, prompt="a cat"),
        lambda: client.images.edit(model=allocation.model.slug, image=("a.png", b"png"), prompt="hat"),
    ):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            call()
        assert caught.value.body["code"] == "cost_quota_exceeded"
    assert len(media.upstream.requests) == 1


def test_per_unit_spend_counts_toward_the_cap_of_every_endpoint(media):
    allocation = media.allocation("tts-1", ModelKind.TTS, unit="character", per_unit="0.001", cost=Decimal("0.02"))
    client = media.client(allocation)
    client.audio.speech.create(model=allocation.model.slug, voice="alloy", input="Twenty characters!!!")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.audio.speech.create(model=allocation.model.slug, voice="alloy", input="again")
    assert caught.value.body["code"] == "cost_quota_exceeded"
    assert counter_of(allocation).cost_used == Decimal("0.02")


def test_ocr_without_a_price_is_recorded_unpriced_not_zero_and_not_blocked_by_the_cap(media):
    allocation = media.allocation("mistral-ocr-latest", ModelKind.OCR, cost=Decimal("0.01"))
    for n in range(2):
        response = media.post(allocation, "ocr", {"model": allocation.model.slug, "document": {"type": "x"}},
                              rid=f"ocr-{n}")  # fmt: skip
        assert response.status_code == 200
    record = record_of("ocr-1")
    assert (record.cost_usd, record.priced, record.quantity, record.unit) == (None, False, Decimal(3), "page")
    assert counter_of(allocation).cost_used == 0


def test_a_price_in_another_unit_than_the_meter_is_an_unpriced_unit_mismatch(media):
    allocation = media.allocation("fake-tokens", ModelKind.STT, unit="minute", per_unit="0.006", cost=Decimal("1"))
    media.client(allocation).audio.transcriptions.create(
        model=allocation.model.slug, file=("a.wav", wav_bytes(90)), extra_headers={"X-Request-Id": "mismatch"}
    )
    record = record_of("mismatch")  # the upstream reported tokens; the price is per minute
    assert (record.cost_usd, record.priced, record.input_tokens) == (None, False, 120)
    assert counter_of(allocation).cost_used == 0


def test_admins_list_unpriced_and_mismatched_calls_of_the_period(media, staff):
    mismatched = media.allocation("fake-tokens", ModelKind.STT, unit="minute", per_unit="0.006")
    media.client(mismatched).audio.transcriptions.create(
        model=mismatched.model.slug, file=("a.wav", wav_bytes(1)), extra_headers={"X-Request-Id": "req-mismatch"}
    )
    no_price = media.allocation("mistral-ocr-latest", ModelKind.OCR)
    media.post(no_price, "ocr", {"model": no_price.model.slug, "document": {"type": "x"}}, rid="req-noprice")
    priced = media.allocation("mistral-ocr-latest", ModelKind.OCR, unit="page", per_unit="0.001")
    media.post(priced, "ocr", {"model": priced.model.slug, "document": {"type": "x"}}, rid="req-priced")
    browser = Client()
    browser.force_login(staff)
    page = browser.get("/admin/quota/callrecord/", {"pricing": "unpriced_period"}).content.decode()
    assert "req-mismatch" in page and "req-noprice" in page and "req-priced" not in page
    assert "3 page" in page and "unpriced" in page
    page = browser.get("/admin/quota/callrecord/", {"pricing": "mismatch_period"}).content.decode()
    assert "req-mismatch" in page and "req-noprice" not in page and "req-priced" not in page


# --- reservation estimates, priced with the price in force ------------------------------------------


def unit_price(unit, amount):
    return PriceVersionFactory.build(unit=unit, price_per_unit=Decimal(amount), input_per_1m=None, output_per_1m=None)


def test_reservation_estimates_price_the_request_in_the_prices_unit(settings):
    settings.GATEWAY_OCR_ESTIMATE_PAGES = 7
    assert cost_for(unit_price("image", "0.04"), media_meters.estimate_images({"prompt": "x", "n": 3})) == Decimal(
        "0.12"
    )
    assert cost_for(unit_price("character", "0.001"), media_meters.estimate_speech({"input": "x" * 20})) == Decimal(
        "0.02"
    )
    upload = {"upload": {"duration_s": 89.5, "duration_decoded": True}}
    assert cost_for(unit_price("minute", "0.006"), media_meters.estimate_transcription(upload)) == Decimal("0.009")
    assert cost_for(unit_price("page", "0.01"), media_meters.estimate_ocr({"pages": [0, 4]})) == Decimal("0.02")
    assert cost_for(unit_price("page", "0.01"), media_meters.estimate_ocr({"document": {}})) == Decimal("0.07")
    assert cost_for(unit_price("query", "0.002"), media_meters.estimate_rerank({"query": "q"})) == Decimal("0.002")
    tokens = PriceVersionFactory.build(input_per_1m=Decimal("5"), output_per_1m=Decimal("40"))
    assert cost_for(tokens, media_meters.estimate_images({"prompt": "x", "quality": "low"})) > 0  # tokens too


def test_a_reservation_held_by_an_image_call_in_flight_makes_the_next_call_wait(media, db):
    """used + reserved ≥ cap → 429 quota_busy: the estimate is what holds the headroom."""
    allocation = media.allocation("dall-e-3", ModelKind.IMAGE, unit="image", per_unit="0.04", cost=Decimal("0.10"))
    estimate = cost_for(unit_price("image", "0.04"), media_meters.estimate_images({"prompt": "x", "n": 3}))
    ledger.admit(allocation_id=allocation.pk, token_cap=None, cost_cap=Decimal("0.10"), est_tokens=0,
               est_cost=estimate, request_id="in-flight", now=timezone.now())  # fmt: skip
    with pytest.raises(openai.RateLimitError) as caught:
        media.client(allocation).images.generate(model=allocation.model.slug, prompt="a cat")
    assert caught.value.body["code"] == "quota_busy"


def test_members_never_see_the_admin_filter(media):
    member = MemberFactory(username="plain")
    browser = Client()
    browser.force_login(member)
    assert browser.get("/admin/quota/callrecord/", {"pricing": "unpriced"}).status_code in (302, 403)


def test_concurrent_image_calls_overshoot_the_cap_by_at_most_one_call(media):
    """cap $0.10, each call reserves 2 images at $0.04: whatever the interleaving, at most two are
    admitted (used + reserved < cap), the others get quota_busy or cost_quota_exceeded."""
    allocation = media.allocation("dall-e-3", ModelKind.IMAGE, unit="image", per_unit="0.04", cost=Decimal("0.10"))
    barrier = threading.Barrier(6)

    def one(_):
        client = media.client(allocation)
        barrier.wait(10)
        try:
            client.images.generate(model=allocation.model.slug, prompt="a cat", n=2)
            return "ok"
        except openai.APIStatusError as error:
            return error.body["code"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert 1 <= results.count("ok") <= 2
    assert set(results) - {"ok"} <= {"quota_busy", "cost_quota_exceeded"}
    counter = counter_of(allocation)
    assert counter.cost_used == Decimal("0.08") * results.count("ok") <= Decimal("0.16")
    assert (counter.cost_reserved, Reservation.objects.count()) == (0, 0)
