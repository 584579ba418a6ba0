"""Single sign-on in a real Chromium through a real OpenID Connect provider on loopback."""

import json
import os
import re

import pytest

from allocations import services
from allocations.models import AuditEvent, Member
from tests.browser import CHROMIUM
from tests.factories import MemberFactory

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
    pytest.mark.xdist_group("portal-browser"),
]


@pytest.fixture
def browser_page(transactional_db, oidc_provider, chromium):
    context = chromium.new_context(locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _sign_in_through_the_provider(page, base_url, login, *, start="/accounts/login/"):
    page.goto(base_url + start)
    _at_the_provider(page, login)


def _at_the_provider(page, login):
    page.get_by_role("link", name="Sign in with Example").click()
    page.wait_for_url(re.compile(r".*/interaction/.*"))
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("anything")
    page.locator('button[type="submit"]').click()
    consent = page.locator('button[type="submit"]', has_text=re.compile("Continue", re.I))
    if consent.count():
        consent.click()


def test_a_member_of_an_allowed_domain_signs_in_and_is_created(browser_page, live_server):
    _sign_in_through_the_provider(browser_page, live_server.url, "Mei.Lin@Example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))

    member = Member.objects.get(username="mei.lin@example.org")
    assert member.email == "mei.lin@example.org" and not member.is_staff
    created = AuditEvent.objects.get(action="member_created", target_id=str(member.pk))
    assert created.actor_label == "sso"
    signed_in = AuditEvent.objects.get(action="login_succeeded", target_id=str(member.pk))
    assert signed_in.after == {"method": "sso"} and signed_in.source_ip == "127.0.0.1"


def test_a_foreign_domain_is_refused_with_a_clear_page(browser_page, live_server):
    _sign_in_through_the_provider(browser_page, live_server.url, "eve@elsewhere.com")
    browser_page.wait_for_url(re.compile(r".*/accounts/sso/refused/$"))

    assert "Accounts of elsewhere.com cannot sign in here" in browser_page.locator("[role=alert]").inner_text()
    assert not Member.objects.filter(email="eve@elsewhere.com").exists()
    failed = AuditEvent.objects.get(action="login_failed")
    assert failed.after["method"] == "sso" and failed.target_id == "eve@elsewhere.com"
    browser_page.goto(live_server.url + "/portal/")
    assert "/accounts/login/" in browser_page.url


def test_an_existing_member_is_matched_by_verified_email_only(browser_page, live_server):
    existing = MemberFactory(username="kai", email="kai@example.org")
    _sign_in_through_the_provider(browser_page, live_server.url, "unverified:kai@example.org")
    browser_page.wait_for_url(re.compile(r".*/accounts/sso/refused/$"))
    assert "not verified" in browser_page.locator("[role=alert]").inner_text()

    browser_page.context.clear_cookies()  # sign out of the provider too, to sign in as another account
    _sign_in_through_the_provider(browser_page, live_server.url, "kai@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    assert Member.objects.filter(email="kai@example.org").count() == 1
    assert AuditEvent.objects.filter(action="login_succeeded", target_id=str(existing.pk)).exists()


def test_a_disabled_member_cannot_get_in_through_sso(browser_page, live_server):
    MemberFactory(username="gone", email="gone@example.org", is_active=False)
    _sign_in_through_the_provider(browser_page, live_server.url, "gone@example.org")
    browser_page.wait_for_url(re.compile(r".*/accounts/sso/refused/$"))
    assert "disabled" in browser_page.locator("[role=alert]").inner_text()


def test_the_staff_group_claim_makes_a_member_staff_from_the_admin_login(browser_page, live_server):
    _sign_in_through_the_provider(browser_page, live_server.url, "staff:boss@example.org", start="/admin/login/")
    browser_page.wait_for_url(re.compile(r".*/admin/$"))
    boss = Member.objects.get(email="boss@example.org")
    assert boss.is_staff
    promoted = AuditEvent.objects.get(action="member_roles_updated", target_id=str(boss.pk))
    assert promoted.actor_label == "sso" and promoted.after["is_staff"] is True


def test_an_admin_account_is_not_linked_by_email_until_a_superuser_links_it(browser_page, live_server):
    root = MemberFactory(username="root", email="root@example.org", is_staff=True, is_superuser=True)
    _sign_in_through_the_provider(browser_page, live_server.url, "root@example.org")
    browser_page.wait_for_url(re.compile(r".*/accounts/sso/refused/$"))
    assert "admin rights" in browser_page.locator("[role=alert]").inner_text()
    refused = AuditEvent.objects.get(action="login_failed")
    assert refused.after["sso_subject"] == "root@example.org"  # what the superuser enters in admin
    assert not AuditEvent.objects.filter(action="login_succeeded").exists()

    services.member_link_sso(member=root, subject=refused.after["sso_subject"], actor=root)
    browser_page.context.clear_cookies()
    _sign_in_through_the_provider(browser_page, live_server.url, "root@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    assert AuditEvent.objects.filter(action="login_succeeded", target_id=str(root.pk)).exists()


def test_an_identity_is_matched_by_its_subject_and_a_second_one_with_the_same_email_is_refused(
    browser_page, live_server
):
    _sign_in_through_the_provider(browser_page, live_server.url, "kai@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    kai = Member.objects.get(username="kai@example.org")
    assert kai.sso_subject == "kai@example.org"
    Member.objects.filter(pk=kai.pk).update(email="kai.renamed@example.org")

    browser_page.context.clear_cookies()
    _sign_in_through_the_provider(browser_page, live_server.url, "twin:kai.renamed@example.org")
    browser_page.wait_for_url(re.compile(r".*/accounts/sso/refused/$"))
    assert "linked to another identity" in browser_page.locator("[role=alert]").inner_text()

    browser_page.context.clear_cookies()
    _sign_in_through_the_provider(browser_page, live_server.url, "kai@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    assert Member.objects.count() == 1
    assert AuditEvent.objects.filter(action="login_succeeded", target_id=str(kai.pk)).count() == 2


def test_the_staff_flag_follows_the_group_claim_both_ways_at_every_sign_in(browser_page, live_server, idp_groups_file):
    MemberFactory(username="root", is_staff=True, is_superuser=True)  # so boss is not the last admin
    _sign_in_through_the_provider(browser_page, live_server.url, "staff:boss@example.org", start="/admin/login/")
    browser_page.wait_for_url(re.compile(r".*/admin/$"))
    boss = Member.objects.get(email="boss@example.org")
    assert boss.is_staff

    idp_groups_file.write_text(json.dumps({"staff:boss@example.org": ["everyone"]}))  # left the group
    browser_page.context.clear_cookies()
    _sign_in_through_the_provider(browser_page, live_server.url, "staff:boss@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    boss.refresh_from_db()
    assert not boss.is_staff
    changes = AuditEvent.objects.filter(action="member_roles_updated", target_id=str(boss.pk)).order_by("id")
    assert [(e.actor_label, e.after["is_staff"]) for e in changes] == [("sso", True), ("sso", False)]
    browser_page.goto(live_server.url + "/admin/")
    assert "/admin/login/" in browser_page.url


def test_a_staff_member_links_their_own_account_after_signing_in_with_the_password(browser_page, live_server):
    lee = MemberFactory(username="lee", email="lee@example.org", is_staff=True)
    browser_page.goto(live_server.url + "/accounts/login/")
    browser_page.get_by_label("Username").fill("lee")
    browser_page.get_by_label("Password").fill("pw-for-tests-1")
    browser_page.get_by_role("button", name="Sign in").click()
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    browser_page.goto(live_server.url + "/accounts/sso/link/")
    browser_page.get_by_role("button", name="Confirm").click()
    _at_the_provider(browser_page, "lee-at-the-idp@example.org")
    browser_page.wait_for_url(re.compile(r".*/portal/$"))
    lee.refresh_from_db()
    assert lee.sso_subject == "lee-at-the-idp@example.org"
    assert AuditEvent.objects.get(action="member_sso_linked").actor_label == "lee"

    browser_page.context.clear_cookies()
    _sign_in_through_the_provider(browser_page, live_server.url, "lee-at-the-idp@example.org", start="/admin/login/")
    browser_page.wait_for_url(re.compile(r".*/admin/$"))
    assert AuditEvent.objects.filter(action="login_succeeded", target_id=str(lee.pk), after__method="sso").exists()
