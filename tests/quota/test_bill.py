"""quota.billing.bill: one function bills a call from the request's facts and the usage reported,
and the admission from the same facts and the estimated usage."""

from decimal import Decimal

from quota.billing.bill import RequestFacts, bill
from quota.pricing import Usage
from tests.factories import PriceVersionFactory

PRICE = PriceVersionFactory.build(
    input_per_1m=Decimal(1), output_per_1m=Decimal(2), service_tier_multipliers={"priority": "2"},
    tool_call_prices={"web_search": "0.01", "web_search_preview": "0.025", "file_search": "0.0025"},
)  # fmt: skip
TOKENS = Usage(input_tokens=1_000, output_tokens=500)  # $0.002 at 1x


def test_the_answer_is_billed_its_tool_calls_at_the_declared_tools_and_the_asked_tier():
    facts = RequestFacts(requested_tier="priority", declared_tools=("web_search_preview", "file_search"))
    usage = Usage(input_tokens=1_000, output_tokens=500, tool_calls=(("file_search_call", 2), ("web_search_call", 1)))
    billed = bill(price=PRICE, usage=usage, facts=facts)
    assert billed.usage.tool_calls == (("file_search", 2), ("web_search_preview", 1))
    assert (billed.tier, billed.cost) == ("priority", Decimal("0.004") + Decimal("0.005") + Decimal("0.025"))


def test_the_admission_reserves_one_call_per_declared_tool_and_the_tiers_multiplier():
    facts = RequestFacts(requested_tier="priority", declared_tools=("web_search", "file_search"))
    estimate = bill(price=PRICE, usage=TOKENS, facts=facts, estimate=True)
    assert estimate.usage.tool_calls == (("file_search", 1), ("web_search", 1))
    assert estimate.cost == Decimal("0.004") + Decimal("0.0125")


def test_chat_web_search_is_one_search_per_answered_request_and_an_unpriced_call_costs_none():
    facts = RequestFacts(web_search=True)
    assert bill(price=PRICE, usage=TOKENS, facts=facts).cost == Decimal("0.012")
    assert bill(price=PRICE, usage=Usage(), facts=facts).usage.tool_calls == ()  # nothing answered
    unpriced = bill(price=None, usage=TOKENS, facts=facts)
    assert (unpriced.cost, unpriced.priced) == (None, False)
