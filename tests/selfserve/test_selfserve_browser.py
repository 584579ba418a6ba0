"""The catalogue, device approval and invitation pages in a real Chromium, at desktop and phone
widths, in English and Traditional Chinese (tests/browser.py has the browser)."""

import re

import httpx
import pytest

from allocations import invitations
from allocations.models import ApiKey
from tests.browser import needs_chromium, orm, screenshot
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import PASSWORD, dollar_price
from tests.portal.test_browser import SIDEWAYS

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]
SIZES = [pytest.param(1280, id="1280"), pytest.param(390, id="390")]
LANGUAGES = ["en", "zh-hant"]
GOOD = "violet-harbour-lantern-42"


@pytest.fixture
def world(transactional_db):
    member = MemberFactory(username="mei")
    offered = CatalogModelFactory(slug="openai/gpt-4o-mini", display_name="GPT-4o mini", self_service=True)
    dollar_price(offered)
    held = AllocationFactory(member=member, model=CatalogModelFactory(slug="openai/text-embedding-3-small"))
    return member, offered, held


def open_as(page, *, width, language, username="mei"):
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    page.context.add_cookies([{"name": "django_language", "value": language, "url": page.base_url}])
    page.goto(page.base_url + "/accounts/login/")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form.stacked-form button[type=submit], form button[type=submit]").last.click()
    page.wait_for_url(re.compile(r".*/portal/$"))


def fits(page, width):
    assert page.evaluate(SIDEWAYS) == [], f"{page.url} scrolls sideways at {width} px"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", SIZES)
def test_claim_from_the_catalogue_shows_the_key_once(world, page, width, language):
    _, offered, _ = world
    open_as(page, width=width, language=language)
    page.goto(page.base_url + "/portal/catalogue/")
    assert page.locator("html").get_attribute("lang") == language
    row = page.locator(f'tr[data-model="{offered.slug}"]')
    fits(page, width)
    row.locator(".claim-button").click()
    page.wait_for_url(re.compile(r".*/portal/catalogue/$"))
    plaintext = page.locator("#claimed-key-value").input_value()
    assert plaintext.startswith("sk-gw-")
    assert orm(lambda: ApiKey.objects.filter(key_hash=ApiKey.hash(plaintext)).exists())
    assert offered.slug in page.locator("#claimed-snippet").inner_text()
    fits(page, width)
    screenshot(page, f"catalogue-{language}-{width}.png")
    page.reload()
    assert page.locator("#claimed-key-value").count() == 0  # shown once


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", SIZES)
def test_device_approval_in_the_portal(world, page, width, language):
    _, _, held = world
    started = httpx.post(page.base_url + "/oauth/device/code", data={"label": "laptop"}).json()
    open_as(page, width=width, language=language)
    page.goto(started["verification_uri_complete"])
    assert page.locator("#device-user-code").inner_text() == started["user_code"]
    fits(page, width)
    screenshot(page, f"device-{language}-{width}.png")
    page.locator("#device-approve").click()
    page.wait_for_url(re.compile(r".*/portal/device/$"))
    assert page.locator(".message-success").count() == 1
    token = httpx.post(
        page.base_url + "/oauth/device/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": started["device_code"]},
    )
    assert token.status_code == 200 and token.json()["access_token"].startswith("sk-gw-")
    assert token.json()["model"] == held.model.slug


@pytest.fixture
def issued(transactional_db):
    invited = MemberFactory(username="newcomer", password=None)
    return invitations.invitation_issue(member=invited, url_for=lambda token: token)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", SIZES)
def test_invitation_accept_sets_the_password_and_signs_in(issued, page, width, language):
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    page.context.add_cookies([{"name": "django_language", "value": language, "url": page.base_url}])
    page.goto(f"{page.base_url}/accounts/invitation/{issued.token}/")
    fits(page, width)
    page.locator("input[name=new_password1]").fill("short")
    page.locator("input[name=new_password2]").fill("short")
    page.locator("#invitation-submit").click()
    assert page.locator(".field-error").count() >= 1  # the policy, in the page's language
    page.locator("input[name=new_password1]").fill(GOOD)
    page.locator("input[name=new_password2]").fill(GOOD)
    page.locator("#invitation-submit").click()
    page.wait_for_url(re.compile(r".*/portal/$"))
    screenshot(page, f"invitation-{language}-{width}.png")
    page.goto(f"{page.base_url}/accounts/invitation/{issued.token}/")
    assert page.locator("h1").inner_text() in ("Invitation not valid", "邀請無效")
