"""Device sign-in (RFC 8628): the OAuth endpoints, the member's approval, single delivery."""

import datetime as dt
import json
import re

import pytest
from django.test import Client
from django.utils import timezone

from allocations import crypto, device
from allocations.models import ApiKey, DeviceAuthorization
from tests.factories import AllocationFactory, CatalogModelFactory, audit_actions

pytestmark = pytest.mark.django_db
GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def start(client=None, **body):
    response = (client or Client()).post("/oauth/device/code", body)
    assert response.status_code == 200, response.content
    return response.json()


def poll(device_code, client=None, **extra):
    body = {"grant_type": GRANT, "device_code": device_code, **extra}
    return (client or Client()).post("/oauth/device/token", body)


def age(user_code, seconds):
    """Moves a grant's last poll back in time, as if the tool had waited."""
    row = DeviceAuthorization.objects.get(user_code=user_code.replace("-", ""))
    if row.last_polled_at:
        row.last_polled_at -= dt.timedelta(seconds=seconds)
    row.save()


def test_the_device_code_response_has_the_rfc_fields_and_an_unambiguous_user_code():
    body = start(label="laptop codex")
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", body["user_code"])
    assert body["verification_uri"] == "http://testserver/portal/device/"
    assert body["verification_uri_complete"] == f"http://testserver/portal/device/?user_code={body['user_code']}"
    assert (body["expires_in"], body["interval"]) == (600, 5)
    row = DeviceAuthorization.objects.get()
    assert row.label == "laptop codex" and body["device_code"] not in row.device_code_hash


def test_json_bodies_are_accepted_and_bad_bodies_refused_in_the_oauth_form():
    response = Client().post("/oauth/device/code", json.dumps({"label": "x"}), content_type="application/json")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    bad = Client().post("/oauth/device/code", "[1]", content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    assert Client().get("/oauth/device/code").status_code == 405


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code", "device_code": "x"}, "unsupported_grant_type"),
        ({"grant_type": GRANT}, "invalid_request"),
        ({"grant_type": GRANT, "device_code": "not-a-code"}, "invalid_grant"),
    ],
)
def test_token_requests_the_rfc_refuses(body, error):
    response = Client().post("/oauth/device/token", body)
    assert response.status_code == 400
    assert response.json()["error"] == error and response["Cache-Control"] == "no-store"


