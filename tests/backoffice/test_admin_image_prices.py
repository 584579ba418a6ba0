"""A price version's per-image table (`image_prices`): through the admin API, Django admin and
load_prices, validated (400 naming the field), echoed and audited."""

import pytest
from django.core.management import call_command
from django.urls import reverse

from allocations.models import AuditEvent
from quota.models import PriceVersion
from tests.factories import CatalogModelFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]

TABLE = {"1024x1024/standard": "0.04", "1024x1792/hd": 0.12}


def test_image_prices_are_taken_echoed_listed_and_audited(api):
    model = CatalogModelFactory(slug="sim/img")
    body = {"model": "sim/img", "unit": "image", "price_per_unit": "0.04", "image_prices": TABLE}
    response = api.post("prices", body)
    assert response.status_code == 201, response.content
    expected = {"1024x1024/standard": "0.04", "1024x1792/hd": "0.12"}
    assert response.json()["image_prices"] == expected
    assert PriceVersion.objects.get(model=model).image_prices == expected
    assert AuditEvent.objects.get(action="price_version_added").after["image_prices"] == expected
    assert api.get("prices", {"model": "sim/img"}).json()["results"][0]["image_prices"] == expected
    plain = api.post("prices", {"model": "sim/img", "unit": "image", "price_per_unit": "0.05"}).json()
    assert plain["image_prices"] == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"unit": "image", "price_per_unit": "0.04", "image_prices": {"huge/hd": "1"}},
        {"unit": "image", "price_per_unit": "0.04", "image_prices": {"1024x1024": "1"}},
        {"unit": "image", "price_per_unit": "0.04", "image_prices": {"1024x1024/hd": "-1"}},
        {"unit": "image", "price_per_unit": "0.04", "image_prices": {"1024x1024/hd": None}},
        {"unit": "image", "price_per_unit": "0.04", "image_prices": ["1024x1024/hd"]},
        {"unit": "page", "price_per_unit": "0.01", "image_prices": {"1024x1024/hd": "0.08"}},
        {"input_per_1m": "5", "image_prices": {"1024x1024/hd": "0.08"}},
    ],
)
def test_bad_image_prices_are_400_naming_the_field_and_add_nothing(api, extra):
    CatalogModelFactory(slug="sim/img")
    response = api.post("prices", {"model": "sim/img", **extra})
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["image_prices"]
    assert not PriceVersion.objects.exists()


def test_django_admin_adds_a_price_with_image_prices(admin_client):
    model = CatalogModelFactory()
    url = reverse("admin:quota_priceversion_add")
    base = {"model": model.pk, "unit": "image", "price_per_unit": "0.04"}
    bad = admin_client.post(url, {**base, "image_prices": '{"1024x1792/hd": "lots"}'})
    assert bad.status_code == 200 and "image_prices" in bad.context["adminform"].form.errors
    assert admin_client.post(url, {**base, "image_prices": '{"1024x1792/hd": "0.12"}'}).status_code == 302
    assert PriceVersion.objects.get(model=model).image_prices == {"1024x1792/hd": "0.12"}
    assert AuditEvent.objects.get(action="price_version_added").after["image_prices"] == {"1024x1792/hd": "0.12"}


def test_load_prices_reads_image_prices(tmp_path):
    CatalogModelFactory(slug="sim/img")
    path = tmp_path / "prices.yaml"
    path.write_text("- model: sim/img\n  unit: image\n  price_per_unit: 0.04\n  image_prices: {1024x1792/hd: 0.12}\n")
    call_command("load_prices", str(path))
    assert PriceVersion.objects.get(model__slug="sim/img").image_prices == {"1024x1792/hd": "0.12"}
