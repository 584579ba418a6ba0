"""Invitations (48 h, single use, mailed, audited) and the password policy and hashing."""

import datetime as dt

import pytest
from django.contrib.auth.hashers import make_password
from django.core import mail
from django.test import Client
from django.utils import timezone

from allocations.models import Invitation, Member
from tests.factories import MemberFactory, audit_actions

pytestmark = pytest.mark.django_db
GOOD = "violet-harbour-lantern-42"


@pytest.fixture
def invitee(db):
    return MemberFactory(username="carolinedupont", email="carol@example.org", password=None)


def invite(api, member):
    response = api.post(f"members/{member.pk}/invitation")
    assert response.status_code == 201, response.content
    return response.json()


def path_of(url: str) -> str:
    return url.removeprefix("http://testserver")


def test_an_invitation_is_a_48_hour_link_audited_and_mailed(
    api,
    invitee,
    settings,
    django_capture_on_commit_callbacks,
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        body = invite(api, invitee)
    assert set(body) == {"invitation_url", "expires_at", "mailed"}
    assert body["invitation_url"].startswith("http://testserver/accounts/invitation/")
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(hours=47, minutes=59) < expires - before <= dt.timedelta(hours=48, seconds=5)
    assert body["mailed"] is True
    [sent] = mail.outbox
    assert sent.to == ["carol@example.org"] and body["invitation_url"] in sent.body
    assert "invitation_issued" in audit_actions()
    assert body["invitation_url"].rsplit("/", 2)[-2] not in Invitation.objects.get().token_hash


def test_without_mail_configured_nothing_is_mailed(api, invitee, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    assert invite(api, invitee)["mailed"] is False


def test_accepting_sets_a_password_signs_in_and_the_link_is_used_up(api, invitee):
    url = path_of(invite(api, invitee)["invitation_url"])
    client = Client()
    assert client.get(url).status_code == 200
    done = client.post(url, {"new_password1": GOOD, "new_password2": GOOD})
    assert done.status_code == 302 and done["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200  # signed in
    invitee.refresh_from_db()
    assert invitee.check_password(GOOD)
    assert "invitation_used" in audit_actions()
    again = Client().post(url, {"new_password1": "another-" + GOOD, "new_password2": "another-" + GOOD})
    assert again.status_code == 410
    assert Client().get(url).status_code == 410


def test_an_expired_or_replaced_link_is_refused(api, invitee):
    first = path_of(invite(api, invitee)["invitation_url"])
    second = path_of(invite(api, invitee)["invitation_url"])
    assert Client().get(first).status_code == 410  # replaced by the newer link
    Invitation.objects.filter(used_at__isnull=True).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert Client().get(second).status_code == 410
    assert Client().get("/accounts/invitation/not-a-token/").status_code == 410


@pytest.mark.parametrize("password", ["short-9x", "password123", "carolinedupont1", "carol@example.org"])
def test_the_accept_page_applies_the_password_policy(api, invitee, password):
    url = path_of(invite(api, invitee)["invitation_url"])
    response = Client().post(url, {"new_password1": password, "new_password2": password})
    assert response.status_code == 400
    invitee.refresh_from_db()
    assert not invitee.has_usable_password()
    assert not Invitation.objects.get().used_at


def test_the_admin_api_and_password_change_apply_the_policy(api, alice_client, alice):
    created = api.post("members", {"username": "dave", "password": "dave12345"})
    assert created.status_code == 400
    assert created.json()["error"]["fields"]["password"]
    alice.set_password("old-" + GOOD)
    alice.save()
    alice_client.force_login(alice)
    changed = alice_client.post(
        "/accounts/password_change/",
        {"old_password": "old-" + GOOD, "new_password1": "qwertyuiop", "new_password2": "qwertyuiop"},
    )
    assert changed.status_code == 200 and "too common" in changed.content.decode()


def test_a_pbkdf2_hash_is_upgraded_to_argon2id_at_sign_in(settings):
    from gateway_project import settings as production

    settings.PASSWORD_HASHERS = production.PASSWORD_HASHERS  # the project's list, not the tests' fast one
    member = MemberFactory(username="erin")
    Member.objects.filter(pk=member.pk).update(password=make_password(GOOD, hasher="pbkdf2_sha256"))
    assert Member.objects.get(pk=member.pk).password.startswith("pbkdf2_sha256$")
    response = Client().post("/accounts/login/", {"username": "erin", "password": GOOD})
    assert response.status_code == 302
    assert Member.objects.get(pk=member.pk).password.startswith("argon2$argon2id$")


def test_the_production_settings_hash_with_argon2id_first_and_enforce_the_policy():
    from gateway_project import settings as production

    assert production.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    names = [v["NAME"].rsplit(".", 1)[-1] for v in production.AUTH_PASSWORD_VALIDATORS]
    assert names == ["UserAttributeSimilarityValidator", "MinimumLengthValidator", "CommonPasswordValidator"]
    assert production.AUTH_PASSWORD_VALIDATORS[1]["OPTIONS"] == {"min_length": 10}


def test_django_admin_applies_the_policy_to_new_and_changed_passwords(admin_client, alice):
    added = admin_client.post("/admin/allocations/member/add/", {"username": "frank", "password": "password123"})
    assert added.status_code == 200 and not Member.objects.filter(username="frank").exists()
    changed = admin_client.post(
        f"/admin/allocations/member/{alice.pk}/change/",
        {"email": alice.email, "is_active": "on", "new_password": "password1"},
    )
    assert changed.status_code == 200 and "too common" in changed.content.decode()
