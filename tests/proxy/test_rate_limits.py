"""Rate limits through the real gateway: two server processes sharing Redis admit no more than the
limit, refusals are 429 rate_limited with Retry-After and OpenAI's headers (so the official SDK
retries them to success), calls in flight never exceed max_parallel upstream, a model's limit is
shared by every allocation of it, and calls are still served when the limiter's Redis is gone."""

import datetime as dt
import logging
import threading
import time

import httpx
import openai
import pytest
from django.utils import timezone

from allocations.services import allocation_update, api_key_set_expiry, model_update
from lib.cache import bump_auth_generation
from proxy.registry import ENDPOINTS
from quota.models import CallRecord, Reservation, UsageCounter
from tests.factories import MemberFactory

from .conftest import record_of, start_gateway_processes

WINDOW_S = 8  # the processes' rate window: short enough for the SDK's retry, long enough for the burst
RATE_HEADERS = {f"x-ratelimit-{k}-{u}" for k in ("limit", "remaining", "reset") for u in ("requests", "tokens")}


@pytest.fixture
def two_limited_processes(gateway):
    urls, stop = start_gateway_processes(2, GATEWAY_RATE_LIMIT_WINDOW_S=str(WINDOW_S))
    yield urls
    stop()


def _chat(model, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **extra}


def _burst(urls, allocation, calls: int, threads: int, **extra) -> list[httpx.Response]:
    responses: list[httpx.Response] = []
    headers = {"Authorization": f"Bearer {allocation.plaintext}"}
    todo = iter(range(calls))
    lock = threading.Lock()

    def worker():
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    n = next(todo, None)
                if n is None:
                    return
                url = f"{urls[n % len(urls)]}/v1/chat/completions"
                responses.append(client.post(url, json=_chat(allocation.model.slug, **extra), headers=headers))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return responses


def test_two_processes_admit_at_most_the_rpm_and_the_sdk_retries_the_rest(world, two_limited_processes):
    allocation = world.allocation(limits={"rpm_limit": 60})
    started = time.monotonic()
    responses = _burst(two_limited_processes, allocation, calls=80, threads=8)
    elapsed = time.monotonic() - started
    assert elapsed < WINDOW_S, "the burst must fit in one window for the count to mean anything"
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60, statuses  # tolerance 0: one script decides for every process
    assert statuses.count(429) == 20
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_S
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert all("x-ratelimit-limit-requests" in r.headers for r in responses)
    assert not any("x-ratelimit-limit-tokens" in r.headers for r in responses)  # no tpm limit set
    records = CallRecord.objects.filter(allocation=allocation)
    assert records.filter(outcome="rejected_rate_limited", status_code=429).count() == 20
    assert records.filter(outcome="success").count() == 60

    # The official SDK reads Retry-After, waits, and succeeds once the window has slid.
    client = openai.OpenAI(base_url=two_limited_processes[0] + "/v1", api_key=allocation.plaintext, max_retries=3)
    raw = client.chat.completions.with_raw_response.create(**_chat(allocation.model.slug))
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1
    assert raw.parse().choices[0].message.content == "Hello from the fake"


def test_max_parallel_two_never_has_more_than_two_streams_upstream_across_both(
    world, two_limited_processes, fake_upstream
):
    allocation = world.allocation("fake-trickle", limits={"max_parallel": 2})
    fake_upstream.max_in_flight = 0
    responses = _burst(two_limited_processes, allocation, calls=10, threads=10, stream=True)
    statuses = sorted(r.status_code for r in responses)
    assert fake_upstream.max_in_flight == 2, statuses
    assert statuses.count(200) >= 2 and set(statuses) == {200, 429}
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)
    # every slot came back when its stream settled
    after = httpx.post(
        two_limited_processes[0] + "/v1/chat/completions",
        json=_chat(allocation.model.slug),
        headers={"Authorization": f"Bearer {allocation.plaintext}"},
        timeout=30,
    )
    assert after.status_code == 200


def test_a_model_wide_tpm_is_shared_by_every_allocation_of_the_model(world):
    first = world.allocation("fake-sleep-1500")
    model_update(model=first.model, changes={"tpm_limit": 100})
    second = world.allocation(model=first.model, member=MemberFactory(username="other"))
    estimate = ENDPOINTS["chat.completions"].estimate(_chat("m")).total_tokens
    fits = 100 // estimate
    assert 1 < fits < 6
    # Both members at once; the calls run 1.5 s upstream, so none settles during the burst.
    both = [
        threading.Thread(target=lambda a=a: responses.extend(_burst([world.gateway_url], a, 3, 3)))
        for a in (first, second)
    ]
    responses: list[httpx.Response] = []
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * fits + [429] * (6 - fits)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) == 100 - fits * estimate
    # Settled calls are corrected to what they used (18 tokens each): there is room again.
    again = _burst([world.gateway_url], second, 1, 1)[0]
    assert again.status_code == 200, again.text
    assert again.headers["x-ratelimit-remaining-tokens"] == str(100 - fits * 18 - estimate)


