"""Rate limits and key expiry in the admin API and Django admin: validated, audited, and seen by
the request path at once."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from allocations.access import key_scope
from allocations.exceptions import Unauthorized
from allocations.models import Allocation, AuditEvent, CatalogModel
from tests.backoffice.conftest import changes, error_of
from tests.backoffice.test_admin_allocations import change_form
from tests.factories import CatalogModelFactory, ProviderFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]


def test_an_allocation_is_created_with_limits_and_they_are_audited(api, member):
    model = CatalogModelFactory()
    body = {"member": member.username, "model": model.slug, "rpm_limit": 60, "tpm_limit": "90000"}
    response = api.post("allocations", body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["rpm_limit"], created["tpm_limit"], created["max_parallel"]) == (60, 90000, None)
    event = changes().get(action="allocation_created")
    assert event.after["rpm_limit"] == 60 and event.after["max_parallel"] is None
    scoped = key_scope(created["key"]).allocations[0]
    assert scoped.limits == ((f"a:{created['id']}", 60, 90000, None),)


def test_patching_limits_writes_one_event_with_before_and_after(api, allocation):
    response = api.patch(f"allocations/{allocation.pk}", {"rpm_limit": 10, "max_parallel": 2})
    assert response.status_code == 200, response.content
    assert response.json()["max_parallel"] == 2
    event = changes().get(action="allocation_rate_limits_updated")
    assert event.before == {"rpm_limit": None, "max_parallel": None}
    assert event.after == {"rpm_limit": 10, "max_parallel": 2}
    cleared = api.patch(f"allocations/{allocation.pk}", {"rpm_limit": None})
    assert cleared.json()["rpm_limit"] is None
    assert Allocation.objects.get(pk=allocation.pk).max_parallel == 2


@pytest.mark.parametrize("value", [0, -1, "x", True, 1.5, 2**31])
def test_a_bad_limit_is_a_field_error_and_nothing_changes(api, allocation, value):
    response = api.patch(f"allocations/{allocation.pk}", {"max_parallel": value, "note": "changed"})
    assert response.status_code == 400
    assert "max_parallel" in error_of(response)["fields"]
    fresh = Allocation.objects.get(pk=allocation.pk)
    assert fresh.max_parallel is None and fresh.note == ""
    assert not changes().exists()


def test_model_limits_are_set_on_post_and_patch_and_reach_every_allocation(api, allocation, api_key):
    provider = ProviderFactory()
    body = {"slug": "x/m", "provider": provider.name, "upstream_name": "m", "kind": "chat", "tpm_limit": 1000}
    created = api.post("models", body)
    assert created.status_code == 201, created.content
    assert created.json()["tpm_limit"] == 1000
    assert changes().get(action="model_created").after["tpm_limit"] == 1000
    response = api.patch(f"models/{allocation.model_id}", {"rpm_limit": 500})
    assert response.status_code == 200 and response.json()["rpm_limit"] == 500
    event = changes().get(action="model_updated")
    assert (event.before, event.after) == ({"rpm_limit": None}, {"rpm_limit": 500})
    scoped = key_scope(api_key.plaintext).allocations[0]  # the generation was bumped: a fresh snapshot
    assert scoped.limits == ((f"m:{allocation.model_id}", 500, None, None),)
    assert api.patch(f"models/{allocation.model_id}", {"slug": "renamed"}).status_code == 400
    assert api.patch(f"models/{allocation.model_id}", {"tpm_limit": 0}).status_code == 400
    assert api.get("models/not-an-id").status_code == 404


def test_django_admin_edits_allocation_and_model_limits_through_the_services(admin_client, allocation):
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    response = admin_client.post(url, change_form(allocation, rpm_limit="30", tpm_limit=""))
    assert response.status_code == 302
    assert Allocation.objects.get(pk=allocation.pk).rpm_limit == 30
    assert AuditEvent.objects.filter(action="allocation_rate_limits_updated").count() == 1
    bad = admin_client.post(url, change_form(allocation, max_parallel="0"))
    assert bad.status_code == 200 and "max_parallel" in bad.context["adminform"].form.errors
    model_url = reverse("admin:allocations_catalogmodel_change", args=[allocation.model_id])
    form = {"is_active": "on", "max_parallel": "4", "rpm_limit": "", "tpm_limit": ""}
    assert admin_client.post(model_url, form).status_code == 302
    assert CatalogModel.objects.get(pk=allocation.model_id).max_parallel == 4
    assert AuditEvent.objects.get(action="model_updated").after == {"max_parallel": 4}


def test_django_admin_sets_a_key_expiry_and_the_key_stops_at_it(admin_client, api_key):
    url = reverse("admin:allocations_apikey_change", args=[api_key.pk])
    past = (timezone.now() - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    refused = admin_client.post(url, {"expires_at_0": past[:10], "expires_at_1": past[11:]})
    assert refused.status_code == 200 and "expires_at" in refused.context["adminform"].form.errors
    soon = timezone.now() + dt.timedelta(minutes=5)
    local = timezone.localtime(soon).strftime("%Y-%m-%d %H:%M:%S")
    assert admin_client.post(url, {"expires_at_0": local[:10], "expires_at_1": local[11:]}).status_code == 302
    event = AuditEvent.objects.get(action="key_expiry_updated")
    assert event.before == {"expires_at": None} and event.after["expires_at"].startswith(local[:10])
    assert key_scope(api_key.plaintext)  # still valid now
    with pytest.raises(Unauthorized, match="expired"):
        key_scope(api_key.plaintext, now=soon + dt.timedelta(seconds=1))
