"""The Content-Security-Policy of the portal and admin in a real Chromium: every page is served
with it, and no page breaks it (no inline script or style, nothing from elsewhere)."""

import re

import pytest

from portal.middleware import CONTENT_SECURITY_POLICY
from tests.browser import needs_chromium
from tests.factories import CatalogModelFactory, MemberFactory, ProviderFactory
from tests.portal.conftest import PASSWORD
from tests.portal.test_browser import world  # noqa: F401 (fixture: a member with allocations, calls and a key)

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]

PORTAL_PAGES = ["/portal/", "/portal/keys/", "/portal/usage/", "/portal/alerts/", "/portal/how-to-call/"]
ADMIN_PAGES = [
    "/admin/",
    "/admin/overview/",
    "/admin/members/new/",
    "/admin/allocations/member/",
    "/admin/allocations/provider/",
    "/admin/allocations/catalogmodel/",
    "/admin/allocations/auditevent/",
    "/admin/allocations/allocation/",
    "/admin/quota/callrecord/",
    "/admin/password_change/",
]


@pytest.fixture
def violations(page):
    """What the browser reports about the policy: console errors and securitypolicyviolation events."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"{page.url}: {m.text}") if "Content Security Policy" in m.text else None)
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
    )
    return seen


def _sign_in(page, start, username, button):
    page.goto(page.base_url + start)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=button).click()


def _visit(page, path):
    response = page.goto(page.base_url + path)
    assert response.status == 200, path
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
    page.wait_for_load_state("networkidle")


def test_no_portal_page_breaks_the_content_security_policy(world, page, violations):  # noqa: F811
    _sign_in(page, "/accounts/login/", "mei", "Sign in")
    page.wait_for_url(re.compile(r".*/portal/$"))
    for path in PORTAL_PAGES:
        _visit(page, path)
        if path == "/portal/usage/":
            page.wait_for_selector("canvas")  # the chart is drawn under the policy
    assert violations == [], "\n".join(v[:160] for v in violations)


def test_no_admin_page_breaks_the_content_security_policy(world, page, violations):  # noqa: F811
    boss = MemberFactory(username="boss", is_staff=True, is_superuser=True)
    CatalogModelFactory(slug="openai/gpt-4.1", provider=ProviderFactory(kind="openai", base_url="https://x.test"))
    member, _ = world
    _sign_in(page, "/admin/login/?next=/admin/", "boss", "Log in")
    page.wait_for_url(re.compile(r".*/admin/$"))
    for path in [*ADMIN_PAGES, f"/admin/allocations/member/{boss.pk}/change/", f"/admin/members/{member.pk}/"]:
        _visit(page, path)
    assert violations == [], "\n".join(v[:160] for v in violations)


def test_the_api_docs_page_runs_swagger_ui_under_its_policy(page, violations, transactional_db):
    MemberFactory(username="boss", is_staff=True, is_superuser=True)
    _sign_in(page, "/admin/login/?next=/admin/", "boss", "Log in")
    page.wait_for_url(re.compile(r".*/admin/$"))
    response = page.goto(page.base_url + "/api/schema/docs/")
    assert "script-src 'self';" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock")  # Swagger UI started and drew the operations
    assert violations == [], "\n".join(v[:160] for v in violations)
