"""/api/admin/models/{id}/deployments: list, add, change, delete; validated, audited, and the
model's provider and upstream name kept as its first deployment's."""

import pytest

from allocations import services
from allocations.models import AuditEvent, CatalogModel, Deployment
from tests.factories import ProviderFactory

from .conftest import error_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(staff):
    provider = ProviderFactory(name="east")
    return services.model_create(slug="org/gpt", provider=provider, upstream_name="gpt-east", kind="chat")


def test_a_model_made_by_the_service_has_its_provider_as_first_deployment(api, model):
    response = api.get(f"models/{model.pk}/deployments")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert row["provider"] == "east" and row["upstream_name"] == "gpt-east"
    assert (row["weight"], row["priority"], row["active"], row["rpm_limit"]) == (1, 0, True, None)


def test_it_adds_a_deployment_by_provider_name_and_audits_it(api, model):
    ProviderFactory(name="west")
    body = {"provider": "west", "upstream_name": "gpt-west", "weight": 3, "priority": 0, "rpm_limit": 60}
    response = api.post(f"models/{model.pk}/deployments", body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["provider"] == "west" and created["weight"] == 3 and created["rpm_limit"] == 60
    event = AuditEvent.objects.get(action="deployment_created")
    assert event.target_id == created["id"] and event.after["upstream_name"] == "gpt-west"


def test_it_accepts_the_provider_by_id(api, model):
    west = ProviderFactory(name="west")
    response = api.post(f"models/{model.pk}/deployments", {"provider": str(west.pk), "upstream_name": "w"})
    assert response.status_code == 201 and response.json()["provider_id"] == str(west.pk)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "nobody", "upstream_name": "x"}, "provider"),
        ({"provider": "east", "upstream_name": ""}, "upstream_name"),
        ({"provider": "east", "upstream_name": "x", "weight": -1}, "weight"),
        ({"provider": "east", "upstream_name": "x", "priority": "first"}, "priority"),
        ({"provider": "east", "upstream_name": "x", "rpm_limit": 0}, "rpm_limit"),
        ({"provider": "east", "upstream_name": "x", "active": "yes"}, "active"),
        ({"provider": "east", "upstream_name": "x", "colour": "red"}, "colour"),
        ({"upstream_name": "x"}, "provider"),
    ],
)
def test_bad_fields_are_400_naming_the_field(api, model, body, field):
    response = api.post(f"models/{model.pk}/deployments", body)
    assert response.status_code == 400
    assert field in error_of(response)["fields"]
    assert Deployment.objects.filter(model=model).count() == 1


def test_a_better_priority_becomes_the_models_provider_and_upstream_name(api, model):
    west = ProviderFactory(name="west")
    added = api.post(f"models/{model.pk}/deployments", {"provider": "west", "upstream_name": "w", "priority": 1})
    model.refresh_from_db()
    assert model.provider_id != west.pk  # priority 1 comes after the first's 0
    first = Deployment.objects.get(model=model, upstream_name="gpt-east")
    response = api.patch(f"models/{model.pk}/deployments/{first.pk}", {"priority": 5})
    assert response.status_code == 200
    model.refresh_from_db()
    assert (model.provider_id, model.upstream_name) == (west.pk, "w")
    event = AuditEvent.objects.get(action="deployment_updated")
    assert event.before == {"priority": 0} and event.after == {"priority": 5}
    assert added.status_code == 201


def test_deleting_moves_the_model_to_the_next_and_the_last_one_stays(api, model):
    ProviderFactory(name="west")
    added = api.post(f"models/{model.pk}/deployments", {"provider": "west", "upstream_name": "w"}).json()
    first = Deployment.objects.get(model=model, upstream_name="gpt-east")
    assert api._call("delete", f"models/{model.pk}/deployments/{first.pk}").status_code == 204
    model.refresh_from_db()
    assert model.upstream_name == "w"
    assert AuditEvent.objects.get(action="deployment_deleted").before["upstream_name"] == "gpt-east"
    last = api._call("delete", f"models/{model.pk}/deployments/{added['id']}")
    assert last.status_code == 409
    assert Deployment.objects.filter(model=model).count() == 1


def test_a_deployment_of_another_model_is_404(api, model):
    other = services.model_create(slug="org/other", provider=model.provider, upstream_name="o", kind="chat")
    theirs = Deployment.objects.get(model=other)
    assert api.patch(f"models/{model.pk}/deployments/{theirs.pk}", {"weight": 2}).status_code == 404
    assert api.get(f"models/{CatalogModel().pk}/deployments").status_code == 404


def test_re_enabling_clears_the_reason_the_gateway_took_it_out(api, model):
    from allocations.deployments import deployment_take_out

    first = Deployment.objects.get(model=model)
    assert deployment_take_out(deployment_id=str(first.pk), reason="provider refused (401)") is not None
    assert deployment_take_out(deployment_id=str(first.pk), reason="again") is None  # once
    response = api.patch(f"models/{model.pk}/deployments/{first.pk}", {"active": True})
    assert response.json()["active"] is True and response.json()["disabled_reason"] == ""


def test_django_admin_adds_a_deployment_inline_and_audits_it(admin_client, model):
    from django.urls import reverse

    west = ProviderFactory(name="west")
    first = Deployment.objects.get(model=model)
    row = {"provider": first.provider_id, "upstream_name": "gpt-east", "weight": "1", "priority": "0", "active": "on"}
    form = {
        "is_active": "on",
        "unpriced_tools": "remove",
        "deployments-TOTAL_FORMS": "2",
        "deployments-INITIAL_FORMS": "1",
        **{f"deployments-0-{k}": v for k, v in {**row, "id": first.pk, "model": model.pk}.items()},
        **{f"deployments-1-{k}": v for k, v in {**row, "provider": west.pk, "upstream_name": "w", "weight": 0}.items()},
    }
    url = reverse("admin:allocations_catalogmodel_change", args=[model.pk])
    assert 'name="deployments-0-weight"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[-3000:]
    added = Deployment.objects.get(model=model, upstream_name="w")
    assert (added.provider_id, added.weight) == (west.pk, 0)
    assert AuditEvent.objects.get(action="deployment_created").target_id == str(added.pk)
    gone = {**form, "deployments-TOTAL_FORMS": "1", "deployments-0-DELETE": "on"}
    refused = admin_client.post(url, {k: v for k, v in gone.items() if not k.startswith("deployments-1-")})
    assert refused.status_code == 302  # the other deployment remains
    assert list(Deployment.objects.filter(model=model).values_list("upstream_name", flat=True)) == ["w"]


def test_a_model_form_posted_without_the_inline_keeps_the_deployments(admin_client, model):
    from django.urls import reverse

    url = reverse("admin:allocations_catalogmodel_change", args=[model.pk])
    response = admin_client.post(url, {"is_active": "", "unpriced_tools": "remove"})
    assert response.status_code == 302
    assert Deployment.objects.filter(model=model).count() == 1
