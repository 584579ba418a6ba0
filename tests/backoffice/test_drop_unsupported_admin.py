"""An admin switches a model's `drop_unsupported_params` on through the admin API or Django admin;
audited; the switch reaches the key snapshot the proxy reads."""

from django.urls import reverse

from allocations.access import key_scope
from allocations.models import AuditEvent, CatalogModel
from tests.factories import AllocationFactory, CatalogModelFactory, ProviderFactory, make_key

from .conftest import error_of


def test_the_admin_api_switches_it_on_audited_and_refuses_a_non_boolean(api, db):
    model = CatalogModelFactory(slug="openai/o3")
    assert api.get(f"models/{model.pk}").json()["drop_unsupported_params"] is False
    answer = api.patch(f"models/{model.pk}", {"drop_unsupported_params": True})
    assert answer.status_code == 200 and answer.json()["drop_unsupported_params"] is True
    event = AuditEvent.objects.get(action="model_updated", target_id=str(model.pk))
    assert (event.before, event.after) == ({"drop_unsupported_params": False}, {"drop_unsupported_params": True})
    refused = api.patch(f"models/{model.pk}", {"drop_unsupported_params": "yes"})
    assert refused.status_code == 400 and list(error_of(refused)["fields"]) == ["drop_unsupported_params"]


def test_the_key_snapshot_carries_the_switch(api, db, django_capture_on_commit_callbacks):
    allocation = AllocationFactory(model=CatalogModelFactory(slug="openai/o4-mini"))
    _, plaintext = make_key(member=allocation.member, allocations=[allocation])
    assert key_scope(plaintext).allocations[0].drop_unsupported_params is False
    with django_capture_on_commit_callbacks(execute=True):  # the auth generation's bump
        api.patch(f"models/{allocation.model_id}", {"drop_unsupported_params": True})
    assert key_scope(plaintext).allocations[0].drop_unsupported_params is True


def test_django_admin_switches_it_on_and_off_through_the_service(admin_client, db):
    model = CatalogModelFactory(provider=ProviderFactory())
    url = reverse("admin:allocations_catalogmodel_change", args=[model.pk])
    assert 'name="drop_unsupported_params"' in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"is_active": "on", "drop_unsupported_params": "on"}).status_code == 302
    assert CatalogModel.objects.get(pk=model.pk).drop_unsupported_params is True
    assert AuditEvent.objects.get(action="model_updated").after == {"drop_unsupported_params": True}
    assert admin_client.post(url, {"is_active": "on"}).status_code == 302
    assert CatalogModel.objects.get(pk=model.pk).drop_unsupported_params is False


def test_django_admin_adds_a_model_that_drops_them(admin_client, db):
    form = {
        "slug": "p/o3", "provider": ProviderFactory().pk, "upstream_name": "o3", "kind": "chat", "is_active": "on",
        "drop_unsupported_params": "on",
    }  # fmt: skip
    response = admin_client.post(reverse("admin:allocations_catalogmodel_add"), form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert CatalogModel.objects.get(slug="p/o3").drop_unsupported_params is True
