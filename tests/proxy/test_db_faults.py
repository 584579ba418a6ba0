"""The database failing under a call: an admission retried on a fresh connection (and never made
twice), 503 gateway_unavailable when it stays down, and a call whose reservation the sweeper took
while it was still running (its process thought lost) recorded exactly once."""

import datetime as dt
import threading
import time
from decimal import Decimal

import openai
import psycopg
import pytest
from django.db import OperationalError
from django.utils import timezone

from proxy import accounting
from quota import ledger
from quota.ledger import loop as aio
from quota.ledger import reservations_sweep
from quota.models import CallRecord, Reservation
from quota.services import usage_reconcile

from .conftest import assert_settled_once, chat_call, counter_of, record_of


def test_an_admission_that_committed_before_its_connection_failed_is_not_made_twice(world, monkeypatch, thread_steps):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "doubt-1")  # warm: the next admission runs on the loop
    original = aio.admit

    async def commits_then_fails(**kwargs):
        await original(**kwargs)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(aio, "admit", commits_then_fails)
    thread_steps.clear()
    chat_call(world, allocation, "doubt-2")
    assert thread_steps == ["admit_on_thread"]  # which found the reservation and did not admit again
    assert assert_settled_once(allocation, "doubt-2").outcome == "success"


def test_a_preflight_whose_connection_is_lost_is_retried_once_on_a_new_connection(world, monkeypatch, thread_steps):
    allocation = world.allocation(cost=Decimal("5"))
    original, failures = ledger.admit, []

    def fails_once(**kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("terminating connection due to administrator command")
        return original(**kwargs)

    monkeypatch.setattr(ledger, "admit", fails_once)
    chat_call(world, allocation, "retry-1")
    assert thread_steps == ["key_scope", "admit_on_thread", "admit_again"]  # after the door's lookup (proxy.gate)
    assert assert_settled_once(allocation, "retry-1").outcome == "success"


def test_a_database_still_down_after_the_retry_answers_503_gateway_unavailable(world, monkeypatch):
    allocation = world.allocation(cost=Decimal("5"))

    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(ledger, "admit", down)
    with pytest.raises(openai.InternalServerError) as refused:
        chat_call(world, allocation, "down-1")
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "gateway_unavailable"
    assert refused.value.body["type"] == "api_error"
    assert int(refused.value.response.headers["Retry-After"]) > 0
    assert not CallRecord.objects.filter(request_id="down-1").exists()
    assert not Reservation.objects.exists()


def test_a_call_swept_while_still_running_is_recorded_once_as_worker_lost_at_its_estimate(world):
    allocation = world.allocation("fake-slow", cost=Decimal("5"))  # the upstream answers after 0.6 s
    answers = []
    caller = threading.Thread(target=lambda: answers.append(chat_call(world, allocation, "late-1")))
    caller.start()
    deadline = time.monotonic() + 10
    while (held := Reservation.objects.filter(request_id="late-1").first()) is None:
        assert time.monotonic() < deadline, "the call was never admitted"
        time.sleep(0.01)
    # The sweeper runs as if the call's lease had run out: its process is taken for dead.
    assert reservations_sweep(now=timezone.now() + dt.timedelta(seconds=3600)) == 1
    caller.join(10)
    assert answers and answers[0].usage.total_tokens == 18  # the client still gets its answer
    time.sleep(0.3)  # the call's own (late) settlement has run by now
    record = record_of("late-1")
    assert CallRecord.objects.filter(request_id="late-1").count() == 1
    assert (record.outcome, record.error_code, record.estimated) == ("gateway_error", "worker_lost", True)
    assert record.input_tokens + record.output_tokens == held.tokens
    assert record.output_tokens == 1024  # the reserved output: the request set no max_tokens
    assert record.cost_usd == held.cost
    counter = counter_of(allocation)
    assert (counter.tokens_reserved, counter.cost_reserved, counter.calls) == (0, 0, 1)
    assert usage_reconcile() == []


def test_a_database_error_anywhere_else_on_v1_is_503_in_the_envelope_not_a_500(world, monkeypatch):
    allocation = world.allocation()

    def down(**kwargs):
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(accounting, "models_for", down)
    with pytest.raises(openai.InternalServerError) as refused:
        world.client(allocation.plaintext).models.list()
    assert (refused.value.status_code, refused.value.body["code"]) == (503, "gateway_unavailable")
    assert refused.value.response.headers["Retry-After"]
