"""The cost-bearing request options in the back office: a model's `allowed_options` switch and a
price version's tier multipliers and tool-call prices, through the admin API and Django admin,
validated (400 with `fields`) and audited with before/after."""

from decimal import Decimal

import pytest
from django.urls import reverse

from allocations.access import key_scope
from allocations.models import AuditEvent, CatalogModel
from quota.models import PriceVersion
from tests.backoffice.conftest import error_of
from tests.factories import CatalogModelFactory, ProviderFactory, make_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]


@pytest.fixture
def provider(api):
    assert api.post("providers", {"name": "p1", "kind": "simulated"}).status_code == 201


def test_a_models_allowed_options_are_set_on_create_and_patch_and_audited(api, provider, member, allocation):
    body = {"slug": "p1/x", "provider": "p1", "upstream_name": "x", "kind": "chat"}
    created = api.post("models", {**body, "allowed_options": ["web_search", "service_tier:priority", "web_search"]})
    assert created.status_code == 201, created.content
    assert created.json()["allowed_options"] == ["service_tier:priority", "web_search"]
    model = CatalogModel.objects.get(slug="p1/x")
    assert AuditEvent.objects.get(action="model_created").after["allowed_options"] == [
        "service_tier:priority",
        "web_search",
    ]
    patched = api.patch(f"models/{model.pk}", {"allowed_options": ["background"]})
    assert patched.status_code == 200 and patched.json()["allowed_options"] == ["background"]
    event = AuditEvent.objects.get(action="model_updated")
    assert (event.before, event.after) == (
        {"allowed_options": ["service_tier:priority", "web_search"]},
        {"allowed_options": ["background"]},
    )
    assert api.patch(f"models/{model.pk}", {"allowed_options": ["background"]}).status_code == 200
    assert AuditEvent.objects.filter(action="model_updated").count() == 1  # no change, no event
    assert api.get(f"models/{model.pk}").json()["allowed_options"] == ["background"]
    assert api.post("models", {**body, "slug": "p1/y"}).json()["allowed_options"] == []  # the default: none


def test_the_switch_reaches_the_key_scope_at_once(api, member, allocation, django_capture_on_commit_callbacks):
    _, plaintext = make_key(member=member, allocations=[allocation])
    assert key_scope(plaintext).allocations[0].allowed_options == frozenset()
    with django_capture_on_commit_callbacks(execute=True):  # the auth generation's bump
        api.patch(f"models/{allocation.model_id}", {"allowed_options": ["service_tier:flex"]})
    assert key_scope(plaintext).allocations[0].allowed_options == frozenset({"service_tier:flex"})


@pytest.mark.parametrize(
    "value",
    [["web_search", "teleport"], "web_search", [1], {"web_search": True}, ["service_tier:auto"]],
)
def test_unknown_or_malformed_allowed_options_are_400_naming_the_field(api, provider, value):
    model = CatalogModelFactory(allowed_options=["web_search"])
    for response in (
        api.post(
            "models", {"slug": "p1/x", "provider": "p1", "upstream_name": "x", "kind": "chat", "allowed_options": value}
        ),  # fmt: skip
        api.patch(f"models/{model.pk}", {"allowed_options": value}),
    ):
        assert response.status_code == 400, response.content
        assert error_of(response)["code"] == "bad_request"
        assert list(response.json()["error"]["fields"]) == ["allowed_options"]
    assert not CatalogModel.objects.filter(slug="p1/x").exists()
    assert CatalogModel.objects.get(pk=model.pk).allowed_options == ["web_search"]
    assert not AuditEvent.objects.filter(action__startswith="model_").exists()


