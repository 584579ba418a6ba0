"""A call's bill, built by one function from the request's facts and the usage reported (or, for the
admission, estimated), priced at the price in force.

The relays extract facts and compute no money: the tier a request asked for, the built-in tools it
declared, whether it asked for chat web search (`RequestFacts`); the meters read what the answer
reported (`Usage`). `bill` adds what the request makes billable (the requested tier, as the
fallback when the answer reports none the price knows; each tool-call item billed to the declared
tool that makes it; chat web search as one search per answered request) and prices the result
with quota.pricing. The admission reserves `bill(..., estimate=True)` of the estimated usage: the
requested tier's multiplier and one call per declared built-in tool.
"""

import dataclasses
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from allocations.cost_options import TOOL_CALL_ITEMS

from ..pricing import Usage, billed_tier, cost_for

if TYPE_CHECKING:
    from ..models import PriceVersion

# The tool an answer's call item is billed to when the request declared none of that item's tools.
ITEM_TOOLS = {item: tool for tool, item in reversed(TOOL_CALL_ITEMS.items())}
WEB_SEARCH = "web_search"


@dataclasses.dataclass(frozen=True)
class RequestFacts:
    """What a request adds to its bill, as the relay read it."""

    requested_tier: str = ""  # a tier that costs more than default, else ""
    declared_tools: tuple[str, ...] = ()  # the built-in tools declared, in the request's order
    web_search: bool = False  # chat `web_search_options`: one search per answered request

    @property
    def empty(self) -> bool:
        return not (self.requested_tier or self.declared_tools or self.web_search)


NO_FACTS = RequestFacts()


class Bill(NamedTuple):  # a tuple: built on every call's admission and settlement
    usage: Usage  # what is recorded: the usage with the request's tier and tool calls
    cost: Decimal | None  # None: unpriced
    tier: str  # the service tier the cost was computed at ("" when none)
    price: "PriceVersion | None"  # the price it was computed at (None: unpriced)

    @property
    def priced(self) -> bool:
        return self.cost is not None


def _tool_calls(facts: RequestFacts, usage: Usage, *, estimate: bool) -> tuple[tuple[str, int], ...]:
    calls: Counter = Counter()
    if estimate:
        calls.update(dict.fromkeys(facts.declared_tools, 1))
    else:
        for item, count in usage.tool_calls:
            tool = next((t for t in facts.declared_tools if TOOL_CALL_ITEMS[t] == item), None)
            calls[tool or ITEM_TOOLS.get(item, item)] += count
    if facts.web_search and (estimate or usage.has_tokens):
        calls[WEB_SEARCH] = max(calls[WEB_SEARCH], 1) if estimate else calls[WEB_SEARCH] + 1
    return tuple(sorted(calls.items()))


def billed_usage(*, facts: RequestFacts, usage: Usage, estimate: bool = False) -> Usage:
    """`usage` with what the request adds to its bill (see the module's docstring)."""
    if (facts is NO_FACTS or facts.empty) and (estimate or not usage.tool_calls):
        return usage
    return dataclasses.replace(
        usage, requested_tier=facts.requested_tier, tool_calls=_tool_calls(facts, usage, estimate=estimate)
    )


def bill(*, price: "PriceVersion | None", usage: Usage, facts: RequestFacts = NO_FACTS, estimate: bool = False) -> Bill:
    """The bill of a call (or, with `estimate`, of its admission) at `price` (None: unpriced)."""
    if facts is not NO_FACTS:
        usage = billed_usage(facts=facts, usage=usage, estimate=estimate)
    tier = billed_tier(price, usage) if usage.service_tier or usage.requested_tier else ""
    return Bill(usage, cost_for(price, usage), tier, price)
