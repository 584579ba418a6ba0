"""A settlement given its call's bill (quota.billing.bill, made by the caller) writes what it writes
when it prices the call itself, on the thread and spool paths too; a bill of another usage or price
is not taken."""

import dataclasses
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from quota import ledger
from quota.billing.bill import bill
from quota.ledger.spool import call_settle_durable, spool_depth, spool_replay
from quota.ledger.statements import settle_values
from quota.models import CallRecord, UsageCounter
from quota.pricing import Usage, cost_for
from tests.factories import AllocationFactory, PriceVersionFactory

from .conftest import admit, record_of_call
from .test_spool import _database_down, _database_up, empty_spool  # noqa: F401 - a fixture

USAGES = (
    Usage(input_tokens=1000, output_tokens=500, cached_tokens=200),
    Usage(input_tokens=10, output_tokens=5, service_tier="priority", tool_calls=(("web_search", 2),)),
    Usage(),
)


def _price(model):
    return PriceVersionFactory(
        model=model,
        cached_input_per_1m=Decimal("0.50"),
        service_tier_multipliers={"priority": "2"},
        tool_call_prices={"web_search": "0.01"},
    )


@pytest.mark.django_db
@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize("priced", [True, False], ids=["priced", "unpriced"])
def test_settle_values_with_the_calls_bill_are_those_it_makes_itself(usage, priced):
    allocation = AllocationFactory()
    price = _price(allocation.model) if priced else None
    record, now = record_of_call(allocation), timezone.now()
    own = settle_values(record=record, usage=usage, price=price, now=now, groups=("g",))
    billed = bill(price=price, usage=usage)
    given = settle_values(record=record, usage=usage, price=price, now=now, groups=("g",), billed=billed)
    assert given == own
    assert own[1] == own[0]["cost_usd"] == cost_for(price, usage)
    assert own[0]["priced"] is (own[1] is not None)
    assert own[0]["price_version"] == (price if own[1] is not None else None)


@pytest.mark.django_db
def test_a_bill_of_another_usage_or_price_is_not_taken():
    allocation = AllocationFactory()
    price, other = _price(allocation.model), _price(allocation.model)
    usage = USAGES[0]
    record, now = record_of_call(allocation), timezone.now()
    expected = settle_values(record=record, usage=usage, price=price, now=now)
    for wrong in (
        bill(price=price, usage=dataclasses.replace(usage, output_tokens=1)),  # an equal usage is not enough either
        bill(price=price, usage=dataclasses.replace(usage)),
        bill(price=other, usage=usage),
        bill(price=None, usage=usage),
    ):
        assert settle_values(record=record, usage=usage, price=price, now=now, billed=wrong) == expected
        assert expected[1] == cost_for(price, usage)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("reserved", [True, False], ids=["reservation", "none"])
def test_the_thread_path_with_the_calls_bill_records_its_cost(reserved):
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("10"))
    price = _price(allocation.model)
    usage = USAGES[1]
    admission = admit(allocation) if reserved else None
    billed = bill(price=price, usage=usage)
    row = ledger.settle(admission=admission, record=record_of_call(allocation), usage=usage, price=price, billed=billed)
    record = CallRecord.objects.get(pk=row.pk)
    assert (record.cost_usd, record.priced, record.price_version_id, record.service_tier) == (
        cost_for(price, usage), True, price.pk, "priority"
    )  # fmt: skip
    assert record.cost_usd == Decimal("0.00004") + Decimal("0.02")  # 10 in at $1, 5 out at $2, 2x; two searches
    counter = UsageCounter.objects.get(allocation=allocation)
    assert (counter.cost_used, counter.cost_reserved, counter.tokens_used) == (record.cost_usd, 0, 15)


@pytest.mark.django_db(transaction=True)
def test_a_spooled_settlement_given_its_bill_is_replayed_at_the_same_cost(empty_spool):  # noqa: F811
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("10"))
    price = _price(allocation.model)
    usage = USAGES[0]
    admission = admit(allocation)
    saved = _database_down()
    try:
        written = call_settle_durable(
            admission=admission, record=record_of_call(allocation, "spooled"), usage=usage, price=price,
            billed=bill(price=price, usage=usage),
        )  # fmt: skip
    finally:
        _database_up(saved)
    assert written is None and spool_depth() == 1
    assert spool_replay() == 1
    record = CallRecord.objects.get(request_id="spooled")
    assert (record.cost_usd, record.price_version_id) == (cost_for(price, usage), price.pk)
    assert record.cost_usd == Decimal("0.0019")  # 800 in at $1, 200 cached at $0.50, 500 out at $2
    assert UsageCounter.objects.get(allocation=allocation).cost_used == record.cost_usd
    assert connection.is_usable()
