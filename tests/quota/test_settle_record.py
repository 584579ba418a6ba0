"""The record a settlement is given (quota.admission.settle): the call's identity (its plan's, with
the deployment that served it and its attempts), then its outcome's fields, in that order, the
error's message cut to its column's 1,000 characters; a new dict for every settlement, passed to
the ledger on the loop, or with its close reason on the thread for a session."""

import datetime as dt
import uuid
from types import SimpleNamespace

import pytest

from quota import admission, ledger
from quota.admission import Plan
from quota.pricing import Usage

STARTED = dt.datetime(2026, 12, 7, 12, 0, 0, 250000, tzinfo=dt.UTC)


def _admitted(*, lease_s=None):
    plan = Plan(
        request_id="req-7",
        endpoint="chat.completions",
        surface="/v1/chat/completions",
        kinds=frozenset({"chat"}),
        plaintext="",
        model="m",
        started_at=STARTED,
        stream=True,
        lease_s=lease_s,
    )
    entry = SimpleNamespace(allocation_id="a-1", model_id="mo-1", deployment_id="d-1")
    return SimpleNamespace(
        plan=plan, key_id="k-1", member_id="m-1", entry=entry, admission="held", price="price", rate_ticket=None
    )


def _expected(*, deployment, attempts, outcome, status_code, error_code, error_message, ttft_ms):
    return {
        "request_id": "req-7",
        "endpoint": "chat.completions",
        "started_at": STARTED,
        "is_stream": True,
        "api_key_id": "k-1",
        "member_id": "m-1",
        "allocation_id": "a-1",
        "model_id": "mo-1",
        "deployment_id": deployment,
        "attempts": attempts,
        "outcome": outcome,
        "status_code": status_code,
        "error_code": error_code,
        "error_message": error_message,
        "ttft_ms": ttft_ms,
    }


@pytest.fixture
def settled(monkeypatch):
    seen: list[dict] = []

    async def on_the_loop(**kwargs):
        seen.append(kwargs)

    def on_a_thread(**kwargs):
        seen.append(kwargs)

    monkeypatch.setattr(ledger, "settle_async", on_the_loop)
    monkeypatch.setattr(admission, "session_settle", on_a_thread)
    return seen


@pytest.mark.parametrize(
    ("attempts", "error_message", "ttft_ms"),
    [(1, "", None), (0, "x" * 1500, 12), (2, "é" * 999 + "ab", 0)],
)
async def test_a_calls_record_is_its_identity_then_its_outcomes_fields_in_order(
    settled, attempts, error_message, ttft_ms
):
    admitted = _admitted()
    usage = Usage(input_tokens=3)
    await admission.settle(
        admitted,
        outcome="upstream_error",
        status_code=502,
        usage=usage,
        error_code="upstream_error",
        error_message=error_message,
        attempts=attempts,
        ttft_ms=ttft_ms,
        billed="the bill",
    )
    [kwargs] = settled
    expected = _expected(
        deployment="d-1" if attempts else None,
        attempts=attempts,
        outcome="upstream_error",
        status_code=502,
        error_code="upstream_error",
        error_message=error_message[:1000],
        ttft_ms=ttft_ms,
    )
    assert kwargs["record"] == expected and list(kwargs["record"]) == list(expected)
    assert len(kwargs["record"]["error_message"]) == min(len(error_message), 1000)
    assert (kwargs["admission"], kwargs["usage"], kwargs["price"], kwargs["billed"]) == (
        "held",
        usage,
        "price",
        "the bill",
    )


async def test_each_settlement_has_a_record_of_its_own(settled):
    admitted = _admitted()
    for status in (200, 499):
        await admission.settle(admitted, outcome="success", status_code=status, usage=Usage(), attempts=1)
    first, second = (kwargs["record"] for kwargs in settled)
    assert first is not second
    assert (first["status_code"], second["status_code"]) == (200, 499)
    assert admitted.plan.identity("k-1", "m-1", admitted.entry, 1) == {
        k: v for k, v in first.items() if k not in ("outcome", "status_code", "error_code", "error_message", "ttft_ms")
    }


async def test_a_sessions_record_adds_its_close_reason_last(settled, monkeypatch):
    async def run(function, **kwargs):
        return function(**kwargs)

    monkeypatch.setattr(admission.threads, "run", run)
    admitted = _admitted(lease_s=30.0)
    await admission.settle(
        admitted, outcome="success", status_code=1000, usage=Usage(), attempts=1, close_reason="normal", billed="b"
    )
    [kwargs] = settled
    expected = {
        **_expected(
            deployment="d-1",
            attempts=1,
            outcome="success",
            status_code=1000,
            error_code="",
            error_message="",
            ttft_ms=None,
        ),
        "close_reason": "normal",
    }
    assert kwargs["record"] == expected and list(kwargs["record"]) == list(expected)
    assert kwargs["billed"] == "b"
    assert isinstance(admitted.plan.reservation_id, uuid.UUID)
