"""A /v1 call is priced once when it settles (proxy.accounting.settle makes its bill): its record,
its counters and its call line carry that one bill's cost, at the price its admission chose (the
version in force at the call's start), on every path its settlement takes."""

import asyncio
from decimal import Decimal

import psycopg
import pytest

from proxy import accounting
from quota.ledger import loop as aio
from quota.services import price_version_add
from tests.pricings import assert_priced_once, watch_pricings

from .conftest import assert_settled_once, chat_call, counter_of, record_of
from .test_cost_options import RESPONSES_TOKENS, optioned, respond

CHAT_COST = Decimal("0.0000235")  # the fake upstream's chat usage at $1 / $0.50 cached / $2 per 1M


@pytest.fixture
def priced(monkeypatch):
    """(price, usage, cost) of each pricing (quota.pricing.cost_for through quota.billing's bill)
    made after a call's admission, and the cost of each call line (ops.observe.call_finished)."""
    seen = watch_pricings(monkeypatch)
    opened = accounting.open_call

    async def admitted(call, **kwargs):
        answer = await opened(call, **kwargs)
        seen["pricings"].clear()  # the admission's estimate is priced before
        return answer

    monkeypatch.setattr(accounting, "open_call", admitted)
    return seen


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_warm_call_on_the_loop_is_priced_once(world, priced, stream):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "warm-0")  # the first call of a key fills the caches
    priced["lines"].clear()
    client = world.client(allocation.plaintext)
    answer = client.chat.completions.create(
        model=allocation.model.slug,
        messages=[{"role": "user", "content": "hi"}],
        stream=stream,
        extra_headers={"X-Request-Id": "warm-1"},
    )
    if stream:
        list(answer)
    record = assert_settled_once(allocation, "warm-1")
    assert_priced_once(priced, record, CHAT_COST)
    assert counter_of(allocation).cost_used == 2 * CHAT_COST


def test_a_call_billed_from_its_requests_facts_is_priced_once_at_its_tier_and_tool_calls(world, priced):
    allocation = optioned(world, upstream_name="fake-calls-2")
    tools = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]
    respond(world, allocation, "tools-1", stream=False, tools=tools, service_tier="priority")
    record = record_of("tools-1")
    cost = RESPONSES_TOKENS * 2 + 2 * Decimal("0.01") + 2 * Decimal("0.03")
    assert (record.service_tier, record.tool_calls) == ("priority", {"web_search": 2, "code_interpreter": 2})
    assert_priced_once(priced, record, cost)
    assert priced["pricings"][0][1].tool_calls == (("code_interpreter", 2), ("web_search", 2))


def test_an_unpriced_call_is_recorded_without_a_cost_and_priced_once(world, priced):
    allocation = world.allocation(priced=False)
    chat_call(world, allocation, "free-1")
    record = record_of("free-1")
    assert (record.outcome, record.cost_usd, record.priced, record.price_version) == ("success", None, False, None)
    assert_priced_once(priced, record, None)


@pytest.mark.parametrize("committed", [False, True], ids=["not-committed", "committed"])
def test_a_settlement_taken_to_the_thread_path_keeps_the_one_bill(world, priced, monkeypatch, thread_steps, committed):
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "thread-0")
    priced["lines"].clear()
    original = aio.settle
    bills = []

    async def failing(**kwargs):
        bills.append(kwargs["billed"])  # the bill made by proxy.accounting.settle
        if committed:
            await original(**kwargs)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(aio, "settle", failing)
    thread_steps.clear()
    chat_call(world, allocation, "thread-1")
    assert thread_steps == ["call_settle_once"]
    assert [b.cost for b in bills] == [CHAT_COST]
    record = assert_settled_once(allocation, "thread-1")
    assert_priced_once(priced, record, CHAT_COST)


def test_a_price_added_during_a_call_bills_the_next_call_not_this_one(world, priced, monkeypatch):
    """The price billed is the version in force at the call's start, chosen at its admission: a
    version that takes effect while the call is upstream is the next call's."""
    allocation = world.allocation(cost=Decimal("5"))
    chat_call(world, allocation, "price-0")
    before = allocation.model.prices.get()
    opened = accounting.open_call  # the fixture's: the pricings are counted from here

    async def admitted_then_repriced(call, **kwargs):
        answer = await opened(call, **kwargs)
        await asyncio.to_thread(
            price_version_add, model=allocation.model, input_per_1m="10.00", cached_input_per_1m="5.00",
            output_per_1m="20.00",
        )  # fmt: skip
        return answer

    monkeypatch.setattr(accounting, "open_call", admitted_then_repriced)
    priced["lines"].clear()
    chat_call(world, allocation, "price-1")
    record = record_of("price-1")
    assert record.price_version == before
    assert_priced_once(priced, record, CHAT_COST)

    monkeypatch.setattr(accounting, "open_call", opened)
    priced["lines"].clear()
    chat_call(world, allocation, "price-2")
    after = record_of("price-2")
    assert after.price_version != before and after.price_version.model_id == allocation.model_id
    assert_priced_once(priced, after, CHAT_COST * 10)
    assert counter_of(allocation).cost_used == 2 * CHAT_COST + CHAT_COST * 10
