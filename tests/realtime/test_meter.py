"""The session meter and the crash-recovery sweep, without sockets."""

import base64
import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from quota import admission
from quota.ledger import reservations_sweep
from quota.models import CallRecord, PriceVersion, Reservation, UsageCounter
from quota.pricing import Usage
from realtime import services
from realtime.meter import SessionMeter, b64_decoded_len

from .conftest import TOKEN_PRICE, TURN_COST, realtime_world
from .fake_upstream import USAGE


def price(unit: str, amount: str) -> PriceVersion:
    return PriceVersion(unit=unit, price_per_unit=Decimal(amount))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 100, 4801])
def test_the_decoded_audio_length_is_counted_without_decoding(size):
    assert b64_decoded_len(base64.b64encode(bytes(size)).decode()) == size


def test_malformed_base64_counts_as_no_audio():
    assert b64_decoded_len("abc") == 0


def append(meter: SessionMeter, nbytes: int) -> None:
    meter.client_event({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(nbytes)).decode()})


def test_the_session_audio_total_rounds_up_to_whole_units_of_the_price():
    meter = SessionMeter()
    for _ in range(9):
        append(meter, 48000 * 10)  # 10 s of 24 kHz pcm16 mono each
    assert meter.usage(price("minute", "0.017")).quantity == 2
    assert meter.usage(price("second", "0.0003")).quantity == 90
    append(meter, 2)  # a single extra sample rounds up a whole second
    assert meter.usage(price("second", "0.0003")).quantity == 91


def test_a_ga_session_update_sets_the_input_rate():
    meter = SessionMeter()
    meter.client_event(
        {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}
    )
    append(meter, 32000 * 60)
    assert meter.usage(price("minute", "1")).quantity == 1


def test_response_usage_is_summed_with_its_cached_and_audio_split():
    meter = SessionMeter()
    for rid in ("r1", "r2"):
        meter.upstream_event({"type": "response.created", "response": {"id": rid}})
        meter.upstream_event({"type": "response.done", "response": {"id": rid, "usage": USAGE}})
    usage = meter.usage(None)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (200, 100, 40)
    assert (usage.audio_input_tokens, usage.audio_output_tokens, usage.estimated) == (80, 60, False)
    assert not meter.response_in_progress


def test_a_cut_response_is_estimated_from_the_text_relayed_and_flagged():
    meter = SessionMeter()
    meter.upstream_event({"type": "response.created", "response": {"id": "r1"}})
    meter.upstream_event({"type": "response.text.delta", "delta": "x" * 9})
    assert meter.usage(None).output_tokens == 0
    cut = meter.usage(None, cut=True)
    assert (cut.output_tokens, cut.estimated) == (3, True)


def test_garbage_usage_is_ignored():
    meter = SessionMeter()
    meter.upstream_event({"type": "response.done", "response": {"usage": {"input_tokens": -5, "output_tokens": "x"}}})
    meter.upstream_event({"type": "conversation.item.input_audio_transcription.completed", "usage": "nope"})
    assert meter.usage(None) == Usage()


def _open(world, request_id: str, now: dt.datetime) -> services.Session:
    """A session admitted by the thread path of quota.admission (as the consumer's admit does)."""
    plan = services.session_plan(request_id=request_id, plaintext=world.key, model=world.slug, now=now)
    admitted = admission.admit_on_thread(plan=plan)
    assert isinstance(admitted, admission.Admitted)
    return services.Session.of(admitted)


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_bills_a_dead_session_once_from_its_reservation_context():
    world = realtime_world(None, provider_kind="simulated", price=TOKEN_PRICE)
    now = timezone.now()
    session = _open(world, "rt-dead", now)
    meter = SessionMeter()
    meter.upstream_event({"type": "response.done", "response": {"usage": USAGE}})
    services.session_watch(session=session, usage=meter.usage(session.price), full=True, now=now)
    counter = UsageCounter.objects.get(allocation=world.allocation)
    assert counter.cost_reserved == TURN_COST

    later = now + dt.timedelta(seconds=services.LEASE_S + 1)
    assert reservations_sweep(now=later) == 1
    assert reservations_sweep(now=later) == 0
    # The worker comes back after all and tries to settle: nothing more is written.
    record = {**session.record(), "outcome": "success", "close_reason": "normal", "status_code": 1000}
    assert (
        admission.session_settle(
            admission=session.admission, record=record, usage=meter.usage(session.price), price=session.price
        )
        is None
    )
    [record] = CallRecord.objects.filter(request_id="rt-dead")
    assert (record.close_reason, record.outcome, record.cost_usd, record.input_tokens) == (
        "shutdown",
        "gateway_error",
        TURN_COST,
        100,
    )
    counter.refresh_from_db()
    assert (counter.cost_used, counter.cost_reserved, counter.calls) == (TURN_COST, 0, 1)
    assert not Reservation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_live_session_renews_its_lease_so_the_sweeper_leaves_it_alone():
    world = realtime_world(None, provider_kind="simulated", price=TOKEN_PRICE)
    start = timezone.now()
    session = _open(world, "rt-live", start)
    renewed = start + dt.timedelta(seconds=services.LEASE_S - 1)
    services.session_watch(session=session, usage=Usage(), full=False, now=renewed)
    assert reservations_sweep(now=start + dt.timedelta(seconds=services.LEASE_S + 1)) == 0
    assert Reservation.objects.filter(request_id="rt-live").exists()


def test_a_session_at_a_priced_tier_is_billed_at_its_multiplier_like_v1():
    from quota.pricing import cost_for

    tiered = PriceVersion(input_per_1m=Decimal("5"), output_per_1m=Decimal("20"),
                          service_tier_multipliers={"priority": "2", "flex": "0.5"})  # fmt: skip
    meter = SessionMeter()
    meter.client_event({"type": "session.update", "session": {"service_tier": "priority"}})
    meter.upstream_event({"type": "response.created", "response": {"id": "r1"}})
    meter.upstream_event({"type": "response.done", "response": {"id": "r1", "usage": USAGE}})
    plain = cost_for(tiered, Usage(input_tokens=100, output_tokens=50, cached_tokens=20,
                                   audio_input_tokens=40, audio_output_tokens=30))  # fmt: skip
    assert cost_for(tiered, meter.usage(tiered)) == plain * 2  # asked priority, none reported
    meter.upstream_event({"type": "response.done", "response": {"id": "r1", "service_tier": "flex"}})
    assert cost_for(tiered, meter.usage(tiered)) == plain / 2  # the reported tier the price multiplies