def test_pending_then_slow_down_then_approved_delivered_once_then_expired(alice, alice_alloc, alice_csrf_client):
    body = start(label="my laptop")
    code = body["device_code"]
    first = poll(code)
    assert (first.status_code, first.json()["error"]) == (400, "authorization_pending")
    too_soon = poll(code)
    assert too_soon.json()["error"] == "slow_down"
    assert DeviceAuthorization.objects.get().interval_s == 10  # 5 s more for every later poll
    age(body["user_code"], 6)  # 6 s later: still faster than the new 10 s interval
    assert poll(code).json()["error"] == "slow_down"
    assert DeviceAuthorization.objects.get().interval_s == 15
    age(body["user_code"], 16)
    assert poll(code).json()["error"] == "authorization_pending"

    alice_csrf_client.get("/portal/")
    token = alice_csrf_client.cookies["csrftoken"].value
    approve = alice_csrf_client.post(
        f"/api/me/device/{body['user_code']}/approve",
        json.dumps({"allocations": [str(alice_alloc.pk)]}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert approve.status_code == 200, approve.content
    assert approve.json()["status"] == "approved"
    row = DeviceAuthorization.objects.get()
    plaintext = crypto.decrypt(row.key_encrypted)  # at rest: encrypted, not the plaintext
    assert plaintext not in row.key_encrypted

    age(body["user_code"], 20)
    delivered = poll(code)
    assert delivered.status_code == 200
    assert delivered.json() == {"access_token": plaintext, "token_type": "bearer", "model": "openai/gpt-4o-mini"}
    key = ApiKey.objects.get(key_hash=ApiKey.hash(plaintext))
    assert key.name == "my laptop" and [s.allocation_id for s in key.scopes.all()] == [alice_alloc.pk]
    assert DeviceAuthorization.objects.get().key_encrypted == ""  # wiped once delivered

    age(body["user_code"], 20)
    again = poll(code)
    assert (again.status_code, again.json()["error"]) == (400, "expired_token")
    actions = audit_actions()
    assert "device_sign_in_approved" in actions and "device_sign_in_delivered" in actions


def test_the_approve_api_needs_the_csrf_token(alice_alloc, alice_csrf_client):
    body = start()
    response = alice_csrf_client.post(
        f"/api/me/device/{body['user_code']}/approve",
        json.dumps({"allocations": [str(alice_alloc.pk)]}),
        content_type="application/json",
    )
    assert response.status_code == 403
    assert DeviceAuthorization.objects.get().status == "pending"


def test_denied_is_access_denied(alice_client):
    body = start()
    response = alice_client.post(f"/api/me/device/{body['user_code'].lower()}/deny")
    assert response.status_code == 200 and response.json()["status"] == "denied"
    assert poll(body["device_code"]).json()["error"] == "access_denied"
    assert "device_sign_in_denied" in audit_actions()
    # Decided once: a second decision is refused.
    again = alice_client.post(f"/api/me/device/{body['user_code']}/deny")
    assert again.status_code == 404


def test_an_expired_code_is_expired_token_and_cannot_be_approved(alice_client, alice_alloc):
    body = start()
    DeviceAuthorization.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert poll(body["device_code"]).json()["error"] == "expired_token"
    response = alice_client.post(
        f"/api/me/device/{body['user_code']}/approve",
        json.dumps({"allocations": [str(alice_alloc.pk)]}),
        content_type="application/json",
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_approval_is_scoped_to_the_members_own_allocations_one_per_model(alice, alice_alloc, alice_client, bob_alloc):
    body = start()
    url = f"/api/me/device/{body['user_code']}/approve"
    foreign = alice_client.post(url, json.dumps({"allocations": [str(bob_alloc.pk)]}), content_type="application/json")
    assert foreign.status_code == 404
    twin = AllocationFactory(member=alice, model=alice_alloc.model)
    both = json.dumps({"allocations": [str(alice_alloc.pk), str(twin.pk)]})
    conflict = alice_client.post(url, both, content_type="application/json")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "scope_conflict"
    assert DeviceAuthorization.objects.get().status == "pending" and not ApiKey.objects.exists()
    empty = alice_client.post(url, json.dumps({"allocations": []}), content_type="application/json")
    assert empty.status_code == 400


def test_the_model_returned_is_the_first_chat_model_chosen(alice, alice_alloc):
    embed = AllocationFactory(
        member=alice, model=CatalogModelFactory(slug="openai/text-embedding-3-small", kind="embedding")
    )
    started = device.device_start(label="t")
    device.device_approve(member=alice, user_code=started.authorization.user_code, allocations=[embed, alice_alloc])
    assert device.device_poll(device_code=started.device_code)["model"] == "openai/gpt-4o-mini"


def test_wrong_user_codes_are_rate_limited_per_address(alice, settings):
    """The counts live in the shared Redis cache: a process sharing its database can flush it
    (another run's test start) mid-scenario and make one attempt miss the limit; a real bug misses
    it every time. So up to three attempts, each from client addresses of its own."""
    settings.GATEWAY_DEVICE_RATE_LIMITS = {**device.RATE_LIMITS, "user_code": 3}

    def signed_in(address: str) -> Client:
        client = Client(REMOTE_ADDR=address)
        client.force_login(alice)
        return client

    def scenario(n: int) -> bool:
        guesser = signed_in(f"198.51.100.{n + 1}")
        for _ in range(3):
            assert guesser.post("/api/me/device/BBBB-BBBB/deny").status_code == 404
        body = start()
        # Past the limit even the right code is refused, so guessing teaches nothing.
        if guesser.post(f"/api/me/device/{body['user_code']}/deny").status_code != 429:
            return False
        assert signed_in(f"198.51.100.{n + 101}").post(f"/api/me/device/{body['user_code']}/deny").status_code == 200
        return True

    assert any(scenario(n) for n in range(3))


def test_device_codes_are_rate_limited_per_address(settings):
    settings.GATEWAY_DEVICE_RATE_LIMITS = {**device.RATE_LIMITS, "code": 2}
    start()
    start()
    refused = Client().post("/oauth/device/code")
    assert refused.status_code == 429 and refused.json()["error"] == "slow_down"
    assert Client(REMOTE_ADDR="10.0.0.8").post("/oauth/device/code").status_code == 200


def test_the_portal_page_confirms_the_code_and_approves(alice, alice_alloc, alice_client):
    body = start(label="ci box")
    page = alice_client.get(f"/portal/device/?user_code={body['user_code']}")
    assert page.status_code == 200 and body["user_code"] in page.content.decode()
    done = alice_client.post(
        "/portal/device/",
        {"user_code": body["user_code"], "decision": "approve", "allocations": [str(alice_alloc.pk)]},
    )
    assert done.status_code == 302
    assert DeviceAuthorization.objects.get().status == "approved"
    assert poll(body["device_code"]).status_code == 200


def test_the_portal_page_denies_and_shows_a_clear_error_for_a_wrong_code(alice_client):
    body = start()
    wrong = alice_client.get("/portal/device/?user_code=ZZZZ-ZZZZ")
    assert wrong.status_code == 404 and "No pending sign-in" in wrong.content.decode()
    done = alice_client.post("/portal/device/", {"user_code": body["user_code"], "decision": "deny"})
    assert done.status_code == 302 and DeviceAuthorization.objects.get().status == "denied"


def test_the_portal_page_needs_a_signed_in_member():
    response = Client().get("/portal/device/?user_code=BBBB-BBBB")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
