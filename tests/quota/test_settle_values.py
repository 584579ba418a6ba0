"""A settlement's record values (quota.ledger.statements.settle_values): the call's record with the
settlement's fields over it, field by field as the rule states them, in the same order; the record
it was given is left as it was."""

import datetime as dt
from decimal import Decimal

import pytest

from quota.billing.bill import bill
from quota.ledger.statements import settle_values
from quota.models import PriceVersion
from quota.pricing import Usage

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, 250000, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(seconds=3)
PRICE = PriceVersion(
    pk=7,
    input_per_1m=Decimal("2.5"),
    cached_input_per_1m=Decimal("1.25"),
    output_per_1m=Decimal("10"),
    service_tier_multipliers={"priority": "2"},
    tool_call_prices={"web_search": "0.01"},
)
USAGES = (
    Usage(input_tokens=812, output_tokens=311, cached_tokens=12, reasoning_tokens=5),
    Usage(audio_input_tokens=40, audio_output_tokens=30, estimated=True),
    Usage(input_tokens=10, output_tokens=5, service_tier="priority", tool_calls=(("web_search", 2),)),
    Usage(quantity=Decimal(3), unit="minute"),
    Usage(),
)


def _record(**extra) -> dict:
    return {
        "request_id": "req-1",
        "endpoint": "chat",
        "started_at": EARLIER,
        "is_stream": False,
        "member_id": "m-1",
        "allocation_id": "a-1",
        "attempts": 1,
        "outcome": "success",
        "status_code": 200,
        **extra,
    }


def _by_the_rule(record, usage, price, now, groups):
    billed = bill(price=price, usage=usage)
    cost = billed.cost
    expected = dict(record)
    expected.update(
        group_ids=list(groups),
        finished_at=record.get("finished_at") or now,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        audio_input_tokens=usage.audio_input_tokens,
        audio_output_tokens=usage.audio_output_tokens,
        quantity=usage.quantity,
        unit=usage.unit,
        estimated=usage.estimated,
        service_tier=billed.tier[:16],
        tool_calls=dict(usage.tool_calls),
        cost_usd=cost,
        priced=cost is not None,
        price_version=price if cost is not None else None,
    )
    return expected, cost


@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize("price", [PRICE, None], ids=["priced", "unpriced"])
@pytest.mark.parametrize("groups", [(), ("g-1", "g-2")], ids=["no-groups", "groups"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"finished_at": None}, {"finished_at": NOW + dt.timedelta(seconds=1)}, {"close_reason": "normal"}],
    ids=["plain", "finished-none", "finished-given", "close-reason"],
)
@pytest.mark.parametrize("given", [False, True], ids=["priced-here", "bill-given"])
def test_the_values_are_the_rules_field_by_field_in_the_same_order(usage, price, groups, extra, given):
    record = _record(**extra)
    before = dict(record)
    billed = bill(price=price, usage=usage) if given else None
    values, cost = settle_values(record=record, usage=usage, price=price, now=NOW, groups=groups, billed=billed)
    expected, expected_cost = _by_the_rule(record, usage, price, NOW, groups)
    assert values == expected
    assert list(values) == list(expected)  # the record's keys, then the settlement's
    assert [type(v) for v in values.values()] == [type(v) for v in expected.values()]
    assert cost == expected_cost == values["cost_usd"]
    assert record == before and list(record) == list(before)  # the caller's record is not changed
    assert values is not record
    assert values["group_ids"] == list(groups) and values["group_ids"] is not groups


def test_each_settlement_has_its_own_mutable_fields():
    record = _record()
    first, _ = settle_values(record=record, usage=USAGES[0], price=PRICE, now=NOW)
    second, _ = settle_values(record=record, usage=USAGES[0], price=PRICE, now=NOW)
    first["tool_calls"]["x"] = 1
    first["group_ids"].append("g")
    assert (second["tool_calls"], second["group_ids"]) == ({}, [])
    assert "group_ids" not in record
