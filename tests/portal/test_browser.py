"""The portal in a real Chromium against a live server (tests/browser.py has the browser).

Set PORTAL_SCREENSHOTS_DIR to keep the screenshots (docs/screenshots in the repo).
"""

import re
from decimal import Decimal

import pytest
from django.utils import timezone

from quota.periods import period_bounds
from tests.browser import needs_chromium, screenshot
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import PASSWORD, dollar_price, settle_call

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]


@pytest.fixture
def world(transactional_db):
    member = MemberFactory(username="mei")
    model = CatalogModelFactory(slug="openai/gpt-4o-mini", display_name="GPT-4o mini")
    dollar_price(model)
    allocation = AllocationFactory(
        member=member, model=model, display_name="GPT-4o mini", quota_cost_usd_per_month=Decimal("10")
    )
    settle_call(allocation, cost_usd="8.5")  # 85 % of the cap: near-cap warning
    other = AllocationFactory(
        member=member,
        model=CatalogModelFactory(slug="openai/text-embedding-3-small", kind="embedding"),
        display_name="Embeddings",
        quota_tokens_per_month=5_000_000,
    )
    settle_call(other, input_tokens=1_200_000)
    make_key(member=member, allocations=[allocation, other], name="laptop")
    return member, allocation


@pytest.fixture
def capped(world):
    """A third allocation whose cap was overrun by calls in flight: $2.30 of $2 (115 %)."""
    member, _ = world
    model = CatalogModelFactory(slug="openai/gpt-4.1-with-a-rather-long-model-name", display_name="GPT-4.1")
    dollar_price(model)
    allocation = AllocationFactory(
        member=member, model=model, display_name="GPT-4.1", quota_cost_usd_per_month=Decimal("2")
    )
    settle_call(allocation, cost_usd="2.3")
    make_key(member=member, allocations=[allocation], name="a key with a long name for the phone layout")
    return allocation


def _log_in(page):
    page.goto(page.base_url + "/accounts/login/")
    page.get_by_label("Username").fill("MEI")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/portal/$"))


def test_a_member_logs_in_and_sees_spend_against_the_cap_with_a_warning(world, page):
    _, allocation = world
    _log_in(page)
    card = page.locator(f'article[data-allocation="{allocation.pk}"]')
    card.wait_for()
    assert card.get_by_role("heading", name="This month's spend").is_visible()
    figures = card.locator(".meter-figures").first.inner_text()
    assert "$8.50" in figures and "$10.00" in figures and "85" in figures
    warning = card.locator(".near-cap-warning")
    assert warning.is_visible()
    assert "Near the cap:" in warning.inner_text()
    assert card.locator("progress").first.get_attribute("value") == "85"
    assert "openai/gpt-4o-mini" in card.inner_text()
    screenshot(page, "dashboard-en.png")


