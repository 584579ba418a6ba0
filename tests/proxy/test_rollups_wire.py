"""The daily rollups equal the call records they sum after real calls through the gateway: plain
calls, a stream, a stream the upstream cuts, one the client leaves, an upstream fault, an unpriced
call and refusals (with and without an allocation)."""

import datetime as dt
from decimal import Decimal

import httpx
import openai
import pytest
from django.db.models import Sum
from django.utils import timezone

from allocations.services import allocation_pause
from quota.models import CallRecord, DailyRollup
from quota.rollups import hourly_drift, record_hours, rollup_drift

from .conftest import CHAT_MESSAGES, chat_call, record_of


def _stream(world, allocation, rid: str, *, leave_after_first_chunk: bool = False) -> None:
    body = {"model": allocation.model.slug, "messages": CHAT_MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": rid}
    try:
        with httpx.stream(
            "POST", f"{world.gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=10
        ) as response:
            for _ in response.iter_raw():
                if leave_after_first_chunk:
                    break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        pass


def test_rollups_equal_the_records_after_calls_streams_cuts_faults_and_refusals(world):
    ok = world.allocation(cost=Decimal("5"))
    cut = world.allocation("fake-drop-3")
    slow = world.allocation("fake-trickle")
    failing = world.allocation("fake-error-500")
    free = world.allocation("free-model", priced=False)
    paused = world.allocation()
    for n in range(3):
        chat_call(world, ok, f"ok-{n}")
    _stream(world, ok, "ok-stream")
    _stream(world, cut, "cut-stream")
    _stream(world, slow, "left-stream", leave_after_first_chunk=True)
    with pytest.raises(openai.APIStatusError):
        chat_call(world, failing, "fault")
    chat_call(world, free, "unpriced")
    allocation_pause(allocation=paused)
    with pytest.raises(openai.PermissionDeniedError):
        chat_call(world, paused, "paused")
    stranger = openai.OpenAI(base_url=world.gateway_url + "/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(
            model=ok.model.slug, messages=CHAT_MESSAGES, extra_headers={"X-Request-Id": "stranger"}
        )
    rids = ["ok-0", "ok-1", "ok-2", "ok-stream", "cut-stream", "left-stream", "fault", "unpriced", "paused"]
    outcomes = {rid: record_of(rid).outcome for rid in rids}
    assert outcomes["cut-stream"] == "upstream_error" and outcomes["left-stream"] == "client_cancelled"
    assert (outcomes["paused"], outcomes["unpriced"]) == ("rejected_paused", "success")

    today = timezone.now().date()
    assert rollup_drift(first_day=today - dt.timedelta(days=1), last_day=today + dt.timedelta(days=1)) == {}
    hours = record_hours()
    assert hours is not None and hourly_drift(start=hours[0], end=hours[1]) == {}
    assert DailyRollup.objects.aggregate(n=Sum("calls"))["n"] == CallRecord.objects.count() >= len(rids)
    ok_row = DailyRollup.objects.get(allocation=ok, outcome="success")
    ok_records = CallRecord.objects.filter(allocation=ok)
    assert (ok_row.calls, ok_row.input_tokens + ok_row.output_tokens, ok_row.cost_usd) == (
        4,
        sum(r.input_tokens + r.output_tokens for r in ok_records),
        sum(r.cost_usd for r in ok_records),
    )
    unpriced_row = DailyRollup.objects.get(allocation=free)
    assert (unpriced_row.unpriced_calls, unpriced_row.priced_calls, unpriced_row.cost_usd) == (1, 0, 0)
    estimated = CallRecord.objects.get(request_id="cut-stream")
    cut_row = DailyRollup.objects.get(allocation=cut)
    assert (cut_row.outcome, cut_row.output_tokens, cut_row.cost_usd) == (
        "upstream_error",
        estimated.output_tokens,
        estimated.cost_usd,
    )
