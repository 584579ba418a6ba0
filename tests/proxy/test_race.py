"""Caps hold under real concurrency: 30 calls at once against headroom for about 3, from threads
into one gateway and from threads into two gateway server processes sharing PostgreSQL and Redis."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.db.models import F, Sum

from quota.models import CallRecord, Reservation

from .conftest import counter_of

ROOT = Path(__file__).resolve().parents[2]
CALLS = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_gateway_processes(gateway):
    """Two daphne processes on the test database (committed data: the test uses transactional_db)."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.CACHES["default"].get("LOCATION", ""),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
    }
    procs, urls = [], []
    for _ in range(2):
        port = _free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway_project.worker",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "gateway_project.asgi:application",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    for base in urls:
        while True:
            try:
                httpx.get(base + "/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gateway process did not start"
                time.sleep(0.2)
    yield urls
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


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
