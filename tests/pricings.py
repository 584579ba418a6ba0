"""Watching a call's pricings: each `quota.pricing.cost_for` made (wherever it was imported) and the
cost each call line (`ops.observe.call_finished`) carries, to show a call or session priced once."""

import sys

from ops import observe
from quota.pricing import cost_for


def watch_pricings(monkeypatch) -> dict[str, list]:
    """{"pricings": [(price, usage, cost), ...], "lines": [cost, ...]}, filled as they are made.
    The test modules keep the real function, for the figures they work out themselves."""
    seen: dict[str, list] = {"pricings": [], "lines": []}

    def counting(price, usage):
        cost = cost_for(price, usage)
        seen["pricings"].append((price, usage, cost))
        return cost

    for module in list(sys.modules.values()):
        if not module.__name__.startswith("tests.") and getattr(module, "cost_for", None) is cost_for:
            monkeypatch.setattr(module, "cost_for", counting)
    line = observe.call_finished

    def call_line(**fields):
        seen["lines"].append(fields["cost"])
        return line(**fields)

    monkeypatch.setattr(observe, "call_finished", call_line)
    return seen


def assert_priced_once(seen: dict[str, list], record, cost) -> None:
    """The settlement priced the call once; its record and its call line carry that cost."""
    assert len(seen["pricings"]) == 1
    price, usage, priced_at = seen["pricings"][0]
    assert (usage.input_tokens, usage.output_tokens) == (record.input_tokens, record.output_tokens)
    assert (price.pk if price is not None else None) == record.price_version_id
    assert priced_at == cost_for(price, usage) == record.cost_usd == cost
    assert record.priced is (cost is not None)
    assert seen["lines"] == [cost]
