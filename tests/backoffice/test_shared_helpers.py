"""The request id, client address, cursor and limit rules are the same on every interface."""

import datetime as dt

import pytest
from django.test import RequestFactory

from allocations.exceptions import BadRequest
from lib.http import client_ip, request_id_of
from lib.pages import cursor_decode, cursor_encode, parse_limit

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("sent", ["bad id with spaces", "x" * 65, "<script>", "a\u00e9b"])
def test_the_api_replaces_an_unsafe_request_id_like_v1(api, sent):
    response = api.get("members", {"limit": "0"}, HTTP_X_REQUEST_ID=sent)
    assert response.status_code == 400
    rid = response.json()["error"]["request_id"]
    assert rid != sent and response["X-Request-Id"] == rid
    assert len(rid) == 36  # a fresh UUID


def test_the_api_keeps_a_safe_request_id(api):
    response = api.get("members", {"limit": "0"}, HTTP_X_REQUEST_ID="trace-1:abc.DEF_9")
    assert response.json()["error"]["request_id"] == "trace-1:abc.DEF_9"


def test_the_request_id_is_read_once_per_request():
    request = RequestFactory().get("/", HTTP_X_REQUEST_ID="bad id")
    assert request_id_of(request) == request_id_of(request)


@pytest.mark.parametrize("hop", ["not-an-ip", "1.2.3.4.5", ""])
def test_a_garbled_forwarded_hop_falls_back_to_the_peer(settings, hop):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.1"]
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=hop)
    assert client_ip(request) == "10.0.0.1"


@pytest.mark.parametrize("pk", [7, "0b3c3a9e-8a4e-4f6b-9b61-5c1f2f7e2a10"])
def test_one_cursor_codec_round_trips_integer_and_uuid_keys(pk):
    when = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    assert cursor_decode(cursor_encode(when, pk)) == (when, pk)


@pytest.mark.parametrize("cursor", ["garbage", "WzEsMl0", "WyIyMDI2LTAzLTAxVDEyOjAwOjAwIiwgMV0", "W251bGwsIG51bGxd"])
def test_a_tampered_cursor_is_a_field_error(cursor):
    with pytest.raises(BadRequest) as caught:
        cursor_decode(cursor)
    assert caught.value.fields == {"cursor": ["Invalid cursor."]}


@pytest.mark.parametrize("value", ["0", "201", "-1", "ten", "1.5"])
def test_limits_outside_1_to_200_are_a_field_error(value):
    with pytest.raises(BadRequest) as caught:
        parse_limit(value)
    assert "limit" in caught.value.fields


def test_a_blank_limit_is_the_default():
    assert parse_limit("") == 50 and parse_limit("200") == 200


@pytest.mark.parametrize(
    "path",
    ["allocations?member=a%00b", "allocations?model=%00", "audit?target_id=x%00", "prices?model=%00", "members?x%00=1"],
)
def test_a_nul_in_a_query_parameter_is_a_400_not_a_database_error(api, path):
    name, _, _ = path.partition("?")
    response = api.get(path)
    assert response.status_code == 400, (name, response.content)
    assert response.json()["error"]["fields"]


def test_the_member_api_refuses_a_nul_in_its_query_too(client, member):
    client.force_login(member)
    response = client.get("/api/me/calls?allocation=%00")
    assert response.status_code == 400 and "allocation" in response.json()["error"]["fields"]
