"""Which account an SSO identity signs in as: its `sub` once linked; by email only at a first
sign-in and only for an account without admin rights; an admin account is linked by a superuser.
The browser tests (test_sso_browser.py) walk the same rules through a real identity provider."""

import pytest
from django.contrib.sessions.backends.cache import SessionStore
from django.core.exceptions import SuspiciousOperation
from django.test import Client, RequestFactory

from allocations import services
from allocations.exceptions import Forbidden
from allocations.models import AuditEvent, Member
from portal.sso import LINK_KEY, REFUSED_KEY, GatewayOIDCBackend
from tests.factories import MemberFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(settings):
    settings.GATEWAY_OIDC_STAFF_GROUPS = ["gateway-admins"]
    backend = GatewayOIDCBackend()
    backend.request = RequestFactory().get("/accounts/sso/callback/")
    backend.request.session = SessionStore()
    return backend


def _claims(sub, email, groups=()):
    return {"sub": sub, "email": email, "email_verified": True, "groups": list(groups)}


def _sign_in(backend, claims):
    found = backend.filter_users_by_claims(claims)
    return backend.update_user(found[0], claims) if found else backend.create_user(claims)


@pytest.mark.parametrize("roles", [{"is_staff": True}, {"is_staff": True, "is_superuser": True}])
def test_an_admin_account_is_never_linked_by_email(backend, roles):
    admin = MemberFactory(username="lee", email="lee@example.org", **roles)
    with pytest.raises(SuspiciousOperation):
        _sign_in(backend, _claims("idp-lee", "lee@example.org", ["gateway-admins"]))
    assert "admin rights" in backend.request.session[REFUSED_KEY]
    assert Member.objects.get(pk=admin.pk).sso_subject is None


def test_a_plain_member_is_linked_by_email_once_and_then_found_by_subject(backend):
    mei = MemberFactory(username="mei", email="mei@example.org")
    assert _sign_in(backend, _claims("idp-mei", "mei@example.org")) == mei
    assert Member.objects.get(pk=mei.pk).sso_subject == "idp-mei"
    linked = AuditEvent.objects.get(action="member_sso_linked")
    assert linked.actor_label == "sso" and linked.after == {"sso_subject": "idp-mei"}

    assert _sign_in(backend, _claims("idp-mei", "renamed@example.org")) == mei
    with pytest.raises(SuspiciousOperation):
        _sign_in(backend, _claims("idp-impostor", "mei@example.org"))


def test_a_superuser_is_never_changed_by_the_group_claim(backend):
    root = MemberFactory(username="root", is_staff=True, is_superuser=True, sso_subject="idp-root")
    signed_in = _sign_in(backend, _claims("idp-root", root.email, ["everyone"]))
    assert signed_in.is_staff and signed_in.is_superuser
    assert not AuditEvent.objects.filter(action="member_roles_updated").exists()


def test_the_last_admin_keeps_staff_when_the_group_claim_drops_it(backend):
    boss = MemberFactory(username="boss", is_staff=True, sso_subject="idp-boss")
    assert _sign_in(backend, _claims("idp-boss", boss.email, ["everyone"])).is_staff
    MemberFactory(username="root", is_staff=True, is_superuser=True)
    assert not _sign_in(backend, _claims("idp-boss", boss.email, ["everyone"])).is_staff


def test_a_superuser_links_an_admin_account_in_admin_and_it_is_audited(admin_client, staff):
    lee = MemberFactory(username="lee", email="lee@example.org", is_staff=True)
    url = f"/admin/allocations/member/{lee.pk}/change/"
    form = {"email": lee.email, "is_active": "on", "is_staff": "on", "sso_subject": "idp-lee"}
    assert admin_client.post(url, form).status_code == 302
    assert Member.objects.get(pk=lee.pk).sso_subject == "idp-lee"
    event = AuditEvent.objects.get(action="member_sso_linked", target_id=str(lee.pk))
    assert event.actor_label == staff.username and event.before == {"sso_subject": None}


def test_plain_staff_can_neither_link_in_admin_nor_through_the_service(db):
    helper = services.member_create(username="helper", is_staff=True)
    lee = MemberFactory(username="lee", email="lee@example.org", is_staff=True)
    client = Client()
    client.force_login(helper)
    url = f"/admin/allocations/member/{lee.pk}/change/"
    assert b'name="sso_subject"' not in client.get(url).content
    client.post(url, {"email": lee.email, "is_active": "on", "is_staff": "on", "sso_subject": "idp-helper"})
    assert Member.objects.get(pk=lee.pk).sso_subject is None
    with pytest.raises(Forbidden):
        services.member_link_sso(member=lee, subject="idp-helper", actor=helper)


def test_a_link_request_counts_only_for_the_member_signed_in_in_that_session(backend):
    lee = MemberFactory(username="lee", email="lee@example.org", is_staff=True)
    other = MemberFactory(username="kim", email="kim@example.org")
    backend.request.user = other
    backend.request.session[LINK_KEY] = str(lee.pk)  # not the signed-in member
    with pytest.raises(SuspiciousOperation):
        _sign_in(backend, _claims("idp-lee", "lee@example.org"))
    assert Member.objects.get(pk=lee.pk).sso_subject is None

    backend.request.user = lee
    backend.request.session[LINK_KEY] = str(lee.pk)
    assert _sign_in(backend, _claims("idp-lee", "lee@example.org")) == lee
    assert Member.objects.get(pk=lee.pk).sso_subject == "idp-lee"
    assert LINK_KEY not in backend.request.session  # one confirmation, one link


def test_a_member_cannot_link_an_identity_that_is_another_members(backend):
    MemberFactory(username="kim", email="kim@example.org", sso_subject="idp-kim")
    lee = MemberFactory(username="lee", email="lee@example.org", is_staff=True)
    backend.request.user = lee
    backend.request.session[LINK_KEY] = str(lee.pk)
    with pytest.raises(SuspiciousOperation):
        _sign_in(backend, _claims("idp-kim", "kim@example.org"))
    assert Member.objects.get(pk=lee.pk).sso_subject is None


def test_the_link_page_is_for_signed_in_members_and_only_with_sso_configured(client, member, settings):
    settings.GATEWAY_OIDC_ISSUER = "http://127.0.0.1:9"
    assert client.get("/accounts/sso/link/").status_code == 302  # to the sign-in page
    client.force_login(member)
    assert 'type="submit"' in client.get("/accounts/sso/link/").content.decode()
    confirmed = client.post("/accounts/sso/link/").content.decode()
    assert "/accounts/sso/login/" in confirmed and client.session[LINK_KEY] == str(member.pk)
    settings.GATEWAY_OIDC_ISSUER = ""
    assert client.get("/accounts/sso/link/").status_code == 404


def test_a_first_sign_in_places_the_new_member_by_the_group_rules(backend):
    from allocations.group_rules import group_rule_create  # noqa: PLC0415
    from allocations.groups import group_create  # noqa: PLC0415

    lab = group_create(data={"name": "Lab", "slug": "lab"})
    group_rule_create(data={"order": 1, "matcher": "email_domain", "pattern": "lab.example.org", "group": lab})
    member = _sign_in(backend, _claims("idp-ren", "Ren@Lab.example.org"))
    assert list(member.org_groups.values_list("slug", flat=True)) == ["lab"]
    added = AuditEvent.objects.get(action="group_member_added")
    assert added.actor_label == "sso" and added.after["member"] == "ren@lab.example.org"
