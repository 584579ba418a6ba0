"""A usage total over only unpriced calls is null beside its unpriced count in the admin and member
APIs (and an empty CSV cell), never "0.000000000"; a group with a priced call sums the priced ones."""

import csv
import io
from decimal import Decimal

import pytest
from django.utils import timezone

from portal.selectors import period_current, usage_grouped
from quota.models import CallRecord
from quota.selectors import usage_cost
from tests.factories import AllocationFactory, CatalogModelFactory, roll_up_records

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]


def record(allocation, request_id: str, *, cost=None, tokens=10, outcome="success"):
    CallRecord.objects.create(
        request_id=request_id, allocation=allocation, member=allocation.member, model=allocation.model,
        endpoint="chat.completions", started_at=timezone.now(), outcome=outcome, input_tokens=tokens,
        cost_usd=cost, priced=cost is not None,
    )  # fmt: skip


@pytest.fixture
def groups(member):
    unpriced = AllocationFactory(member=member, model=CatalogModelFactory(slug="sim/unpriced"))
    priced = AllocationFactory(member=member, model=CatalogModelFactory(slug="sim/priced"))
    record(unpriced, "u1")
    record(unpriced, "u2")
    record(unpriced, "u3", tokens=0, outcome="rejected_paused")
    record(priced, "p1", cost=Decimal("0.25"))
    record(priced, "p2")
    roll_up_records()
    return unpriced, priced


def test_the_admin_usage_report_says_null_for_a_group_of_unpriced_calls(api, groups):
    rows = {r["model"]: r for r in api.get("usage", {"group_by": "model"}).json()["results"]}
    assert (rows["sim/unpriced"]["cost_usd"], rows["sim/unpriced"]["unpriced_calls"]) == (None, 2)
    assert (rows["sim/priced"]["cost_usd"], rows["sim/priced"]["unpriced_calls"]) == ("0.250000000", 1)
    text = api.get("usage", {"group_by": "model", "format": "csv"}).content.decode()
    cells = {r["model"]: r["cost_usd"] for r in csv.DictReader(io.StringIO(text))}
    assert cells == {"sim/unpriced": "", "sim/priced": "0.250000000"}


def test_the_member_usage_says_null_for_a_group_of_unpriced_calls(member, groups):
    rows = usage_grouped(member=member, period=period_current(timezone.now()), group_by="model")
    assert {r["model"]: (r["cost_usd"], r["unpriced_calls"]) for r in rows} == {
        "sim/unpriced": (None, 2),
        "sim/priced": ("0.250000000", 1),
    }


def test_a_group_without_usage_costs_zero_and_one_without_a_priced_call_costs_null():
    assert usage_cost(priced_cost=None, unpriced_calls=0) == 0
    assert usage_cost(priced_cost=None, unpriced_calls=3) is None
    assert usage_cost(priced_cost=Decimal("0.1"), unpriced_calls=3) == Decimal("0.1")
