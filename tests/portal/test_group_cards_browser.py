"""The portal's group cards (SPEC 10) in a real Chromium at 1280 and 390 px, in English and
zh-Hant: each capped group of the member with its spend against the budget, its bar and the
near-cap or budget-reached warning; nothing runs past the viewport."""

from decimal import Decimal

import pytest
from django.utils import timezone

from allocations.models import Group
from quota.models import GroupUsageCounter
from quota.periods import period_start_date
from tests.browser import needs_chromium, orm, screenshot
from tests.portal.test_browser import SIDEWAYS, _log_in_with, world  # noqa: F401 (the fixture)

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]

WORDS = {
    "en": {"title": "Your groups' budgets", "reached": "Budget reached", "near": "Near the budget"},
    "zh-hant": {"title": "您所屬群組的預算", "reached": "預算已用完", "near": "接近預算"},
}


@pytest.fixture
def groups(world):  # noqa: F811 (the fixture imported above)
    member, _ = world

    def arrange():
        period = period_start_date(timezone.now())
        near = Group.objects.create(
            name="Research and development with a long name", slug="rnd", quota_cost_usd_per_month=Decimal("10")
        )
        spent = Group.objects.create(name="Ops", slug="ops", quota_tokens_per_month=1000)
        loose = Group.objects.create(name="Everyone", slug="everyone")  # no budget: no card
        for g in (near, spent, loose):
            g.members.add(member)
        GroupUsageCounter.objects.create(group=near, period_start=period, cost_used=Decimal("8.75"))
        GroupUsageCounter.objects.create(group=spent, period_start=period, tokens_used=1200)
        return near, spent

    return orm(arrange)


@pytest.mark.parametrize("language", ["en", "zh-hant"])
@pytest.mark.parametrize("width", [1280, 390])
def test_the_dashboard_shows_a_card_per_capped_group_with_spend_bar_and_warning(groups, page, width, language):
    near, spent = groups
    words = WORDS[language]
    _log_in_with(page, width=width, language=language)
    section = page.locator("section.group-budgets")
    assert section.locator("h2").inner_text() == words["title"]
    cards = section.locator("article.group-card")
    assert cards.count() == 2  # the group without a budget has none
    near_card = page.locator('article[data-group="rnd"]')
    assert "$8.75" in near_card.locator(".meter-figures").inner_text()
    assert "$10.00" in near_card.locator(".meter-figures").inner_text()
    assert near_card.locator("progress").get_attribute("value") == "87"
    assert "meter-near" in near_card.locator("progress").get_attribute("class")
    assert words["near"] in near_card.locator(".near-cap-warning").inner_text()
    spent_card = page.locator('article[data-group="ops"]')
    assert spent_card.locator(".badge").inner_text() == words["reached"]
    assert spent_card.locator(".meter-percent").inner_text().replace(" ", "") == "(120%)"
    assert spent_card.locator("progress").get_attribute("value") == "100"
    assert page.evaluate(SIDEWAYS) == [], f"at {width} px in {language}"
    box = near_card.bounding_box()
    assert box["x"] + box["width"] <= width
    screenshot(page, f"portal-group-cards-{width}-{language}.png")
