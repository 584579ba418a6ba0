"""Admission and settlement on the event loop (quota.ledger), and every way back to the thread path:
a warm call takes no thread step and runs exactly two statements; a refusal, a revocation or a
failing connection is handled by the thread path with the same records and counters."""

import asyncio
import threading
import time
from decimal import Decimal

import openai
import psycopg
import pytest

from allocations.services import allocation_pause, api_key_revoke
from lib import cache
from lib.cache import bump_auth_generation
from proxy import accounting
from quota import admission, ratelimit
from quota.ledger import loop as aio
from quota.models import CallRecord, Reservation

from .conftest import CHAT_MESSAGES, assert_settled_once, chat_call, counter_of, record_of


def test_a_warm_call_is_admitted_and_settled_on_the_event_loop_in_two_statements(world, thread_steps, loop_statements):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "warm-1")  # the first call of a key fills the caches on a thread
    assert thread_steps == ["key_scope", "admit_on_thread"]  # the door's lookup (proxy.gate), then the preflight
    thread_steps.clear()
    loop_statements.clear()
    chat_call(world, allocation, "warm-2")
    assert thread_steps == []
    assert len(loop_statements) == 2
    assert loop_statements[0].startswith("WITH c AS (UPDATE quota_usagecounter")
    assert "INSERT INTO quota_callrecord" in loop_statements[1]
    record = assert_settled_once(allocation, "warm-2")
    assert (record.outcome, record.cost_usd, record.api_key_id) == ("success", Decimal("0.0000235"), allocation.key.pk)
    assert counter_of(allocation).calls == 2


def test_a_whole_answer_is_settled_in_its_upstream_calls_task_and_leaves_nothing_held(world, monkeypatch):
    """proxy.views' upstream call runs in a task the request cannot cancel (and the drain waits
    for): its settlement runs there, without a settlement task of its own, and still ends with the
    call's reservation out of the held set."""

    class Watched(set):
        added: list = []

        def add(self, task):
            self.added.append(task)
            super().add(task)

    monkeypatch.setattr(accounting, "_closing", Watched())
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "own-1")
    chat_call(world, allocation, "own-2")
    assert Watched.added == []
    assert not accounting._held
    assert assert_settled_once(allocation, "own-2").outcome == "success"


def test_a_cap_reached_on_the_loop_is_refused_by_the_thread_path_with_its_record(world, thread_steps):
    # The first call costs $0.0000235: the cap is then reached without any change that bumps the
    # auth generation, so the second call's loop admission is what finds it.
    allocation = world.allocation(cost=Decimal("0.00001"))
    chat_call(world, allocation, "cap-1")
    thread_steps.clear()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_call(world, allocation, "cap-2")
    assert refused.value.body["code"] == "cost_quota_exceeded"
    assert thread_steps == ["admit_on_thread", "record_refusal"]  # decided, then recorded
    record = record_of("cap-2")
    assert (record.outcome, record.status_code) == ("rejected_cost_quota_exceeded", 403)
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("limits", [None, {"rpm_limit": 100}], ids=["unlimited", "rate-limited"])
@pytest.mark.parametrize("change", ["revoke", "pause"])
def test_a_change_after_warm_calls_is_seen_on_the_nextchat_call(world, change, limits):
    """The warm call's admission statement checks the auth generation the call's caches were read
    under, rate-limited or not: the change is seen at once."""
    allocation = world.allocation(cost=Decimal("5"), limits=limits)
    chat_call(world, allocation, "chg-1")
    chat_call(world, allocation, "chg-2")  # served from the caches on the loop
    if change == "revoke":
        api_key_revoke(key=allocation.key)
        expected, outcome = openai.AuthenticationError, "rejected_unauthenticated"
    else:
        allocation_pause(allocation=allocation)
        expected, outcome = openai.PermissionDeniedError, "rejected_paused"
    with pytest.raises(expected):
        chat_call(world, allocation, "chg-3")
    assert record_of("chg-3").outcome == outcome


