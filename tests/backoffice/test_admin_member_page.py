"""The staff member page marks allocations over and near their caps, as the lists do."""

from decimal import Decimal

import pytest

from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import dollar_price, settle_call


@pytest.fixture
def mei(db):
    member = MemberFactory(username="mei")
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    dollar_price(model)
    near = AllocationFactory(member=member, model=model, display_name="near", quota_cost_usd_per_month=Decimal("10"))
    over = AllocationFactory(member=member, model=model, display_name="over", quota_cost_usd_per_month=Decimal("2"))
    settle_call(near, cost_usd="8")
    settle_call(over, cost_usd="2.4")
    return member, near, over


def test_the_member_page_highlights_near_and_over_rows_and_says_blocked(admin_client, mei):
    member, near, over = mei
    html = admin_client.get(f"/admin/members/{member.pk}/").content.decode()
    assert f'data-allocation="{near.pk}" class="row-near"' in html
    assert f'data-allocation="{over.pk}" class="row-over"' in html
    assert "$8.00 / $10.00 (80 %) <span>near cap</span>" in html
    assert "$2.40 / $2.00 (120 %) <strong>over cap</strong>" in html
    assert html.count("blocked: over cap") == 1


def test_the_member_page_shows_each_live_keys_spend_this_month(admin_client, mei):
    import datetime as dt

    from django.utils import timezone

    from quota.periods import period_bounds
    from tests.factories import make_key

    member, near, over = mei
    key, _ = make_key(member=member, allocations=[near], name="laptop")
    idle, _ = make_key(member=member, allocations=[over], name="idle")
    settle_call(near, cost_usd="8", api_key=key)
    # Last month's spend of the key is not this month's.
    settle_call(near, cost_usd="5", api_key=key, when=period_bounds(timezone.now())[0] - dt.timedelta(hours=1))
    html = admin_client.get(f"/admin/members/{member.pk}/").content.decode()
    rows = {name: html.split(f">{name}</a>", 1)[1].split("</tr>", 1)[0] for name in ("laptop", "idle")}
    assert '<td class="num">$8.00</td>' in rows["laptop"] and '<td class="num">$0.00</td>' in rows["idle"]
