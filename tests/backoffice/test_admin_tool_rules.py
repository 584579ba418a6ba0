"""A model's tool rules in the back office: `unpriced_tools` (remove | refuse) and
`extra_client_tools` (tool types let through as run by the client), through the admin API and
Django admin, validated (400 with `fields`, a form error) and audited with before/after."""

import pytest
from django.urls import reverse

from allocations.access import key_scope
from allocations.models import AuditEvent, CatalogModel
from tests.backoffice.conftest import error_of
from tests.factories import CatalogModelFactory, ProviderFactory, make_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]
BODY = {"slug": "p1/x", "provider": "p1", "upstream_name": "x", "kind": "chat"}


@pytest.fixture
def provider(api):
    assert api.post("providers", {"name": "p1", "kind": "simulated"}).status_code == 201


def test_the_tool_rules_default_to_remove_and_no_extra_types(api, provider):
    created = api.post("models", BODY).json()
    assert (created["unpriced_tools"], created["extra_client_tools"]) == ("remove", [])
    after = AuditEvent.objects.get(action="model_created").after
    assert (after["unpriced_tools"], after["extra_client_tools"]) == ("remove", [])


def test_the_tool_rules_are_set_on_create_and_patch_and_audited(api, provider):
    body = {**BODY, "unpriced_tools": "refuse", "extra_client_tools": ["browser_use", "browser_use", "a.b-c"]}
    created = api.post("models", body)
    assert created.status_code == 201, created.content
    assert created.json()["extra_client_tools"] == ["a.b-c", "browser_use"]
    model = CatalogModel.objects.get(slug="p1/x")
    patched = api.patch(f"models/{model.pk}", {"unpriced_tools": "remove", "extra_client_tools": []})
    assert patched.status_code == 200 and patched.json()["unpriced_tools"] == "remove"
    event = AuditEvent.objects.get(action="model_updated")
    assert (event.before, event.after) == (
        {"unpriced_tools": "refuse", "extra_client_tools": ["a.b-c", "browser_use"]},
        {"unpriced_tools": "remove", "extra_client_tools": []},
    )
    assert api.get(f"models/{model.pk}").json()["extra_client_tools"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unpriced_tools", "ignore"),
        ("unpriced_tools", True),
        ("extra_client_tools", ["web_search"]),  # a built-in: it would reach the provider unmetered
        ("extra_client_tools", ["function"]),  # passes anyway
        ("extra_client_tools", ["Bad Type"]),
        ("extra_client_tools", "browser_use"),
        ("extra_client_tools", [1]),
    ],
)
def test_bad_tool_rules_are_400_naming_the_field_and_change_nothing(api, provider, field, value):
    model = CatalogModelFactory(extra_client_tools=["kept"])
    for response in (api.post("models", {**BODY, field: value}), api.patch(f"models/{model.pk}", {field: value})):
        assert response.status_code == 400, response.content
        assert error_of(response)["code"] == "bad_request"
        assert list(response.json()["error"]["fields"]) == [field]
    assert not CatalogModel.objects.filter(slug="p1/x").exists()
    fresh = CatalogModel.objects.get(pk=model.pk)
    assert (fresh.unpriced_tools, fresh.extra_client_tools) == ("remove", ["kept"])
    assert not AuditEvent.objects.filter(action__startswith="model_").exists()


def test_the_tool_rules_reach_the_key_scope_at_once(api, member, allocation, django_capture_on_commit_callbacks):
    _, plaintext = make_key(member=member, allocations=[allocation])
    entry = key_scope(plaintext).allocations[0]
    assert (entry.refuse_unpriced_tools, entry.extra_client_tools) == (False, frozenset())
    with django_capture_on_commit_callbacks(execute=True):  # the auth generation's bump
        api.patch(f"models/{allocation.model_id}", {"unpriced_tools": "refuse", "extra_client_tools": ["x"]})
    entry = key_scope(plaintext).allocations[0]
    assert (entry.refuse_unpriced_tools, entry.extra_client_tools) == (True, frozenset({"x"}))


def test_django_admin_sets_the_tool_rules_and_audits(admin_client):
    model = CatalogModelFactory(provider=ProviderFactory())
    url = reverse("admin:allocations_catalogmodel_change", args=[model.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="unpriced_tools"' in page and 'name="extra_client_tools"' in page
    form = {"is_active": "on", "unpriced_tools": "refuse", "extra_client_tools": "browser_use, computer_local"}
    assert admin_client.post(url, form).status_code == 302
    fresh = CatalogModel.objects.get(pk=model.pk)
    assert (fresh.unpriced_tools, fresh.extra_client_tools) == ("refuse", ["browser_use", "computer_local"])
    event = AuditEvent.objects.get(action="model_updated")
    assert event.after == {"unpriced_tools": "refuse", "extra_client_tools": ["browser_use", "computer_local"]}
    assert 'value="browser_use, computer_local"' in admin_client.get(url).content.decode()
    refused = admin_client.post(url, {**form, "extra_client_tools": "web_search"})
    assert refused.status_code == 200 and "extra_client_tools" in refused.context["adminform"].form.errors
    assert CatalogModel.objects.get(pk=model.pk).extra_client_tools == ["browser_use", "computer_local"]


def test_django_admin_adds_a_model_with_its_tool_rules(admin_client):
    provider = ProviderFactory()
    form = {
        "slug": "p/new", "provider": provider.pk, "upstream_name": "new", "kind": "chat", "is_active": "on",
        "unpriced_tools": "refuse", "extra_client_tools": "browser_use",
    }  # fmt: skip
    response = admin_client.post(reverse("admin:allocations_catalogmodel_add"), form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    created = CatalogModel.objects.get(slug="p/new")
    assert (created.unpriced_tools, created.extra_client_tools) == ("refuse", ["browser_use"])
    assert AuditEvent.objects.get(action="model_created").after["extra_client_tools"] == ["browser_use"]