def test_the_skip_link_is_the_first_stop_for_the_keyboard(world, page):
    _log_in(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"


def test_a_member_creates_a_key_and_sees_it_exactly_once(world, page):
    _log_in(page)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Key name").fill("browser key")
    page.get_by_label("GPT-4o mini (openai/gpt-4o-mini)").check()
    page.get_by_role("button", name="Create key").click()
    field = page.locator("#key-plaintext-value")
    field.wait_for()
    plaintext = field.input_value()
    assert re.fullmatch(r"sk-gw-[A-Za-z0-9_-]{43}", plaintext)
    assert page.get_by_text("Copy it now: it is shown only once.").is_visible()
    page.get_by_role("button", name="Copy key").click()
    page.goto(page.base_url + "/portal/keys/")
    assert plaintext not in page.content()
    assert plaintext[:12] in page.content()


def test_switching_to_zh_hant_shows_ben_yue_hua_fei(world, page):
    _log_in(page)
    # The switcher is a plain form: choose, then press the button (no surprise submit on arrow keys).
    page.get_by_label("Language").select_option("zh-hant")
    page.get_by_role("button", name="Switch").click()
    page.wait_for_selector("text=本月花費")
    assert page.locator("html").get_attribute("lang") == "zh-hant"
    assert page.get_by_role("heading", name="本月花費").first.is_visible()
    assert "接近上限" in page.locator(".near-cap-warning").first.inner_text()
    screenshot(page, "dashboard-zh-hant.png")
    page.get_by_label("語言").select_option("en")
    page.get_by_role("button", name="切換").click()
    page.wait_for_selector("text=This month's spend")


def test_the_usage_page_draws_the_daily_spend_chart(world, page):
    _log_in(page)
    page.get_by_role("link", name="Usage").click()
    page.wait_for_selector('#daily-spend-chart[data-chart-ready="true"]')
    data = page.evaluate("window.portalDailyChart.data.datasets[0].data")
    labels = page.evaluate("window.portalDailyChart.data.labels")
    assert len(data) == len(labels) >= 28
    assert sum(data) == pytest.approx(8.5)
    box = page.locator("#daily-spend-chart").bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    assert page.get_by_role("heading", name="Spend by model").is_visible()
    assert "$8.50" in page.locator(".calls-table").inner_text()
    screenshot(page, "usage-en.png")


PORTAL_PAGES = ["/portal/", "/portal/keys/", "/portal/usage/", "/portal/how-to-call/", "/accounts/password_change/"]
SIDEWAYS = """() => {
  const width = document.documentElement.clientWidth, found = [];
  const hidden = (el) => {  // clipped away for screen readers only (visually-hidden, a stacked table's head)
    for (let at = el; at; at = at.parentElement) {
      if (getComputedStyle(at).clip.startsWith("rect") || at.classList.contains("skip-link")) { return true; }
    }
    return false;
  };
  if (document.documentElement.scrollWidth > width) { found.push("page " + document.documentElement.scrollWidth); }
  for (const el of document.querySelectorAll("body *")) {
    if (el.tagName === "OPTION" || hidden(el)) { continue; }
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    const name = el.tagName + "." + el.className + " " + (el.textContent || "").trim().slice(0, 30);
    const scrolls = ["auto", "scroll"].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1;
    if (scrolls) { found.push("scrolls: " + name); }
    if (box.width > 0 && box.right > width + 1) { found.push("past the edge " + Math.round(box.right) + ": " + name); }
  }
  return found.slice(0, 8);
}"""


def _log_in_with(page, *, width, language):
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    _log_in(page)
    page.context.add_cookies([{"name": "django_language", "value": language, "url": page.base_url}])
    page.reload()


@pytest.mark.parametrize("language", ["en", "zh-hant"])
@pytest.mark.parametrize("width", [1280, 390, 360])
def test_no_portal_page_scrolls_sideways(world, capped, page, width, language):
    _log_in_with(page, width=width, language=language)
    for path in PORTAL_PAGES:
        page.goto(page.base_url + path)
        assert page.locator("html").get_attribute("lang") == language
        assert page.evaluate(SIDEWAYS) == [], f"{path} at {width} px in {language}"
    page.goto(page.base_url + "/portal/usage/")
    page.locator("details.chart-table summary").click()  # the opened table too
    assert page.evaluate(SIDEWAYS) == []


@pytest.mark.parametrize("language", ["en", "zh-hant"])
def test_on_a_phone_the_header_is_short_and_dates_stay_on_a_line_or_two(world, capped, page, language):
    _log_in_with(page, width=390, language=language)
    header = page.locator(".site-header").bounding_box()
    assert header["height"] < 844 / 3
    page.goto(page.base_url + "/portal/keys/")
    rows = page.locator("table.keys-table tr[data-key]")
    assert rows.count() == 2
    row = rows.first.bounding_box()
    assert row["width"] <= 390  # a stacked row, not a 951 px wide table
    for cell in page.locator("td.when").all():
        line = float(cell.evaluate("el => parseFloat(getComputedStyle(el).lineHeight)"))
        assert cell.bounding_box()["height"] <= 2.5 * line, cell.inner_text()
    revoke = page.get_by_role("button", name="Revoke" if language == "en" else "撤銷").first.bounding_box()
    assert revoke["x"] + revoke["width"] <= 390


CAP_WORDS = {
    "en": {"badge": "Cap reached", "over": "over the cap", "resets": "resets on", "forecast": "you reach the cap on"},
    "zh-hant": {"badge": "已達上限", "over": "超出上限", "resets": "重設", "forecast": "達到上限"},
}


@pytest.mark.parametrize("language", ["en", "zh-hant"])
@pytest.mark.parametrize("width", [1280, 390])
def test_a_capped_allocation_says_so_and_a_near_one_forecasts_the_day(world, capped, page, width, language):
    _, near = world
    words = CAP_WORDS[language]
    _log_in_with(page, width=width, language=language)
    card = page.locator(f'article[data-allocation="{capped.pk}"]')
    badge = card.locator(".badge")
    assert badge.inner_text() == words["badge"]
    assert "badge-cap-reached" in badge.get_attribute("class")
    assert card.locator(".meter-percent").first.inner_text().replace(" ", "") == "(115%)"
    assert card.locator("progress").first.get_attribute("value") == "100"
    over = card.locator(".cap-over").inner_text()
    assert "$0.30" in over and words["over"] in over
    warning = card.locator(".near-cap-warning").inner_text()
    resets_on = period_bounds(timezone.now())[1].date()
    assert words["resets"] in warning and str(resets_on.day) in warning
    near_card = page.locator(f'article[data-allocation="{near.pk}"]')
    assert near_card.locator(".badge").inner_text() != words["badge"]
    assert "$1.50" in near_card.locator(".cap-left").inner_text()
    forecast = near_card.locator(".forecast").inner_text()
    assert "$" in forecast and (words["forecast"] in forecast or words["resets"] in forecast)
    if width == 390:
        screenshot(page, f"phone-dashboard-{language}.png")


def test_the_usage_page_draws_spend_so_far_against_the_cap_and_spend_by_model(world, capped, page):
    _, near = world
    _log_in(page)
    page.goto(page.base_url + f"/portal/usage/?allocation={near.pk}")
    page.wait_for_selector('#daily-spend-chart[data-chart-ready="true"]')
    datasets = page.evaluate("window.portalDailyChart.data.datasets.map(d => [d.type, d.data])")
    (_, daily), (_, cumulative), (_, cap) = datasets
    assert sum(daily) == pytest.approx(8.5)
    drawn = [v for v in cumulative if v is not None]  # the running total stops today
    assert drawn[-1] == pytest.approx(8.5) and drawn == sorted(drawn) and len(drawn) == timezone.localdate().day
    scales = "Object.values(window.portalDailyChart.options.scales)"
    titles = page.evaluate(scales + ".filter(s => s.title.display).map(s => s.title.text)")
    assert titles == ["Per day (USD)", "So far this month (USD)"]
    assert set(cap) == {10}
    page.goto(page.base_url + "/portal/usage/")
    page.wait_for_selector('#by-model-chart[data-chart-ready="true"]')
    models = page.evaluate("window.portalByModelChart.data.labels")  # long slugs keep their end
    models = [capped.model.slug if m == "…" + capped.model.slug[-25:] else m for m in models]
    spend = page.evaluate("window.portalByModelChart.data.datasets[0].data")
    assert dict(zip(models, spend, strict=True))[capped.model.slug] == pytest.approx(2.3)
    assert page.evaluate("window.portalDailyChart.data.datasets.length") == 2  # one model uncapped: no cap line
    page.goto(page.base_url + "/portal/usage/?period=2020-01")  # a month without calls: no chart at all
    assert page.locator("#daily-spend-empty").is_visible() and page.locator("#daily-spend-chart").count() == 0
