"""Members give their keys an expiry, in the portal and the member API; audited; validated."""

import datetime as dt
import json

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from allocations.models import ApiKey, AuditEvent

pytestmark = pytest.mark.django_db


def _json(client, method, path, body=None):
    return getattr(client, method)(path, content_type="application/json", data=json.dumps(body))


def test_the_member_api_creates_changes_and_clears_an_expiry(alice_client, alice_alloc):
    when = (timezone.now() + dt.timedelta(days=7)).replace(microsecond=0)
    body = {"name": "ci", "allocations": [str(alice_alloc.pk)], "expires_at": when.isoformat()}
    created = _json(alice_client, "post", "/api/me/keys", body)
    assert created.status_code == 201, created.content
    assert parse_datetime(created.json()["expires_at"]) == when
    key_id = created.json()["id"]
    later = when + dt.timedelta(days=1)
    changed = _json(alice_client, "patch", f"/api/me/keys/{key_id}", {"expires_at": later.isoformat()})
    assert changed.status_code == 200 and parse_datetime(changed.json()["expires_at"]) == later
    assert changed.json()["name"] == "ci"
    cleared = _json(alice_client, "patch", f"/api/me/keys/{key_id}", {"expires_at": None})
    assert cleared.json()["expires_at"] is None
    events = AuditEvent.objects.filter(action="key_expiry_updated", target_id=key_id).order_by("created_at")
    assert [e.after["expires_at"] for e in events] == [later.isoformat(), None]


@pytest.mark.parametrize("value", ["tomorrow", "2030-01-01T00:00:00", 12, "2001-01-01T00:00:00+00:00"])
def test_a_bad_or_past_expiry_is_a_field_error(alice_client, alice_alloc, value):
    body = {"name": "ci", "allocations": [str(alice_alloc.pk)], "expires_at": value}
    response = _json(alice_client, "post", "/api/me/keys", body)
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["fields"]
    assert not ApiKey.objects.filter(name="ci").exists()


def test_a_patch_whose_expiry_is_refused_leaves_the_name_as_it_was(alice_client, alice_alloc):
    body = {"name": "ci", "allocations": [str(alice_alloc.pk)]}
    key_id = _json(alice_client, "post", "/api/me/keys", body).json()["id"]
    response = _json(
        alice_client, "patch", f"/api/me/keys/{key_id}", {"name": "renamed", "expires_at": "2001-01-01T00:00:00Z"}
    )
    assert response.status_code == 400 and "expires_at" in response.json()["error"]["fields"]
    assert ApiKey.objects.get(pk=key_id).name == "ci"
    assert not AuditEvent.objects.filter(action="key_renamed", target_id=key_id).exists()


def test_the_keys_page_sets_an_expiry_and_lists_it(alice_client, alice_alloc):
    when = timezone.localtime(timezone.now() + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    form = {"name": "laptop", "allocations": [str(alice_alloc.pk)], "expires_at": when}
    response = alice_client.post("/portal/keys/", form)
    assert response.status_code == 303
    key = ApiKey.objects.get(name="laptop")
    assert timezone.localtime(key.expires_at).strftime("%Y-%m-%dT%H:%M") == when
    past = alice_client.post("/portal/keys/", {**form, "name": "old", "expires_at": "2001-01-01T00:00"})
    assert past.status_code == 400 and "future" in past.content.decode()
    assert not ApiKey.objects.filter(name="old").exists()
    assert alice_client.post("/portal/keys/", {**form, "name": "forever", "expires_at": ""}).status_code == 303
    assert ApiKey.objects.get(name="forever").expires_at is None
    page = alice_client.get("/portal/keys/").content.decode()
    assert page.count('key-expiry"') == 2 and page.count("no expiry") == 1