def test_a_call_the_rate_limits_refuse_holds_no_reservation(world, thread_steps):
    """A warm call asks the rate limits and the admission at once: a refused one gives its
    reservation back and is recorded as rate limited, whichever answered first."""
    allocation = world.allocation(limits={"rpm_limit": 2})
    statuses = [_burst([world.gateway_url], allocation, 1, 1)[0].status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    assert thread_steps.count("release") == 3  # admitted on the loop, then given back
    assert not Reservation.objects.filter(counter__allocation_id=allocation.id).exists()
    counter = UsageCounter.objects.get(allocation_id=allocation.id)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    outcomes = sorted(CallRecord.objects.filter(allocation_id=allocation.id).values_list("outcome", flat=True))
    assert outcomes == ["rejected_rate_limited"] * 3 + ["success"] * 2


def test_a_generation_moved_under_a_warm_limited_call_keeps_its_answer_when_the_limits_are_the_same(
    world, thread_steps
):
    """A warm limited call asks its limits while its admission is on its way; after a bump the
    admission reserves nothing and the call is decided again on a thread, which keeps the
    limits' answer (they did not change): the call takes one request, not two."""
    allocation = world.allocation(limits={"rpm_limit": 3})
    assert [_burst([world.gateway_url], allocation, 1, 1)[0].status_code for _ in range(2)] == [200, 200]
    bump_auth_generation()
    thread_steps.clear()
    third = _burst([world.gateway_url], allocation, 1, 1)[0]
    assert third.status_code == 200
    assert "admit_on_thread" in thread_steps  # decided again on a thread
    assert third.headers["x-ratelimit-remaining-requests"] == "0"  # three taken, not four
    assert _burst([world.gateway_url], allocation, 1, 1)[0].status_code == 429
    assert not Reservation.objects.filter(counter__allocation_id=allocation.id).exists()


def test_limits_changed_under_a_warm_call_are_asked_again(world, thread_steps):
    """The limits lowered between warm calls: the loop asked the old ones (and was let through)
    while its admission found the generation moved; the thread path gives that place back and
    asks the new limits, which refuse the call."""
    allocation = world.allocation(limits={"rpm_limit": 3})
    assert [_burst([world.gateway_url], allocation, 1, 1)[0].status_code for _ in range(2)] == [200, 200]
    allocation_update(allocation=allocation, changes={"rpm_limit": 2})
    thread_steps.clear()
    third = _burst([world.gateway_url], allocation, 1, 1)[0]
    assert third.status_code == 429
    assert thread_steps[0] == "admit_on_thread"
    assert CallRecord.objects.get(request_id=third.headers["x-request-id"]).outcome == "rejected_rate_limited"
    assert not Reservation.objects.filter(counter__allocation_id=allocation.id).exists()


def test_an_unlimited_allocation_gets_no_rate_headers(world):
    allocation = world.allocation()
    response = httpx.post(
        world.gateway_url + "/v1/chat/completions",
        json=_chat(allocation.model.slug),
        headers={"Authorization": f"Bearer {allocation.plaintext}"},
    )
    assert response.status_code == 200
    assert not RATE_HEADERS & set(response.headers)


def test_calls_are_served_when_the_limiters_redis_is_stopped(world, own_redis, caplog):
    caplog.set_level(logging.WARNING, logger="quota.ratelimit")
    allocation = world.allocation(limits={"rpm_limit": 1000, "max_parallel": 5})
    client = world.client(allocation.plaintext)
    raw = client.chat.completions.with_raw_response.create(**_chat(allocation.model.slug))
    assert raw.http_response.headers["x-ratelimit-remaining-requests"] == "999"
    own_redis.kill()
    own_redis.wait(10)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(**_chat(allocation.model.slug))
        assert raw.http_response.status_code == 200
        assert "x-ratelimit-limit-requests" not in raw.http_response.headers
    assert sum("rate limits are not enforced" in r.getMessage() for r in caplog.records) == 1


def test_an_expired_key_is_unauthorized_and_says_so(world):
    allocation = world.allocation()
    api_key_set_expiry(key=allocation.key, expires_at=timezone.now() + dt.timedelta(seconds=1.5))
    client = world.client(allocation.plaintext)
    assert client.chat.completions.create(**_chat(allocation.model.slug)).choices  # cached on the loop now
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.with_raw_response.create(
            **_chat(allocation.model.slug), extra_headers={"X-Request-Id": "expired-1"}
        )
    error = refused.value.body
    assert error["code"] == "unauthorized" and "expired" in error["message"]
    assert record_of("expired-1").outcome == "rejected_unauthenticated"