def test_prices_take_tier_multipliers_and_tool_call_prices_echoed_and_audited(api):
    model = CatalogModelFactory(slug="sim/a")
    body = {
        "model": "sim/a",
        "input_per_1m": "1",
        "output_per_1m": 2,
        "service_tier_multipliers": {"priority": "2", "flex": 0.5},
        "tool_call_prices": {"web_search": "0.01", "code_interpreter": "0.03"},
    }
    response = api.post("prices", body)
    assert response.status_code == 201, response.content
    echoed = response.json()
    assert echoed["service_tier_multipliers"] == {"flex": "0.5", "priority": "2"}
    assert echoed["tool_call_prices"] == {"code_interpreter": "0.03", "web_search": "0.01"}
    version = PriceVersion.objects.get(model=model)
    assert (version.tier_multiplier("flex"), version.tool_call_price("web_search")) == (Decimal("0.5"), Decimal("0.01"))
    after = AuditEvent.objects.get(action="price_version_added").after
    assert after["service_tier_multipliers"] == {"flex": "0.5", "priority": "2"}
    assert after["tool_call_prices"] == {"code_interpreter": "0.03", "web_search": "0.01"}
    listed = api.get("prices", {"model": "sim/a"}).json()["results"][0]
    assert listed["tool_call_prices"] == echoed["tool_call_prices"]
    plain = api.post("prices", {"model": "sim/a", "input_per_1m": "1"}).json()
    assert (plain["service_tier_multipliers"], plain["tool_call_prices"]) == ({}, {})


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"service_tier_multipliers": {"turbo": "2"}}, "service_tier_multipliers"),
        ({"service_tier_multipliers": {"auto": "1"}}, "service_tier_multipliers"),
        ({"service_tier_multipliers": {"priority": "-1"}}, "service_tier_multipliers"),
        ({"service_tier_multipliers": {"priority": "lots"}}, "service_tier_multipliers"),
        ({"service_tier_multipliers": {"priority": True}}, "service_tier_multipliers"),
        ({"service_tier_multipliers": ["priority"]}, "service_tier_multipliers"),
        ({"tool_call_prices": {"teleport": "1"}}, "tool_call_prices"),
        ({"tool_call_prices": {"web_search": "NaN"}}, "tool_call_prices"),
        ({"tool_call_prices": {"web_search": None}}, "tool_call_prices"),
        ({"tool_call_prices": "0.01"}, "tool_call_prices"),
    ],
)
def test_bad_option_prices_are_400_naming_the_field_and_add_nothing(api, extra, field):
    CatalogModelFactory(slug="sim/a")
    response = api.post("prices", {"model": "sim/a", "input_per_1m": "1", **extra})
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == [field]
    assert not PriceVersion.objects.exists() and not AuditEvent.objects.filter(action="price_version_added").exists()


def test_option_prices_go_with_token_rates_only(api):
    CatalogModelFactory(slug="sim/a")
    body = {"model": "sim/a", "unit": "image", "price_per_unit": "0.04", "tool_call_prices": {"web_search": "0.01"}}
    response = api.post("prices", body)
    assert response.status_code == 400 and list(response.json()["error"]["fields"]) == ["tool_call_prices"]


# --- Django admin ----------------------------------------------------------------------------------------------


def test_django_admin_switches_options_with_checkboxes_and_audits(admin_client):
    model = CatalogModelFactory(provider=ProviderFactory())
    url = reverse("admin:allocations_catalogmodel_change", args=[model.pk])
    page = admin_client.get(url).content.decode()
    assert 'type="checkbox" name="allowed_options" value="service_tier:priority"' in page
    form = {"is_active": "on", "allowed_options": ["web_search", "service_tier:flex"], "unpriced_tools": "remove"}
    assert admin_client.post(url, form).status_code == 302
    assert CatalogModel.objects.get(pk=model.pk).allowed_options == ["service_tier:flex", "web_search"]
    event = AuditEvent.objects.get(action="model_updated")
    assert (event.before, event.after) == (
        {"allowed_options": []},
        {"allowed_options": ["service_tier:flex", "web_search"]},
    )
    refused = admin_client.post(url, {**form, "allowed_options": ["teleport"]})
    assert refused.status_code == 200 and "allowed_options" in refused.context["adminform"].form.errors


def test_django_admin_adds_a_price_with_option_prices_and_refuses_bad_ones(admin_client):
    model = CatalogModelFactory()
    url = reverse("admin:quota_priceversion_add")
    base = {"model": model.pk, "input_per_1m": "1", "output_per_1m": "2", "unit": ""}
    bad = admin_client.post(url, {**base, "service_tier_multipliers": '{"priority": "-2"}', "tool_call_prices": ""})
    assert bad.status_code == 200 and "service_tier_multipliers" in bad.context["adminform"].form.errors
    assert not PriceVersion.objects.exists()
    good = {**base, "service_tier_multipliers": '{"priority": "2"}', "tool_call_prices": '{"web_search": 0.01}'}
    assert admin_client.post(url, good).status_code == 302
    version = PriceVersion.objects.get(model=model)
    assert (version.service_tier_multipliers, version.tool_call_prices) == ({"priority": "2"}, {"web_search": "0.01"})
    assert AuditEvent.objects.get(action="price_version_added").after["tool_call_prices"] == {"web_search": "0.01"}
