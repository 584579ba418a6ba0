"""POST /api/admin/providers/{id}/test: {ok, status, latency_ms, error}, audited, never a 5xx;
against the fake upstream on loopback (a models list, or a one-token call when acknowledged)."""

import pytest

from allocations.models import AuditEvent
from allocations.services import model_create, provider_create
from tests.conftest import free_port
from tests.proxy.fake_upstream import UPSTREAM_KEY, start_fake_upstream

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def upstream():
    fake, stop = start_fake_upstream()
    yield fake
    stop()


def provider(base_url: str, key: str = UPSTREAM_KEY, name: str = "east"):
    return provider_create(name=name, kind="openai", base_url=base_url, api_key=key)


def test_a_billable_test_makes_a_one_token_call_to_the_first_deployment(api, upstream):
    east = provider(upstream.url + "/v1")
    model_create(slug="org/gpt", provider=east, upstream_name="gpt-4o-mini", kind="chat")
    upstream.requests.clear()
    response = api.post(f"providers/{east.pk}/test", {"billable": True})
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["status"] == 200 and body["error"] == "" and body["latency_ms"] >= 0
    [sent] = upstream.requests
    assert sent["body"]["model"] == "gpt-4o-mini" and sent["body"]["max_tokens"] == 1
    event = AuditEvent.objects.get(action="provider_tested")
    assert event.after["billable"] is True and event.after["ok"] is True


def test_a_wrong_key_is_reported_not_raised(api, upstream):
    east = provider(upstream.url + "/v1", key="sk-wrong-key-000000")
    model_create(slug="org/gpt", provider=east, upstream_name="gpt-4o-mini", kind="chat")
    body = api.post(f"providers/{east.pk}/test", {"billable": True}).json()
    assert (body["ok"], body["status"]) == (False, 401)
    assert "sk-wrong" not in body["error"] and upstream.url not in body["error"]


def test_an_unreachable_provider_is_ok_false_with_no_status(api):
    dead = provider(f"http://127.0.0.1:{free_port()}/v1")
    response = api.post(f"providers/{dead.pk}/test", {})
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["status"]) == (False, None) and "could not be reached" in body["error"]
    assert "127.0.0.1" not in body["error"]


def test_the_free_test_lists_models_and_sends_no_completion(api, upstream):
    east = provider(upstream.url + "/v1")
    upstream.requests.clear()
    body = api.post(f"providers/{east.pk}/test", {}).json()
    assert body["status"] is not None  # the fake answers what it answers to GET /models; nothing is billed
    assert upstream.requests == []  # no POST reached it


def test_bad_input_is_400_and_an_unknown_provider_404(api, upstream):
    east = provider(upstream.url + "/v1")
    assert api.post(f"providers/{east.pk}/test", {"billable": "yes"}).status_code == 400
    assert api.post("providers/00000000-0000-0000-0000-000000000000/test", {}).status_code == 404


def test_the_admin_action_reports_each_provider(admin_client, upstream):
    from django.urls import reverse

    east = provider(upstream.url + "/v1")
    url = reverse("admin:allocations_provider_changelist")
    response = admin_client.post(url, {"action": "test_connection", "_selected_action": [east.pk]}, follow=True)
    assert response.status_code == 200
    assert any(str(east) in str(m) for m in response.context["messages"])
    assert AuditEvent.objects.filter(action="provider_tested", target_id=str(east.pk)).count() == 1
