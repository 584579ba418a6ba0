"""Caps hold under real concurrency: 30 calls at once against headroom for about 3, from threads
into one gateway and from threads into two gateway server processes sharing PostgreSQL and Redis."""

import threading

import httpx
from django.db.models import F, Sum

from quota.models import CallRecord, Reservation

from .conftest import counter_of

CALLS = 30


def _storm(urls, allocation) -> list[int]:
    barrier = threading.Barrier(CALLS)
    statuses = []
    body = {"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    headers = {"Authorization": f"Bearer {allocation.plaintext}"}

    def call(n):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            response = client.post(f"{urls[n % len(urls)]}/v1/chat/completions", json=body, headers=headers)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _assert_cap_held(allocation, statuses):
    # Each call reserves ~103 tokens (prompt estimate + max_tokens 100) against a 300-token quota: the
    # headroom admits 3 (0, 103, 206 < 300); the upstream takes 1.5 s, so none settles during the storm.
    admitted = statuses.count(200)
    assert 1 <= admitted <= 4, statuses
    assert statuses.count(429) == CALLS - admitted, statuses
    records = CallRecord.objects.filter(allocation=allocation)
    assert records.count() == CALLS
    assert records.filter(outcome="success").count() == admitted
    assert records.filter(outcome="rejected_quota_busy").count() == CALLS - admitted
    counter = counter_of(allocation)
    total = records.aggregate(t=Sum(F("input_tokens") + F("output_tokens")))["t"]
    assert counter.tokens_used == total == 18 * admitted
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0) and not Reservation.objects.exists()


def test_concurrent_calls_into_one_gateway_admit_at_most_one_beyond_the_headroom(world):
    allocation = world.allocation(upstream_name="fake-sleep-1500", tokens=300)
    _assert_cap_held(allocation, _storm([world.gateway_url], allocation))


def test_concurrent_calls_across_two_gateway_processes_admit_at_most_one_beyond_the_headroom(
    world, two_gateway_processes
):
    allocation = world.allocation(upstream_name="fake-sleep-1500", tokens=300)
    statuses = _storm(two_gateway_processes, allocation)
    _assert_cap_held(allocation, statuses)
