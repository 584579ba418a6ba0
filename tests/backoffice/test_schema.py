"""The OpenAPI 3 schema at /api/schema/: valid, staff-only, and naming every admin and member route."""

import re

import pytest
import yaml
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db


def _api_routes() -> set[str]:
    """Every /api/admin/ and /api/me/ route the URL conf serves, as OpenAPI paths."""
    routes: set[str] = set()

    def walk(patterns, prefix):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                routes.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", prefix + str(entry.pattern)))

    walk(get_resolver().url_patterns, "")
    return {r for r in routes if r.startswith(("/api/admin/", "/api/me/"))}


@pytest.fixture
def schema(admin_client) -> dict:
    response = admin_client.get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_schema_is_valid_openapi_3(schema):
    validate_schema(schema)  # raises on an invalid document
    assert schema["openapi"].startswith("3.")


def test_every_admin_and_member_route_is_in_the_schema(schema):
    routes = _api_routes()
    assert len(routes) >= 20
    assert routes <= set(schema["paths"]), sorted(routes - set(schema["paths"]))


def test_every_operation_documents_the_error_envelope_and_a_unique_id(schema):
    ids = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            for status in ("400", "401", "403"):
                assert status in operation["responses"], (method, path, status)
    assert len(ids) == len(set(ids))
    assert "adminToken" in schema["components"]["securitySchemes"]


def test_input_bodies_say_which_fields_they_take(schema):
    body = schema["components"]["schemas"]["PatchedMemberDetailInputRequest"]
    assert set(body["properties"]) == {"is_active", "is_staff", "email"}
    create = schema["components"]["schemas"]["AllocationListInputRequest"]
    assert {"member", "model"} <= set(create["required"])


def test_the_schema_and_its_page_are_for_staff_only(client, member):
    assert client.get("/api/schema/").status_code == 401
    client.force_login(member)
    assert client.get("/api/schema/").status_code == 403
    assert client.get("/api/schema/docs/").status_code == 403


def test_the_browsable_page_serves_its_assets_locally(admin_client):
    page = admin_client.get("/api/schema/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/schema/" in html and "swagger-ui" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html


def test_an_admin_token_reads_the_schema(token):
    response = Client().get("/api/schema/?format=json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and "paths" in response.json()
