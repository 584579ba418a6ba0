"""Only a superuser changes a superuser's password, email, active or staff flag: in Django admin's
change form, on the member page, through the admin API and in the services every command uses.
A staff member can therefore not take a superuser's account over, directly or by pointing its
email at an address they read and asking for a password reset."""

import json

import pytest
from django.core import mail
from django.test import Client

from allocations import services
from allocations.exceptions import Forbidden
from allocations.models import AuditEvent, Member
from tests.backoffice.conftest import error_of
from tests.factories import MemberFactory

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-long-passphrase"


@pytest.fixture
def root(db):
    return MemberFactory(username="root", email="root@example.org", is_staff=True, is_superuser=True)


@pytest.fixture
def helper(db):
    return services.member_create(username="helper", email="helper@example.org", is_staff=True)


@pytest.fixture
def helper_client(helper):
    client = Client()
    client.force_login(helper)
    return client


def _patch(client, member, body, token):
    return client.patch(
        f"/api/admin/members/{member.pk}",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def _change_form(member, **changes):
    data = {"email": member.email, "is_active": "on", "is_staff": "on", "is_superuser": "on", "new_password": ""}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_staff_cannot_set_a_superusers_password_in_the_admin_change_form(helper_client, root):
    url = f"/admin/allocations/member/{root.pk}/change/"
    response = helper_client.post(url, _change_form(root, new_password=NEW_PASSWORD))

    assert response.status_code == 200
    assert "Only a superuser may change a superuser" in response.content.decode()
    root.refresh_from_db()
    assert not root.check_password(NEW_PASSWORD)
    assert not AuditEvent.objects.filter(action="member_password_set").exists()


@pytest.mark.parametrize("change", [{"email": "mine@example.org"}, {"is_active": None}, {"is_staff": None}])
def test_staff_cannot_change_a_superusers_email_or_flags_in_the_admin_change_form(helper_client, root, change):
    response = helper_client.post(f"/admin/allocations/member/{root.pk}/change/", _change_form(root, **change))

    assert "Only a superuser may change a superuser" in response.content.decode()
    fresh = Member.objects.get(pk=root.pk)
    assert (fresh.email, fresh.is_active, fresh.is_staff) == ("root@example.org", True, True)


def test_a_superuser_still_sets_another_superusers_password_and_email(admin_client, root):
    url = f"/admin/allocations/member/{root.pk}/change/"
    response = admin_client.post(url, _change_form(root, email="root2@example.org", new_password=NEW_PASSWORD))

    assert response.status_code == 302
    root.refresh_from_db()
    assert root.check_password(NEW_PASSWORD) and root.email == "root2@example.org"


def test_staff_still_govern_a_plain_member_in_the_admin_change_form(helper_client, member):
    url = f"/admin/allocations/member/{member.pk}/change/"
    form = {"email": "alice2@example.org", "is_active": "on", "new_password": NEW_PASSWORD}
    assert helper_client.post(url, form).status_code == 302
    member.refresh_from_db()
    assert member.check_password(NEW_PASSWORD) and member.email == "alice2@example.org"


def test_staff_cannot_reset_a_superusers_password_on_the_member_page(helper_client, root):
    response = helper_client.post(f"/admin/members/{root.pk}/", {"password": NEW_PASSWORD, "again": NEW_PASSWORD})

    assert "Only a superuser may reset a superuser" in response.content.decode()
    root.refresh_from_db()
    assert not root.check_password(NEW_PASSWORD)


@pytest.mark.parametrize("body", [{"email": "mine@example.org"}, {"is_active": False}, {"is_staff": False}])
def test_the_admin_api_answers_403_forbidden_to_staff_changing_a_superuser(client, helper, root, body):
    token = services.admin_token_create(user=helper)
    response = _patch(client, root, body, token)

    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert error_of(response)["type"] == "permission_error"
    fresh = Member.objects.get(pk=root.pk)
    assert (fresh.email, fresh.is_active, fresh.is_staff) == ("root@example.org", True, True)
    assert not AuditEvent.objects.filter(target_id=str(root.pk)).exclude(action="member_created").exists()


def test_a_superusers_token_changes_a_superusers_email_through_the_api(client, staff, root):
    token = services.admin_token_create(user=staff)
    response = _patch(client, root, {"email": "root2@example.org"}, token)
    assert response.status_code == 200 and response.json()["email"] == "root2@example.org"


def test_no_reset_mail_reaches_an_address_a_staff_member_tried_to_give_a_superuser(client, helper, root):
    token = services.admin_token_create(user=helper)
    _patch(client, root, {"email": "mine@example.org"}, token)

    client.post("/accounts/password_reset/", {"email": "mine@example.org"})

    assert [m.to for m in mail.outbox] == []
    root.refresh_from_db()
    assert root.email == "root@example.org"


@pytest.mark.parametrize(
    "change",
    [
        lambda m, actor: services.member_set_password(member=m, password=NEW_PASSWORD, actor=actor),
        lambda m, actor: services.member_update(member=m, changes={"email": "x@example.org"}, actor=actor),
        lambda m, actor: services.member_set_active(member=m, is_active=False, actor=actor),
        lambda m, actor: services.member_update(member=m, changes={"is_staff": False}, actor=actor),
    ],
)
def test_the_services_refuse_staff_and_let_a_superuser_or_an_operators_command_through(helper, staff, root, change):
    with pytest.raises(Forbidden):
        change(root, helper)
    change(Member.objects.get(pk=root.pk), staff)
    other = MemberFactory(username="root-too", is_staff=True, is_superuser=True)
    change(other, None)  # a management command: the operator's shell outranks any role
