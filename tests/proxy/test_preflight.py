"""SPEC 3 preflight: every refusal answers with its code and status in the one envelope, and writes
exactly one call record with its outcome, attributed as far as it is known; nothing is reserved."""

import json
from decimal import Decimal

import httpx
import openai
import pytest
from django.test import override_settings
from django.utils import timezone

from allocations.models import ModelKind
from allocations.services import (
    allocation_pause,
    allocation_quarantine,
    allocation_revoke,
    api_key_revoke,
    member_set_active,
    provider_set_status,
)
from quota import ledger
from quota.models import CallRecord, Reservation, UsageCounter
from quota.periods import period_bounds, period_start_date

from .conftest import counter_of, record_of

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def post(world, body, *, key=None, path="chat/completions", headers=None, content=None):
    headers = {"X-Request-Id": "req-pre", **(headers or {})}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if content is None:
        content = json.dumps(body).encode()
    response = httpx.post(f"{world.gateway_url}/v1/{path}", content=content, headers=headers, timeout=10)
    return response


def assert_refused(response, status, code, outcome, *, allocation=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"] == "req-pre" and error["param"] is None
    assert response.headers["X-Request-Id"] == "req-pre"
    record = record_of("req-pre")
    assert (record.outcome, record.status_code, record.error_code) == (outcome, status, code)
    assert record.input_tokens == record.output_tokens == 0 and record.cost_usd is None
    assert record.allocation_id == (allocation.pk if allocation else None)
    assert CallRecord.objects.count() == 1
    assert not Reservation.objects.exists()
    return error


def assert_unauthenticated(response):
    """Refused at the door (proxy.gate): 401 in the envelope, counted per address, no call record."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["code"], error["request_id"], error["type"]) == ("unauthorized", "req-pre", "authentication_error")
    assert response.headers["X-Request-Id"] == "req-pre"
    assert not CallRecord.objects.exists() and not Reservation.objects.exists()
    return error


def test_a_missing_bearer_is_unauthorized(world):
    assert_unauthenticated(post(world, {"model": "x", **CHAT}))


def test_an_unknown_bearer_is_refused_before_the_body_is_read(world):
    assert_unauthenticated(post(world, None, key="sk-gw-" + "A" * 43, content=b"{broken"))
    assert_unauthenticated(post(world, {"model": "x", **CHAT}, key="sk-gw-" + "A" * 43))


def test_a_malformed_bearer_is_refused_before_a_bad_body(world):
    assert_unauthenticated(post(world, None, content=b"{broken", headers={"Authorization": "Basic abc"}))


def test_bad_json_is_a_bad_request_attributed_to_the_key(world):
    allocation = world.allocation()
    response = post(world, None, key=allocation.plaintext, content=b'{"model": ')
    assert_refused(response, 400, "bad_request", "rejected_bad_request")
    assert record_of("req-pre").api_key_id == allocation.key.pk


def test_a_missing_model_is_a_bad_request_with_fields(world):
    allocation = world.allocation()
    error = assert_refused(post(world, CHAT, key=allocation.plaintext), 400, "bad_request", "rejected_bad_request")
    assert error["fields"] == {"model": ["This field is required."]}


@override_settings(GATEWAY_MAX_BODY_MB=1)
def test_an_oversize_body_is_refused_with_413(world):
    allocation = world.allocation()
    big = {"model": allocation.model.slug, "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}
    response = post(world, big, key=allocation.plaintext)
    assert_refused(response, 413, "request_too_large", "rejected_bad_request")


def test_an_unknown_model_lists_the_models_the_key_may_call(world):
    allocation = world.allocation()
    error = assert_refused(
        post(world, {"model": "gpt-9", **CHAT}, key=allocation.plaintext),
        403,
        "model_mismatch",
        "rejected_model_mismatch",
    )
    assert allocation.model.slug in error["message"]
    assert record_of("req-pre").member_id == allocation.member_id


def test_a_model_outside_the_keys_scope_is_a_mismatch(world):
    mine = world.allocation()
    other = world.allocation(upstream_name="gpt-4o")  # same member, but not in mine's default key
    response = post(world, {"model": other.model.slug, **CHAT}, key=mine.plaintext)
    assert_refused(response, 403, "model_mismatch", "rejected_model_mismatch")


@pytest.mark.parametrize(
    ("change", "code", "outcome"),
    [
        (lambda a: allocation_revoke(allocation=a), "allocation_revoked", "rejected_revoked"),
        (lambda a: allocation_pause(allocation=a), "allocation_paused", "rejected_paused"),
        (
            lambda a: allocation_quarantine(allocation=a, reason="spike"),
            "allocation_quarantined",
            "rejected_quarantined",
        ),
    ],
)
def test_an_allocation_that_is_not_active_is_refused(world, change, code, outcome):
    allocation = world.allocation()
    change(allocation)
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_refused(response, 403, code, outcome, allocation=allocation)


def test_a_revoked_key_and_a_disabled_member_are_unauthorized(world):
    allocation = world.allocation()
    member_set_active(member=allocation.member, is_active=False)
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_unauthenticated(response)
    member_set_active(member=allocation.member, is_active=True)
    api_key_revoke(key=allocation.key)
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_unauthenticated(response)


def _used(allocation, **fields):
    UsageCounter.objects.create(allocation=allocation, period_start=period_start_date(timezone.now()), **fields)


def test_a_cost_cap_of_zero_blocks_at_once(world):
    allocation = world.allocation(cost=Decimal("0"))
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_refused(response, 403, "cost_quota_exceeded", "rejected_cost_quota_exceeded", allocation=allocation)


def test_a_reached_cost_cap_says_used_and_cap_the_model_and_the_reset_day(world):
    allocation = world.allocation(cost=Decimal("2"))
    _used(allocation, cost_used=Decimal("2.5"), tokens_used=100)
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    error = assert_refused(response, 403, "cost_quota_exceeded", "rejected_cost_quota_exceeded", allocation=allocation)
    assert "$2.5 / $2" in error["message"]
    assert f"model '{allocation.model.slug}'" in error["message"]
    assert f"resets on {period_bounds(timezone.now())[1]:%Y-%m-%d}" in error["message"]
    assert counter_of(allocation).tokens_used == 100  # untouched


def test_a_reached_token_quota_trips_first(world):
    allocation = world.allocation(tokens=100, cost=Decimal("0"))
    _used(allocation, tokens_used=100)
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_refused(response, 403, "quota_exceeded", "rejected_quota_exceeded", allocation=allocation)


def test_headroom_held_by_calls_in_flight_answers_quota_busy_with_retry_after(world):
    allocation = world.allocation(tokens=5000)
    held = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=5000,
        cost_cap=None,
        est_tokens=5000,
        est_cost=None,
        request_id="other",
        now=timezone.now(),
    )
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert response.status_code == 429 and response.headers["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "quota_busy"
    record = record_of("req-pre")
    assert (record.outcome, record.allocation_id) == ("rejected_quota_busy", allocation.pk)
    assert Reservation.objects.get().pk == held.reservation_id  # only the other call's


def test_an_unpriced_model_under_a_positive_cap_is_served_and_recorded_unpriced(world):
    allocation = world.allocation(priced=False, cost=Decimal("1"))
    world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, extra_headers={"X-Request-Id": "req-pre"}, **CHAT
    )
    record = record_of("req-pre")
    assert (record.outcome, record.priced, record.cost_usd, record.input_tokens) == ("success", False, None, 11)
    counter = counter_of(allocation)
    assert (counter.tokens_used, counter.cost_used) == (18, 0)


def test_an_endpoint_that_does_not_fit_the_models_kind_is_refused_after_admission(world):
    allocation = world.allocation(upstream_name="text-embedding-3-small", kind=ModelKind.EMBEDDING, cost=Decimal("1"))
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_refused(response, 400, "model_kind_mismatch", "rejected_model_kind", allocation=allocation)
    counter = counter_of(allocation)
    assert (counter.tokens_reserved, counter.cost_reserved, counter.calls) == (0, 0, 0)


def test_a_disabled_provider_is_unavailable(world):
    allocation = world.allocation()
    provider_set_status(provider=allocation.model.provider, status="disabled")
    response = post(world, {"model": allocation.model.slug, **CHAT}, key=allocation.plaintext)
    assert_refused(response, 503, "provider_unavailable", "upstream_error", allocation=allocation)


def test_the_sdk_sees_the_contracts_errors(world):
    allocation = world.allocation(cost=Decimal("0"))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        world.client(allocation.plaintext).chat.completions.create(model=allocation.model.slug, **CHAT)
    assert caught.value.code == "cost_quota_exceeded"
    with pytest.raises(openai.AuthenticationError):
        world.client("sk-gw-nope").chat.completions.create(model=allocation.model.slug, **CHAT)


def test_an_unknown_v1_path_answers_404_in_the_envelope(world):
    allocation = world.allocation()
    headers = {"X-Request-Id": "req-pre", "Authorization": f"Bearer {allocation.plaintext}"}
    response = httpx.get(f"{world.gateway_url}/v1/nope", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["request_id"] == "req-pre"
    assert response.headers["X-Request-Id"] == "req-pre"
    response = httpx.get(f"{world.gateway_url}/v1/nope", headers={"X-Request-Id": "req-pre"})
    assert response.status_code == 401  # without a key, nothing past the door: not even which paths exist