@pytest.mark.parametrize("limits", [None, {"rpm_limit": 100}], ids=["unlimited", "rate-limited"])
@pytest.mark.parametrize("change", ["bump", "revoke"])
def test_a_generation_moved_between_warm_calls_reserves_nothing_on_the_loop(world, thread_steps, change, limits):
    """A warm call is admitted under the generation this process read last, its admission statement
    checking that it is still the current one: after a bump the statement reserves nothing, and the
    thread path decides under the generation it reads (keeping the rate limits' answer when the
    limits did not change): admitted once, or refused, with no reservation left either way."""
    allocation = world.allocation(cost=Decimal("5"), limits=limits)
    chat_call(world, allocation, "gen-1")
    chat_call(world, allocation, "gen-2")
    thread_steps.clear()
    if change == "bump":
        bump_auth_generation()
        raw = world.client(allocation.plaintext).chat.completions.with_raw_response.create(
            model=allocation.model.slug, messages=CHAT_MESSAGES, extra_headers={"X-Request-Id": "gen-3"}
        )
        assert raw.http_response.status_code == 200
        assert thread_steps == ["admit_on_thread"]  # nothing to release; then settled on the loop
        if limits:
            assert raw.http_response.headers["x-ratelimit-remaining-requests"] == "97"  # asked once per call
        assert_settled_once(allocation, "gen-3")
        assert counter_of(allocation).calls == 3
        thread_steps.clear()
        chat_call(world, allocation, "gen-4")  # warm again under the generation the thread path read
        assert thread_steps == []
    else:
        api_key_revoke(key=allocation.key)
        with pytest.raises(openai.AuthenticationError):
            chat_call(world, allocation, "gen-3")
        assert thread_steps == ["admit_on_thread", "record_refusal"]
        assert record_of("gen-3").outcome == "rejected_unauthenticated"
    assert Reservation.objects.count() == 0
    counter = counter_of(allocation)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)


@pytest.fixture
def redis_commands(monkeypatch):
    """Every command sent on the event loop's Redis connections; `fail` makes each one fail as if
    Redis were down."""
    sent: list[bytes] = []
    hooks = {"fail": False}
    original = cache.RespConnection.request

    def request(self, *parts, **kwargs):
        sent.append(parts[0])
        if hooks["fail"]:
            raise ConnectionError("Redis is down")
        return original(self, *parts, **kwargs)

    monkeypatch.setattr(cache.RespConnection, "request", request)
    return sent, hooks


def test_a_warm_unlimited_call_makes_no_redis_round_trip(world, thread_steps, loop_statements, redis_commands):
    """The auth generation rides in the admission statement: a warm call without rate limits
    sends nothing to Redis, and Redis being down changes nothing for it."""
    sent, hooks = redis_commands
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "pg-1")
    sent.clear()
    thread_steps.clear()
    loop_statements.clear()
    chat_call(world, allocation, "pg-2")
    assert sent == []
    assert thread_steps == []
    assert len(loop_statements) == 2 and "gw_auth_generation" in loop_statements[0]
    hooks["fail"] = True
    chat_call(world, allocation, "pg-3")
    assert sent == [] and thread_steps == []
    assert_settled_once(allocation, "pg-3")
    assert counter_of(allocation).calls == 3


def test_an_admission_failing_on_the_loop_is_made_on_a_thread(world, monkeypatch, thread_steps):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "adm-1")

    async def broken(**kwargs):
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(aio, "admit", broken)
    thread_steps.clear()
    chat_call(world, allocation, "adm-2")
    assert thread_steps == ["admit_on_thread"]  # settled on the loop: the admission came from the thread
    assert record_of("adm-2").outcome == "success"
    assert_settled_once(allocation, "adm-2")


@pytest.mark.parametrize("committed", [True, False], ids=["after-commit", "before-statement"])
def test_a_settlement_whose_connection_fails_is_recorded_exactly_once(world, monkeypatch, thread_steps, committed):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "set-1")
    original = aio.settle

    async def failing(**kwargs):
        if committed:
            await original(**kwargs)  # the statement commits, then the connection drops
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(aio, "settle", failing)
    thread_steps.clear()
    chat_call(world, allocation, "set-2")
    assert thread_steps == ["call_settle_once"]
    record = assert_settled_once(allocation, "set-2")
    assert (record.outcome, record.cost_usd) == ("success", Decimal("0.0000235"))
    assert counter_of(allocation).calls == 2


