"""A Responses stream cut before its final event is billed the built-in tool calls its
`response.output_item.done` events reported so far, beside the tokens estimated from its deltas."""

import datetime as dt
from decimal import Decimal

import httpx

from allocations.models import ModelKind
from allocations.services import model_create
from quota.models import Reservation
from quota.services import price_version_add

from .conftest import record_of

SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def searching(world, upstream_name: str):
    model = model_create(slug=f"cut/{upstream_name}-{world._n}", provider=world.provider(), upstream_name=upstream_name,
                         kind=ModelKind.CHAT, allowed_options=["web_search"])  # fmt: skip
    price_version_add(model=model, effective_from=SINCE, input_per_1m="1", output_per_1m="2",
                      tool_call_prices={"web_search": "0.01"})  # fmt: skip
    return world.allocation(model=model, priced=False)


def stream(world, allocation, *, until: bytes | None = None) -> bytes:
    body = {"model": allocation.model.slug, "input": "hi", "stream": True, "tools": [{"type": "web_search"}]}
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-cut"}
    seen = b""
    try:
        with httpx.stream("POST", f"{world.gateway_url}/v1/responses", json=body, headers=headers, timeout=10) as r:
            for chunk in r.iter_raw():
                seen += chunk
                if until is not None and until in seen:
                    break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        pass
    return seen


def test_a_stream_cut_by_the_upstream_after_a_web_search_bills_the_search(world):
    allocation = searching(world, "fake-drop-2")  # the search, two text deltas, then the connection cut
    seen = stream(world, allocation)
    assert b"web_search_call" in seen and b"response.completed" not in seen
    record = record_of("req-cut")
    assert (record.outcome, record.estimated, record.tool_calls) == ("upstream_error", True, {"web_search": 1})
    assert record.cost_usd >= Decimal("0.01") and not Reservation.objects.exists()


def test_a_stream_the_client_leaves_after_a_web_search_bills_the_search(world):
    allocation = searching(world, "fake-trickle")
    stream(world, allocation, until=b"response.output_item.done")
    record = record_of("req-cut")
    assert (record.outcome, record.tool_calls) == ("client_cancelled", {"web_search": 1})
    assert record.cost_usd >= Decimal("0.01")


def test_a_finished_stream_bills_its_search_once(world):
    allocation = searching(world, "gpt-4o-mini")
    stream(world, allocation)
    record = record_of("req-cut")
    assert (record.outcome, record.estimated, record.tool_calls) == ("success", False, {"web_search": 1})
