"""Every audit event carries its actor, the client address (behind GATEWAY_TRUSTED_PROXY_COUNT
proxies) and the request id, whichever path wrote it; commands write as "system"."""

import io
import json

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from allocations.models import AuditEvent
from tests.factories import AllocationFactory, MemberFactory

pytestmark = pytest.mark.django_db

HOPS = {"REMOTE_ADDR": "10.0.0.9", "HTTP_X_FORWARDED_FOR": "198.51.100.7, 203.0.113.5"}


@pytest.fixture
def behind_one_proxy(settings):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/24"]


def _event(action) -> AuditEvent:
    return AuditEvent.objects.get(action=action)


def test_django_admin_events_carry_address_and_request_id(admin_client, behind_one_proxy):
    allocation = AllocationFactory()
    response = admin_client.post(
        reverse("admin:allocations_allocation_changelist"),
        {"action": "pause", "_selected_action": [allocation.pk]},
        HTTP_X_REQUEST_ID="adm-req-1",
        **HOPS,
    )
    assert response.status_code == 302 and response["X-Request-Id"] == "adm-req-1"
    event = _event("allocation_paused")
    assert (event.actor_label, event.source_ip, event.request_id) == ("admin", "203.0.113.5", "adm-req-1")


def test_admin_api_events_carry_address_and_request_id(api, allocation, behind_one_proxy):
    response = api.patch(f"allocations/{allocation.pk}", {"note": "n"}, HTTP_X_REQUEST_ID="api-req-1", **HOPS)
    assert response.status_code == 200
    event = _event("allocation_updated")
    assert (event.actor_label, event.source_ip, event.request_id) == ("admin", "203.0.113.5", "api-req-1")


def test_an_unsafe_request_id_is_replaced_before_it_reaches_the_audit_trail(api, allocation):
    response = api.patch(f"allocations/{allocation.pk}", {"note": "n"}, HTTP_X_REQUEST_ID="x\r\nInjected: 1")
    event = _event("allocation_updated")
    assert event.request_id == response["X-Request-Id"] and "Injected" not in event.request_id


def test_member_api_and_portal_events_carry_address_and_request_id(behind_one_proxy):
    alice = MemberFactory(username="alice")
    allocation = AllocationFactory(member=alice)
    client = Client()
    client.force_login(alice)
    body = json.dumps({"name": "ci", "allocations": [str(allocation.pk)]})
    created = client.post("/api/me/keys", body, content_type="application/json", HTTP_X_REQUEST_ID="me-req-1", **HOPS)
    assert created.status_code == 201
    event = _event("key_created")
    assert (event.actor_label, event.source_ip, event.request_id) == ("alice", "203.0.113.5", "me-req-1")
    response = client.post(f"/portal/allocations/{allocation.pk}/pause/", HTTP_X_REQUEST_ID="page-req-1", **HOPS)
    assert response.status_code == 302
    event = _event("allocation_paused")
    assert (event.actor_label, event.source_ip, event.request_id) == ("alice", "203.0.113.5", "page-req-1")


def test_commands_write_as_system_with_one_request_id_per_run(db):
    call_command("create_admin_token", "--user", "ops", stdout=io.StringIO())
    events = list(AuditEvent.objects.all())
    assert {e.action for e in events} == {"member_created", "admin_token_created"}
    for event in events:
        assert event.actor is None and event.actor_label == "system" and event.source_ip is None
    assert len({e.request_id for e in events}) == 1
    assert events[0].request_id.startswith("cmd-create_admin_token-")
    call_command("create_admin_token", "--user", "ops", stdout=io.StringIO())
    assert AuditEvent.objects.values("request_id").distinct().count() == 2