def _wait_for_record(rid: str, timeout: float = 10.0) -> CallRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = CallRecord.objects.filter(request_id=rid).first()
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"no call record for {rid}")


@pytest.mark.parametrize("path", ["event-loop", "thread"])
def test_a_client_leaving_during_admission_leaves_a_record_and_no_reservation(world, fake_upstream, monkeypatch, path):
    """The client gives up while its call is being admitted: the admission still completes, and the
    call is recorded as client_cancelled with its reservation released (it never went upstream)."""
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "gone-1")  # warm: the next call is admitted on the event loop
    if path == "event-loop":
        original = aio.admit

        async def slow_admit(**kwargs):
            await asyncio.sleep(0.6)  # the client's 0.2 s timeout runs out meanwhile
            return await original(**kwargs)

        monkeypatch.setattr(aio, "admit", slow_admit)
    else:
        original_open = admission.admit_on_thread

        def slow_open(*, plan, opening=None):
            time.sleep(0.6)
            return original_open(plan=plan, opening=opening)

        async def never_on_loop(plan, opening):
            return False

        monkeypatch.setattr(admission, "admit_on_loop", never_on_loop)
        monkeypatch.setattr(admission, "admit_on_thread", slow_open)
    with pytest.raises(openai.APITimeoutError):
        world.client(allocation.plaintext, timeout=0.2).chat.completions.create(
            model=allocation.model.slug, messages=CHAT_MESSAGES, extra_headers={"X-Request-Id": "gone-2"}
        )
    record = _wait_for_record("gone-2")
    assert (record.outcome, record.status_code, record.input_tokens, record.cost_usd) == (
        "client_cancelled",
        499,
        0,
        Decimal(0),
    )
    assert len(fake_upstream.requests) == 1  # only gone-1 went upstream
    counter = counter_of(allocation)
    assert (counter.calls, counter.tokens_reserved, counter.cost_reserved) == (2, 0, 0)
    assert not Reservation.objects.exists()


def test_a_rate_limited_warm_call_stays_on_the_loop_and_its_refusal_asks_the_limiter_once(
    world, thread_steps, monkeypatch
):
    allocation = world.allocation(limits={"rpm_limit": 2, "max_parallel": 5})
    asked = []
    original = ratelimit.admit

    def counting(*args, **kwargs):
        asked.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(ratelimit, "admit", counting)
    chat_call(world, allocation, "limited-1")  # fills the caches on a thread (the limiter asked there)
    assert (thread_steps, len(asked)) == (["key_scope", "admit_on_thread"], 1)
    thread_steps.clear()
    chat_call(world, allocation, "limited-2")
    assert thread_steps == []  # admitted and settled on the loop, limiter included
    with pytest.raises(openai.RateLimitError):
        chat_call(world, allocation, "limited-3")
    # the loop's refusal: the reservation made meanwhile given back, the refusal recorded on a thread
    assert thread_steps == ["release", "admit_on_thread", "record_refusal"] and len(asked) == 1
    assert record_of("limited-3").outcome == "rejected_rate_limited"


def test_streams_admitted_together_while_the_connections_are_busy_are_each_billed_once(
    world, monkeypatch, loop_statements
):
    """Calls that start together while every accounting connection is busy are admitted by one
    statement (quota.ledger.loop._Admissions): each stream is relayed whole and settled once, and
    the counters end with nothing reserved."""
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "batch-warm")  # fills the caches: the next calls are warm
    # One connection at work at a time: the others wait. Every opened pool (one per event loop;
    # other servers of this test process may hold theirs), so the gateway's is among them.
    pools = [p for p in list(aio._pools.values()) if p.opened]
    assert pools
    for pool in pools:
        monkeypatch.setattr(pool, "size", 1)
    loop_statements.clear()
    calls = 16
    barrier = threading.Barrier(calls)
    ends: dict[str, str] = {}

    def stream(n: int) -> None:
        client = world.client(allocation.plaintext)
        barrier.wait()
        chunks = client.chat.completions.create(
            model=allocation.model.slug,
            messages=CHAT_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-Id": f"batch-{n}"},
        )
        ends[f"batch-{n}"] = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ends) == calls and all(ends.values())
    admissions = [s for s in loop_statements if s.startswith("WITH c AS (UPDATE quota_usagecounter")]
    together = [s for s in admissions if "jsonb_to_recordset" in s]
    assert together and len(admissions) < calls  # some admitted by one statement
    records = [record_of(f"batch-{n}") for n in range(calls)]
    assert {(r.outcome, r.is_stream) for r in records} == {("success", True)}
    for n in range(calls):
        assert_settled_once(allocation, f"batch-{n}")
    assert counter_of(allocation).calls == calls + 1


