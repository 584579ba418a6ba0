import time

import pytest

from allocations.models import AuditEvent
from portal.sign_in_audit import SIGNED_IN_AT
from tests.factories import MemberFactory

PASSWORD = "pw-for-tests-1"


def _sign_in(client, username):
    return client.post("/accounts/login/", {"username": username, "password": PASSWORD}, REMOTE_ADDR="10.1.2.3")


def test_password_sign_in_and_failure_and_sign_out_are_audited_with_method_and_address(client, member):
    client.post("/accounts/login/", {"username": "Alice", "password": "wrong"})
    _sign_in(client, "alice")
    client.post("/accounts/logout/")

    events = list(AuditEvent.objects.order_by("id").values_list("action", "target_id", "after", "source_ip"))
    assert events[0] == ("login_failed", "alice", {"method": "password"}, "127.0.0.1")
    assert events[1] == ("login_succeeded", str(member.pk), {"method": "password"}, "10.1.2.3")
    assert events[2][:2] == ("logged_out", str(member.pk))


@pytest.mark.parametrize(
    ("mode", "staff_in", "member_in"), [("all", True, True), ("staff", True, False), ("off", False, False)]
)
def test_the_password_login_switch(client, settings, db, mode, staff_in, member_in):
    settings.GATEWAY_PASSWORD_LOGIN = mode
    MemberFactory(username="boss", is_staff=True)
    MemberFactory(username="mei")
    assert (_sign_in(client, "boss").status_code == 302) is staff_in
    client.logout()
    response = _sign_in(client, "mei")
    assert (response.status_code == 302) is member_in
    if not member_in:
        assert "use single sign-on" in response.content.decode()


def test_sso_pages_are_404_when_no_issuer_is_configured(client, db, settings):
    settings.GATEWAY_OIDC_ISSUER = ""
    assert client.get("/accounts/sso/login/").status_code == 404
    assert client.get("/accounts/sso/callback/?code=x&state=y").status_code == 404
    assert "Sign in with" not in client.get("/accounts/login/").content.decode()


def test_both_login_pages_offer_the_sso_button_when_configured(client, db, settings):
    settings.GATEWAY_OIDC_ISSUER = "http://127.0.0.1:9"
    settings.GATEWAY_OIDC_LABEL = "Sign in with Contoso"
    assert "Sign in with Contoso" in client.get("/accounts/login/").content.decode()
    assert "Sign in with Contoso" in client.get("/admin/login/").content.decode()


def test_a_session_ends_a_fixed_time_after_sign_in_even_when_active(client, member, settings):
    settings.GATEWAY_SESSION_MAX_AGE_H = 1
    _sign_in(client, "alice")
    assert client.get("/portal/").status_code == 200
    session = client.session
    session[SIGNED_IN_AT] = time.time() - 3601
    session.save()
    assert client.get("/portal/").status_code == 302


def test_the_idle_timeout_is_the_session_cookie_age_renewed_on_each_request(settings):
    assert settings.SESSION_COOKIE_AGE == 2 * 3600 and settings.SESSION_SAVE_EVERY_REQUEST


@pytest.mark.parametrize(
    ("groups", "staff"), [("gateway-admins", True), (["gateway-admins"], True), (7, False), ({}, False)]
)
def test_a_groups_claim_of_any_shape_promotes_only_a_listed_group(db, settings, groups, staff):
    from portal.sso import GatewayOIDCBackend

    settings.GATEWAY_OIDC_STAFF_GROUPS = ["gateway-admins"]
    member = MemberFactory(username="mei", email="mei@example.org")
    assert GatewayOIDCBackend().update_user(member, {"email": "mei@example.org", "groups": groups}).is_staff is staff
