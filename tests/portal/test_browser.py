"""The portal in a real Chromium (Debian's package) driven by Playwright, against a live server.

No browser is ever downloaded: Playwright launches /usr/bin/chromium. Every request outside the
live server is recorded and must not happen, so the pages work offline (no CDN).
Set PORTAL_SCREENSHOTS_DIR to keep the dashboard screenshots (docs/screenshots in the repo).
"""

import os
import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import PASSWORD, dollar_price, settle_call

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="Debian's chromium is not installed at /usr/bin/chromium (`make browser` installs it)",
    ),
    pytest.mark.xdist_group("portal-browser"),
]


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
def page(live_server, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM work of the fixtures is done.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    allowed = urlparse(live_server.url).netloc
    foreign: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})

        def guard(route):
            if urlparse(route.request.url).netloc == allowed or route.request.url.startswith("data:"):
                route.continue_()
            else:
                foreign.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.base_url = live_server.url
        yield page
        context.close()
        browser.close()
    assert foreign == [], f"pages fetched outside the server: {foreign}"


def _log_in(page):
    page.goto(page.base_url + "/accounts/login/")
    page.get_by_label("Username").fill("MEI")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/portal/$"))


def _screenshot(page, name):
    target = os.environ.get("PORTAL_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name), full_page=True)


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
    _screenshot(page, "dashboard-en.png")


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
    _screenshot(page, "dashboard-zh-hant.png")
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
    _screenshot(page, "usage-en.png")
