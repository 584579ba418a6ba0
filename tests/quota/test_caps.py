"""The cap rule and the near-cap rule are defined once (quota.billing.caps): the SQL guard agrees
with the Python check, and changing the near-cap ratio in one place moves every surface."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from allocations.models import Allocation
from backoffice.admin.usage import UsageFilter
from backoffice.api.selectors import allocations_with_usage
from notifications.services import Kind, cap_level, member_alerts_scan
from portal.cards import allocation_cards
from quota.billing import caps
from quota.models import UsageCounter
from quota.overview import near_cap_counters
from quota.periods import period_start_date
from realtime.services import _cap_reason
from tests.factories import AllocationFactory

money = st.decimals(min_value=0, max_value=100, places=2)
tokens = st.integers(min_value=0, max_value=200)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None)
@given(
    used=st.tuples(tokens, tokens, money, money),
    token_cap=st.none() | tokens,
    cost_cap=st.none() | money,
    priced=st.booleans(),
)
def test_the_sql_guard_admits_exactly_what_the_python_check_admits(used, token_cap, cost_cap, priced):
    tokens_used, tokens_reserved, cost_used, cost_reserved = used
    sql, params = caps.guard_sql(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    with connection.cursor() as cursor:
        head = "SELECT count(*) FROM (VALUES (%s::bigint, %s::bigint, %s::numeric, %s::numeric)) AS c"
        query = f"{head}(tokens_used, tokens_reserved, cost_used, cost_reserved) WHERE TRUE{sql}"  # noqa: S608
        cursor.execute(query, [tokens_used, tokens_reserved, cost_used, cost_reserved, *params])
        admitted_sql = cursor.fetchone()[0] == 1
    hit = caps.caps_hit(tokens_used=tokens_used, tokens_reserved=tokens_reserved, token_cap=token_cap,
                        cost_used=cost_used, cost_reserved=cost_reserved, cost_cap=cost_cap, priced=priced)  # fmt: skip
    assert admitted_sql is (hit is None)


def test_a_cap_of_zero_blocks_at_once_and_an_unpriced_call_passes_a_cost_cap_above_it():
    assert caps.caps_hit(tokens_used=0, token_cap=0, cost_used=0, cost_cap=None, priced=True) == caps.TOKENS
    assert caps.caps_hit(tokens_used=0, token_cap=None, cost_used=0, cost_cap=Decimal(0), priced=False) == caps.COST
    assert caps.caps_hit(tokens_used=0, token_cap=None, cost_used=9, cost_cap=Decimal(5), priced=False) is None


def surfaces(allocation: Allocation, counter: UsageCounter) -> dict[str, bool]:
    """Whether each surface shows the allocation as near its cap."""
    request = RequestFactory().get("/", {"usage": "near"})
    admin_filter = UsageFilter(request, {"usage": ["near"]}, Allocation, None)
    return {
        "portal card": allocation_cards(member=allocation.member)[0].near_cap,
        "admin api": allocations_with_usage([allocation])[0].near_cap,
        "admin filter": admin_filter.queryset(request, Allocation.objects.all()).filter(pk=allocation.pk).exists(),
        "overview": [c.pk for c in near_cap_counters(period_start=counter.period_start)] == [counter.pk],
        "alert level": getattr(cap_level(counter=counter, allocation=allocation), "kind", None) == Kind.NEAR_CAP,
    }


@pytest.mark.django_db
def test_changing_the_near_cap_ratio_in_one_place_moves_every_surface(settings, member):
    member.email = "m@example.org"
    member.save(update_fields=["email"])
    allocation = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("10"))
    now = timezone.now()
    counter = UsageCounter.objects.create(allocation=allocation, period_start=period_start_date(now),
                                          cost_used=Decimal("6"))  # fmt: skip
    settings.GATEWAY_NEAR_CAP_RATIO = Decimal("0.8")
    assert not any(surfaces(allocation, counter).values()), surfaces(allocation, counter)
    assert member_alerts_scan(now=now) == []
    settings.GATEWAY_NEAR_CAP_RATIO = Decimal("0.5")
    assert all(surfaces(allocation, counter).values()), surfaces(allocation, counter)
    assert [n.kind for n in member_alerts_scan(now=now + dt.timedelta(seconds=1))] == [Kind.NEAR_CAP]


@pytest.mark.django_db
def test_the_realtime_watch_follows_the_cap_rule(member):
    allocation = AllocationFactory(member=member, quota_tokens_per_month=0)
    assert _cap_reason(counter=None, allocation=allocation, priced=True) is not None  # a cap of 0, no counter yet
    allocation.quota_tokens_per_month = 100
    counter = UsageCounter(tokens_used=60, tokens_reserved=40, cost_used=0, cost_reserved=0)
    assert _cap_reason(counter=counter, allocation=allocation, priced=True) is not None
    counter.tokens_reserved = 39
    assert _cap_reason(counter=counter, allocation=allocation, priced=True) is None