@pytest.fixture
def wire(monkeypatch):
    """The order of what a call does around its two statements on the event loop's connections:
    `admission` / `settlement` when the statement's text is taken, `sent` once it is written and
    its answer is waited for, `answered` when the answer is in; `built` when an upstream JSON
    body is encoded (proxy.bodies), `call line` when the call's metrics and call line are made."""
    from ops import observe
    from proxy import bodies

    events: list[str] = []
    native, run_statement, result = aio.native, aio.LoopConnection.run_statement, aio.LoopConnection._result
    statement_sent = [False]

    def named(sql):
        if "INSERT INTO quota_callrecord" in sql:
            events.append("settlement")
        elif "UPDATE quota_usagecounter" in sql:
            events.append("admission")
        return native(sql)

    async def reading(self):
        if not statement_sent[0]:  # the statement is written; its first wait follows (a PREPARE's first)
            statement_sent[0] = True
            events.append("sent")
        return await result(self)

    async def running(self, sql, params, **kwargs):
        statement_sent[0] = False
        found = await run_statement(self, sql, params, **kwargs)
        events.append("answered")
        return found

    def spy(name, original):
        def called(*args, **kwargs):
            events.append(name)
            return original(*args, **kwargs)

        return called

    monkeypatch.setattr(aio, "native", named)
    monkeypatch.setattr(aio.LoopConnection, "run_statement", running)
    monkeypatch.setattr(aio.LoopConnection, "_result", reading)
    monkeypatch.setattr(bodies, "upstream_bytes", spy("built", bodies.upstream_bytes))
    monkeypatch.setattr(observe, "call_finished", spy("call line", observe.call_finished))
    return events


def test_a_warm_calls_work_is_done_while_its_statements_are_in_the_database(world, wire):
    """At one call at a time the call's own CPU is on its latency unless it runs while PostgreSQL
    works: the upstream body is built while the admission statement is out (and the upstream is
    still asked only once it is answered), and the metrics and call line are made once the
    settlement's statement has been written, before its answer."""
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "meanwhile-1")  # fills the caches on a thread
    wire.clear()
    chat_call(world, allocation, "meanwhile-2")
    assert wire == [
        "admission", "sent", "built", "answered",
        "settlement", "sent", "call line", "answered",
    ]  # fmt: skip
    record = assert_settled_once(allocation, "meanwhile-2")
    assert record.outcome == "success"
    assert counter_of(allocation).calls == 2


def test_a_warm_call_refused_after_its_body_was_built_ahead_sends_nothing_upstream(world, fake_upstream, wire):
    """The body built while the admission was decided leaves nothing behind when the admission
    refuses: no upstream request, the refusal's record, no reservation."""
    allocation = world.allocation(cost=Decimal("0.00001"))
    chat_call(world, allocation, "ahead-1")  # reaches the cost cap without moving the generation
    fake_upstream.requests.clear()
    wire.clear()
    with pytest.raises(openai.PermissionDeniedError):
        chat_call(world, allocation, "ahead-2")
    assert wire[:4] == ["admission", "sent", "built", "answered"]  # built ahead, then not admitted on the loop
    assert fake_upstream.requests == []
    assert record_of("ahead-2").outcome == "rejected_cost_quota_exceeded"
    assert not Reservation.objects.exists()
