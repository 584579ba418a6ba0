"""Django admin for members, providers, models, keys and admin tokens: every change goes through an audited service."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from allocations.access import key_scope
from allocations.exceptions import Unauthorized
from allocations.models import AdminToken, ApiKey, AuditEvent, CatalogModel, Member, Provider
from tests.factories import CatalogModelFactory, ProviderFactory, audit_actions, make_key

pytestmark = pytest.mark.django_db


def test_adding_a_member_in_admin_goes_through_the_service(admin_client):
    response = admin_client.post(
        reverse("admin:allocations_member_add"),
        {"username": "Dora", "email": "d@x.org", "password": "long-pass-123", "is_staff": ""},
    )
    assert response.status_code == 302, response.content
    dora = Member.objects.get(username="dora")
    assert dora.check_password("long-pass-123")
    assert audit_actions() == ["member_created"]
    assert AuditEvent.objects.get().actor_label == "admin"


def test_a_duplicate_username_is_a_form_error(admin_client, member):
    response = admin_client.post(reverse("admin:allocations_member_add"), {"username": "ALICE", "email": ""})
    assert response.status_code == 200 and b"already exists" in response.content
    assert audit_actions() == []


def test_disabling_a_member_in_admin_is_audited_and_stops_their_keys(admin_client, member, allocation):
    _, plaintext = make_key(member=member, allocations=[allocation])
    AuditEvent_count = AuditEvent.objects.count()
    # The change form posts every editable field; only is_active differs from the stored values.
    response = admin_client.post(
        reverse("admin:allocations_member_change", args=[member.pk]), {"is_active": "", "email": member.email}
    )
    assert response.status_code == 302
    assert not Member.objects.get(pk=member.pk).is_active
    assert AuditEvent.objects.count() == AuditEvent_count + 1
    assert AuditEvent.objects.latest("id").action == "member_disabled"
    with pytest.raises(Unauthorized):
        key_scope(plaintext)


def test_members_cannot_be_deleted_in_admin(admin_client, member):
    assert admin_client.get(reverse("admin:allocations_member_delete", args=[member.pk])).status_code == 403


def test_a_provider_key_is_write_only_and_its_fingerprint_is_shown(admin_client):
    response = admin_client.post(
        reverse("admin:allocations_provider_add"),
        {
            "name": "openai",
            "kind": "openai",
            "base_url": "https://api.test/v1",
            "api_key": "sk-upstream-1",
            "status": "active",
        },
    )
    assert response.status_code == 302, response.content
    provider = Provider.objects.get(name="openai")
    assert provider.key_fingerprint == ApiKey.hash("sk-upstream-1")[:12]
    assert audit_actions() == ["provider_created"]
    page = admin_client.get(reverse("admin:allocations_provider_change", args=[provider.pk]))
    assert provider.key_fingerprint.encode() in page.content
    assert b"sk-upstream-1" not in page.content and provider.api_key_encrypted.encode() not in page.content
    listing = admin_client.get(reverse("admin:allocations_provider_changelist"))
    assert provider.key_fingerprint.encode() in listing.content and b"sk-upstream-1" not in listing.content


def test_a_non_simulated_provider_needs_a_base_url(admin_client):
    response = admin_client.post(
        reverse("admin:allocations_provider_add"),
        {"name": "oa", "kind": "openai", "base_url": "", "api_key": "k", "status": "active"},
    )
    assert response.status_code == 200 and b"Required for an OpenAI-compatible" in response.content
    assert not Provider.objects.exists() and audit_actions() == []


def test_entering_a_new_provider_key_rotates_it_through_the_service(admin_client):
    provider = ProviderFactory(kind="openai", base_url="https://api.test/v1")
    url = reverse("admin:allocations_provider_change", args=[provider.pk])
    form = {"name": provider.name, "base_url": "https://api.test/v1", "api_version": "", "status": "active"}
    assert admin_client.post(url, {**form, "api_key": ""}).status_code == 302
    assert audit_actions() == []  # nothing changed, nothing audited
    assert admin_client.post(url, {**form, "api_key": "sk-new", "base_url": "https://b.test/v1"}).status_code == 302
    provider.refresh_from_db()
    assert provider.key_fingerprint == ApiKey.hash("sk-new")[:12] and provider.base_url == "https://b.test/v1"
    assert audit_actions() == ["provider_updated", "provider_key_rotated"]


def test_a_new_provider_base_url_needs_the_key_entered_again_in_the_same_change(admin_client):
    provider = ProviderFactory(kind="openai", base_url="https://api.test/v1")
    url = reverse("admin:allocations_provider_change", args=[provider.pk])
    form = {"name": provider.name, "base_url": "https://evil.test/v1", "api_version": "", "status": "active"}
    response = admin_client.post(url, {**form, "api_key": ""})
    assert response.status_code == 200 and "Enter the API key again" in response.content.decode()
    provider.refresh_from_db()
    assert provider.base_url == "https://api.test/v1"
    assert audit_actions() == []


def test_the_simulated_provider_is_labelled_in_provider_and_model_lists(admin_client):
    CatalogModelFactory(slug="sim/x", provider=ProviderFactory(name="simulated", kind="simulated"))
    for name in ("provider", "catalogmodel"):
        page = admin_client.get(reverse(f"admin:allocations_{name}_changelist"))
        assert b">simulated</span>" in page.content


def test_adding_and_deactivating_a_model_in_admin_is_audited(admin_client):
    provider = ProviderFactory()
    response = admin_client.post(
        reverse("admin:allocations_catalogmodel_add"),
        {
            "slug": "p/m",
            "provider": provider.pk,
            "upstream_name": "m",
            "kind": "chat",
            "display_name": "",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content
    model = CatalogModel.objects.get(slug="p/m")
    response = admin_client.post(reverse("admin:allocations_catalogmodel_change", args=[model.pk]), {"is_active": ""})
    assert response.status_code == 302
    assert not CatalogModel.objects.get(pk=model.pk).is_active
    assert audit_actions() == ["model_created", "model_updated"]


def test_the_revoke_action_revokes_keys_through_the_service(admin_client, member, allocation):
    key, plaintext = make_key(member=member, allocations=[allocation])
    listing = admin_client.get(reverse("admin:allocations_apikey_changelist"))
    assert key.prefix.encode() in listing.content and plaintext.encode() not in listing.content
    selected = {"action": "revoke_keys", "_selected_action": [key.pk]}
    asked = admin_client.post(reverse("admin:allocations_apikey_changelist"), selected)
    assert asked.status_code == 200 and "This is final." in asked.content.decode()
    assert not ApiKey.objects.get(pk=key.pk).is_revoked
    response = admin_client.post(reverse("admin:allocations_apikey_changelist"), {**selected, "confirmed": "yes"})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).is_revoked
    assert audit_actions()[-1] == "key_revoked"
    with pytest.raises(Unauthorized):
        key_scope(plaintext)


def test_an_admin_token_made_in_admin_is_shown_once(admin_client, staff):
    response = admin_client.post(reverse("admin:allocations_admintoken_add"), {"user": staff.pk})
    assert response.status_code == 302, response.content
    shown = [str(m) for m in get_messages(response.wsgi_request) if "gwadm-" in str(m)]
    assert len(shown) == 1
    plaintext = shown[0].rsplit(" ", 1)[-1]
    token = AdminToken.objects.get()
    assert token.token_hash == ApiKey.hash(plaintext)
    first = admin_client.get(reverse("admin:allocations_admintoken_changelist"))
    assert plaintext.encode() in first.content  # the one showing, as a message
    listing = admin_client.get(reverse("admin:allocations_admintoken_changelist"))
    assert plaintext.encode() not in listing.content and token.prefix.encode() in listing.content
