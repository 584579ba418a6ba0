"""The rate limiter's decisions, on Redis (the script) and in memory (no Redis URL) alike, and how
it fails open when its Redis goes away."""

import asyncio
import logging
import time
import uuid

import pytest
import redis
from django.conf import settings

from quota import ratelimit
from quota.ratelimit_memory import MemoryWindows

WINDOW_S = 0.6


@pytest.fixture(params=["redis", "memory"])
def limiter(request, settings):
    """Both backends with a short window; fresh failure state and memory."""
    if request.param == "memory":
        settings.GATEWAY_RATE_LIMIT_REDIS_URL = ""
    elif not settings.GATEWAY_RATE_LIMIT_REDIS_URL:
        pytest.skip("no Redis URL")
    settings.GATEWAY_RATE_LIMIT_WINDOW_S = WINDOW_S
    ratelimit._down.update(until=0.0, warned=float("-inf"))
    ratelimit._memory = MemoryWindows()
    return request.param


def scope(rpm=None, tpm=None, par=None, name=None):
    return (name or f"a:{uuid.uuid4()}", rpm, tpm, par)


def test_it_admits_exactly_the_rpm_then_refuses_until_the_window_slides(limiter):
    limits = (scope(rpm=5),)
    decisions = [ratelimit.admit(limits, tokens=10)[0] for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    refused = decisions[-1]
    assert 0 < refused.retry_after_ms <= WINDOW_S * 1000 and refused.retry_after_s == 1
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[0].headers["x-ratelimit-remaining-requests"] == "4"
    assert "x-ratelimit-limit-tokens" not in refused.headers
    time.sleep(refused.retry_after_ms / 1000 + 0.05)
    assert ratelimit.admit(limits, tokens=10)[0].allowed


def test_tokens_count_the_estimate_and_are_corrected_at_settlement(limiter):
    limits = (scope(tpm=100),)
    first, ticket = ratelimit.admit(limits, tokens=60)
    assert first.allowed and first.headers["x-ratelimit-remaining-tokens"] == "40"
    refused, none = ratelimit.admit(limits, tokens=60)
    assert not refused.allowed and none is None
    assert refused.headers["x-ratelimit-remaining-tokens"] == "40"  # a refusal takes nothing
    ratelimit.settle(ticket, tokens=10)  # it used less than estimated
    again, _ = ratelimit.admit(limits, tokens=60)
    assert again.allowed and again.headers["x-ratelimit-remaining-tokens"] == "30"


def test_a_call_larger_than_the_tpm_passes_alone_in_an_empty_window(limiter):
    limits = (scope(tpm=100),)
    assert ratelimit.admit(limits, tokens=500)[0].allowed
    assert not ratelimit.admit(limits, tokens=1)[0].allowed


def test_calls_in_flight_hold_their_slot_until_they_settle(limiter):
    limits = (scope(par=2),)
    tickets = [ratelimit.admit(limits, tokens=0)[1] for _ in range(2)]
    refused, _ = ratelimit.admit(limits, tokens=0)
    assert not refused.allowed and refused.retry_after_s == 1
    ratelimit.settle(tickets[0], tokens=5)
    assert ratelimit.admit(limits, tokens=0)[0].allowed


async def test_the_slot_of_a_call_that_never_settles_comes_back_after_its_lease(limiter):
    limits = (scope(par=1),)
    _, ticket = await ratelimit.admit_async(limits, tokens=0, lease_s=0.3)
    assert not (await ratelimit.admit_async(limits, tokens=0, lease_s=0.3))[0].allowed
    await ratelimit.renew_async(ticket, lease_s=0.6)  # a live realtime session renews
    await asyncio.sleep(0.4)
    assert not (await ratelimit.admit_async(limits, tokens=0, lease_s=0.3))[0].allowed
    await asyncio.sleep(0.3)
    assert (await ratelimit.admit_async(limits, tokens=0, lease_s=0.3))[0].allowed


def test_both_scopes_must_allow_and_the_headers_show_the_tighter(limiter):
    model = scope(rpm=2, name=f"m:{uuid.uuid4()}")
    mine, theirs = (scope(rpm=10), model), (scope(rpm=10), model)
    assert ratelimit.admit(mine, tokens=1)[0].allowed
    second = ratelimit.admit(theirs, tokens=1)[0]
    assert second.allowed and second.headers["x-ratelimit-remaining-requests"] == "0"
    refused = ratelimit.admit(mine, tokens=1)[0]
    assert not refused.allowed and refused.headers["x-ratelimit-limit-requests"] == "2"
    # the refusal took nothing from the allocation's own window
    alone = ratelimit.admit((mine[0],), tokens=1)[0]
    assert alone.headers["x-ratelimit-remaining-requests"] == "8"


def test_a_request_that_is_not_counted_only_takes_a_slot(limiter):
    limits = (scope(rpm=1, par=5),)
    assert ratelimit.admit(limits, tokens=0, count=False)[0].allowed
    assert ratelimit.admit(limits, tokens=0)[0].allowed  # the one request of the window
    assert not ratelimit.admit(limits, tokens=0, hold=False)[0].allowed


async def test_the_event_loop_path_admits_exactly_the_limit_under_concurrency(limiter):
    limits = (scope(rpm=7, tpm=1000, par=20),)
    results = await asyncio.gather(*(ratelimit.admit_async(limits, tokens=10) for _ in range(20)))
    admitted = [ticket for decision, ticket in results if decision.allowed]
    assert len(admitted) == 7
    await asyncio.gather(*(ratelimit.settle_async(t, tokens=1) for t in admitted))
    decision, _ = await ratelimit.admit_async(limits, tokens=10, count=False)
    assert decision.headers["x-ratelimit-remaining-tokens"] == str(1000 - 7 - 10)


def test_reset_durations_use_openai_s_format():
    assert [ratelimit._duration(ms) for ms in (0, 20, 1000, 1500, 59_001, 360_000)] == [
        "0ms",
        "20ms",
        "1s",
        "2s",
        "1m0s",
        "6m0s",
    ]


# --- Redis unreachable ------------------------------------------------------------------------------


def _warnings(caplog) -> int:
    return sum("rate limits are not enforced" in r.getMessage() for r in caplog.records)


async def test_without_redis_calls_pass_and_the_warning_is_logged_once_per_interval(own_redis, caplog, monkeypatch):
    monkeypatch.setattr(ratelimit, "RETRY_DOWN_S", 0.05)
    caplog.set_level(logging.WARNING, logger="quota.ratelimit")
    limits = (scope(rpm=1),)
    assert (await ratelimit.admit_async(limits, tokens=1))[0].allowed
    assert not (await ratelimit.admit_async(limits, tokens=1))[0].allowed  # enforced while Redis is up
    own_redis.kill()
    own_redis.wait(10)
    before = ratelimit.stats["fail_open"]
    for _ in range(5):
        decision, ticket = await ratelimit.admit_async(limits, tokens=1)
        assert decision.allowed and ticket is None and decision.headers == {}
        decision, ticket = ratelimit.admit(limits, tokens=1)  # the threads' path too
        assert decision.allowed and ticket is None
        await asyncio.sleep(0.06)
    assert _warnings(caplog) == 1
    assert ratelimit.stats["fail_open"] - before == 10
    await asyncio.sleep(0.5)
    assert (await ratelimit.admit_async(limits, tokens=1))[0].allowed
    assert _warnings(caplog) == 2  # the next interval says it again


async def test_a_redis_that_stops_answering_is_given_up_on_within_two_timeouts(limiter, settings, caplog):
    if limiter == "memory":
        pytest.skip("the event loop's Redis connection")
    received = []

    async def silent(reader, writer):
        received.append(await reader.read(1 << 16))  # reads the call, never answers
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings.GATEWAY_RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    caplog.set_level(logging.WARNING, logger="quota.ratelimit")
    started = time.monotonic()
    async with server:
        decision, ticket = await ratelimit.admit_async((scope(rpm=1),), tokens=1)
    assert decision.allowed and ticket is None  # failed open
    assert time.monotonic() - started < 2 * ratelimit.TIMEOUT_S + 0.5
    assert received and b"EVALSHA" in received[0]
    assert _warnings(caplog) == 1


async def test_a_script_redis_forgot_is_loaded_again_and_the_call_decided(limiter):
    """Redis restarted or flushed its scripts: the event loop's EVALSHA answers NOSCRIPT, the
    script is loaded again and the same call is decided (not failed open)."""
    if limiter == "memory":
        pytest.skip("scripts are Redis'")
    limits = (scope(rpm=2),)
    assert (await ratelimit.admit_async(limits, tokens=0))[0].allowed  # the loop's connection is open
    redis.Redis.from_url(settings.GATEWAY_RATE_LIMIT_REDIS_URL).script_flush()
    decision, ticket = await ratelimit.admit_async(limits, tokens=0)
    assert decision.allowed and ticket is not None
    assert decision.headers["x-ratelimit-remaining-requests"] == "0"
    assert not (await ratelimit.admit_async(limits, tokens=0))[0].allowed
