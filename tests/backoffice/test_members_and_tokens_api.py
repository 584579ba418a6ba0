"""PATCH /api/admin/members/{id} (is_active, is_staff, email; last active admin → 409) and admin
tokens (expiry, last use, GET /api/admin/tokens, DELETE /api/admin/tokens/{id}, the commands)."""

import datetime as dt
import io
import threading

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from allocations import services
from allocations.members import LastAdmin
from allocations.models import AdminToken, ApiKey, AuditEvent, Member
from tests.backoffice.conftest import error_of
from tests.factories import MemberFactory

pytestmark = pytest.mark.django_db


def _bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_patch_member_changes_staff_flag_and_email_audited(api, member):
    response = api.patch(f"members/{member.pk}", {"is_staff": True, "email": "Alice@New.example"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["is_staff"] is True and body["email"] == "alice@new.example"
    events = {e.action: e for e in AuditEvent.objects.filter(target_id=str(member.pk))}
    assert events["member_roles_updated"].after == {"is_staff": True}
    assert events["member_email_updated"].before == {"email": member.email}
    assert events["member_email_updated"].actor_label == "admin"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"is_staff": "yes"}, "is_staff"),
        ({"email": "nope"}, "email"),
        ({"password": "x"}, "password"),
        ({}, "is_active"),
    ],
)
def test_patch_member_rejects_bad_fields(api, member, body, field):
    response = api.patch(f"members/{member.pk}", body)
    assert response.status_code == 400 and field in error_of(response)["fields"]


@pytest.mark.parametrize("change", [{"is_active": False}, {"is_staff": False}])
def test_the_last_active_admin_cannot_be_disabled_or_demoted(api, staff, change):
    response = api.patch(f"members/{staff.pk}", change)
    assert response.status_code == 409
    assert error_of(response)["code"] == "last_admin" and "last active admin" in error_of(response)["message"]
    staff.refresh_from_db()
    assert staff.is_active and staff.is_staff
    other = MemberFactory(username="bea", is_staff=True)
    assert api.patch(f"members/{staff.pk}", change).status_code == 200  # bea remains
    with pytest.raises(LastAdmin):  # now bea is the last one
        services.member_update(member=other, changes=change)


@pytest.mark.django_db(transaction=True)
def test_two_admins_demoting_each_other_at_once_leave_one_admin(db):
    first = MemberFactory(username="ann", is_staff=True)
    second = MemberFactory(username="ben", is_staff=True)
    barrier, results = threading.Barrier(2), []

    def demote(member):
        barrier.wait()
        try:
            services.member_update(member=member, changes={"is_staff": False})
            results.append("ok")
        except LastAdmin:
            results.append("409")
        finally:
            connection.close()

    threads = [threading.Thread(target=demote, args=(m,)) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["409", "ok"]
    assert Member.objects.filter(is_active=True, is_staff=True).count() == 1


def test_tokens_are_listed_with_last_use_and_revoked_by_delete(api, staff, token):
    listing = api.get("tokens").json()["results"]
    assert [t["prefix"] for t in listing] == [token[:12]]
    assert listing[0]["last_used_at"] is not None  # the listing call itself used it
    assert listing[0]["user"] == "admin" and listing[0]["expires_at"] is None
    second = services.admin_token_create(user=staff)
    second_id = AdminToken.objects.get(token_hash=ApiKey.hash(second)).pk
    response = Client().delete(f"/api/admin/tokens/{second_id}", **_bearer(token))
    assert response.status_code == 204
    assert Client().get("/api/admin/tokens", **_bearer(second)).status_code == 401
    assert AuditEvent.objects.get(action="admin_token_revoked").actor_label == "admin"
    assert Client().delete("/api/admin/tokens/not-an-id", **_bearer(token)).status_code == 404


def test_last_use_is_written_at_most_once_a_minute(staff):
    token = services.admin_token_create(user=staff)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        Client().get("/api/admin/tokens", **_bearer(token))
        first = AdminToken.objects.get().last_used_at
        traveller.shift(dt.timedelta(seconds=30))
        Client().get("/api/admin/tokens", **_bearer(token))
        assert AdminToken.objects.get().last_used_at == first
        traveller.shift(dt.timedelta(seconds=31))
        Client().get("/api/admin/tokens", **_bearer(token))
        assert AdminToken.objects.get().last_used_at > first


def test_an_expired_token_is_401(staff):
    out = io.StringIO()
    call_command("create_admin_token", "--user", "admin", "--expires-days", "2", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    row = AdminToken.objects.get()
    assert row.expires_at is not None and dt.timedelta(days=1) < row.expires_at - timezone.now() <= dt.timedelta(days=2)
    assert Client().get("/api/admin/tokens", **_bearer(token)).status_code == 200
    with time_machine.travel(timezone.now() + dt.timedelta(days=2, seconds=1)):
        response = Client().get("/api/admin/tokens", **_bearer(token))
    assert response.status_code == 401 and error_of(response)["code"] == "unauthorized"


def test_a_bad_expiry_is_refused_by_the_command(staff):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("create_admin_token", "--user", "admin", "--expires-days", "0", stdout=io.StringIO())
    assert not AdminToken.objects.exists()


def test_the_revoke_command_revokes_by_prefix_and_audits_as_system(staff):
    token = services.admin_token_create(user=staff)
    out = io.StringIO()
    call_command("revoke_admin_token", token[:12], stdout=out)
    assert "Revoked" in out.getvalue()
    assert Client().get("/api/admin/tokens", **_bearer(token)).status_code == 401
    event = AuditEvent.objects.get(action="admin_token_revoked")
    assert event.actor is None and event.actor_label == "system"


def test_a_token_made_by_the_command_is_audited_as_system_not_its_owner(db):
    call_command("create_admin_token", "--user", "ops", stdout=io.StringIO())
    event = AuditEvent.objects.get(action="admin_token_created")
    assert event.actor is None and event.actor_label == "system"
