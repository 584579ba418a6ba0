"""The spend overview in a real Chromium: its figures are the call records', "raise cap" audits."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone, translation

from allocations.models import AuditEvent
from portal.templatetags.portal_tags import usd
from quota.models import CallRecord
from quota.periods import period_bounds
from tests.browser import needs_chromium, orm, screenshot
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import PASSWORD, dollar_price, reject_call, settle_call

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]


@pytest.fixture
def spend(transactional_db):
    MemberFactory(username="boss", is_staff=True, is_superuser=True)
    start, _ = period_bounds(timezone.now())
    mini, big = CatalogModelFactory(slug="openai/gpt-4o-mini"), CatalogModelFactory(slug="anthropic/claude-sonnet")
    dollar_price(mini), dollar_price(big)
    near = AllocationFactory(member=MemberFactory(username="mei"), model=mini, quota_cost_usd_per_month=Decimal("10"))
    over = AllocationFactory(member=MemberFactory(username="ken"), model=big, quota_cost_usd_per_month=Decimal("2"))
    for allocation, cost in [(near, "4.25"), (near, "4.0115"), (over, "2.3")]:
        settle_call(allocation, cost_usd=cost, when=start + (timezone.now() - start) / 2)
    reject_call(over, outcome="rejected_cost_quota_exceeded")
    return near, over


def _log_in(page):
    page.goto(page.base_url + "/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("boss")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/admin/$"))


def test_the_overview_figures_equal_the_call_records_and_raise_cap_audits(spend, page):
    _, over = spend
    _log_in(page)
    page.get_by_role("link", name="Spend overview").first.click()
    page.wait_for_selector('#overview-daily-chart[data-chart-ready="true"]')
    start, end = period_bounds(timezone.now())
    priced = CallRecord.objects.in_period(start, end).filter(priced=True)
    records = orm(lambda: priced.aggregate(t=Sum("cost_usd"))["t"])
    assert records == Decimal("10.5615")
    with translation.override("en"):  # the page's language, whatever an earlier test left active
        assert page.locator("#spend-this-month").inner_text() == usd(records)
    charted = page.evaluate("window.overviewDailyChart.data.datasets.filter(d => d.type === 'bar')"
                            ".flatMap(d => d.data).reduce((a, b) => a + b, 0)")  # fmt: skip
    assert charted == pytest.approx(float(records))
    cumulative = page.evaluate("window.overviewDailyChart.data.datasets.find(d => d.type === 'line').data")
    drawn = [v for v in cumulative if v is not None]  # up to today
    assert drawn[-1] == pytest.approx(float(records)) and len(drawn) == timezone.localdate().day
    assert "cost cap reached" in page.locator("#refusals").inner_text()
    screenshot(page, "admin-overview.png")
    row = page.locator(f'#near-cap tr[data-allocation="{over.pk}"]')
    assert "over the cap" in row.inner_text()
    row.get_by_label("New cap (USD)").fill("7.5")
    row.get_by_role("button", name="Raise cap").click()
    page.wait_for_selector("text=raised to $7.5")
    event = orm(
        lambda: AuditEvent.objects.select_related("actor").get(
            action="allocation_cost_quota_updated", target_id=str(over.pk)
        )
    )
    assert (event.before, event.after) == (
        {"quota_cost_usd_per_month": "2.000000000"},
        {"quota_cost_usd_per_month": "7.500000000"},
    )
    assert event.actor.username == "boss"
    page.get_by_role("link", name="mei").first.click()
    page.wait_for_selector("#member-allocations")
    assert "$8.26 / $10.00 (83 %)" in page.locator("#member-allocations").inner_text()
    screenshot(page, "admin-member.png")
    assert timezone.now() - event.created_at < dt.timedelta(minutes=1)
