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
