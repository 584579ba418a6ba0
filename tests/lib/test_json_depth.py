"""The admin and member APIs refuse JSON nested past MAX_JSON_DEPTH with 400 in the envelope (the
rule /v1 uses, one definition), never a 500 from the parser's RecursionError."""

import pytest
from django.test import Client

from allocations import services
from lib.json_depth import MAX_JSON_DEPTH
from tests.backoffice.conftest import error_of

pytestmark = pytest.mark.django_db


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + ("" if opener == "[" else "1") + closer * depth


DEPTHS = [MAX_JSON_DEPTH + 1, 1000, 100_000]
SHAPES = [("[", "]"), ('{"a":', "}")]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("opener", "closer"), SHAPES)
def test_the_admin_api_answers_400_to_json_nested_too_deep(client, staff, depth, opener, closer):
    token = services.admin_token_create(user=staff)
    body = f'{{"username": "x", "email": {nested(depth, opener, closer)}}}'
    response = client.post(
        "/api/admin/members", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 400, response.content[:200]
    error = error_of(response)
    assert error["code"] == "bad_request" and "nested deeper than" in error["message"]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("opener", "closer"), SHAPES)
def test_the_member_api_answers_400_to_json_nested_too_deep(member, depth, opener, closer):
    client = Client()
    client.force_login(member)
    body = f'{{"name": "laptop", "allocations": {nested(depth, opener, closer)}}}'
    response = client.post("/api/me/keys", body, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert "nested deeper than" in error_of(response)["message"]


def test_json_up_to_the_limit_reaches_the_fields_check(client, staff):
    token = services.admin_token_create(user=staff)
    body = f'{{"username": "x", "email": {nested(MAX_JSON_DEPTH - 1)}}}'
    response = client.post(
        "/api/admin/members", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 400 and "email" in error_of(response)["fields"]
