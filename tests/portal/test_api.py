import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from allocations.models import Allocation, ApiKey, AuditEvent
from allocations.services import allocation_pause
from tests.factories import AllocationFactory, CatalogModelFactory, PriceVersionFactory, make_key
from tests.portal.conftest import dollar_price, reject_call, settle_call

pytestmark = pytest.mark.django_db


def _json(client, method, path, body=None):
    kwargs = {"content_type": "application/json"}
    if body is not None:
        kwargs["data"] = json.dumps(body)
    return getattr(client, method)(path, **kwargs)


def test_it_lists_allocations_with_the_exact_spec_fields_and_decimal_strings(alice_client, alice_alloc):
    settle_call(alice_alloc, cost_usd="1.25")
    response = alice_client.get("/api/me/allocations")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert set(row) == {
        "id",
        "model",
        "display_name",
        "status",
        "quota_tokens_per_month",
        "tokens_used_this_month",
        "quota_cost_usd_per_month",
        "cost_used_this_month",
        "near_cap",
        "key_prefixes",
        "price",
    }
    assert row["id"] == str(alice_alloc.pk)
    assert row["model"] == "openai/gpt-4o-mini"
    assert row["quota_cost_usd_per_month"] == "10.000000000"
    assert row["cost_used_this_month"] == "1.250000000"
    assert isinstance(row["cost_used_this_month"], str)
    assert row["tokens_used_this_month"] == 1_250_000
    assert row["quota_tokens_per_month"] is None
    assert row["near_cap"] is False
    assert row["price"] == {
        "unit": "1m_tokens",
        "input_per_1m": "1.000000000",
        "cached_input_per_1m": None,
        "output_per_1m": "2.000000000",
        "audio_input_per_1m": None,
        "audio_output_per_1m": None,
    }


def test_no_cap_is_null_and_unpriced_is_null_price_not_zero(alice_client, alice):
    allocation = AllocationFactory(member=alice, quota_cost_usd_per_month=None)
    settle_call(allocation, input_tokens=500)  # no price in force: unpriced
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["quota_cost_usd_per_month"] is None
    assert row["price"] is None
    assert row["cost_used_this_month"] == "0.000000000"
    assert row["tokens_used_this_month"] == 500


@pytest.mark.parametrize(("spent", "expected"), [("7.90", False), ("8.00", True), ("10.00", True)])
def test_near_cap_flag_for_cost_at_79_80_and_100_percent(alice_client, alice_alloc, spent, expected):
    settle_call(alice_alloc, cost_usd=spent)
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["near_cap"] is expected


@pytest.mark.parametrize(("used", "expected"), [(790, False), (800, True), (1000, True)])
def test_near_cap_flag_for_tokens_at_79_80_and_100_percent(alice_client, alice, used, expected):
    allocation = AllocationFactory(member=alice, quota_tokens_per_month=1000)
    settle_call(allocation, input_tokens=used)
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["near_cap"] is expected


def test_near_cap_follows_the_configured_ratio(alice_client, alice_alloc, settings):
    settings.GATEWAY_NEAR_CAP_RATIO = Decimal("0.5")
    settle_call(alice_alloc, cost_usd="5")
    assert alice_client.get("/api/me/allocations").json()["results"][0]["near_cap"] is True


def test_key_prefixes_are_the_live_keys_of_the_allocation(alice_client, alice, alice_alloc):
    live, _ = make_key(member=alice, allocations=[alice_alloc], name="live")
    dead, _ = make_key(member=alice, allocations=[alice_alloc], name="dead")
    alice_client.delete(f"/api/me/keys/{dead.pk}")
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["key_prefixes"] == [live.prefix]


def test_unauthenticated_requests_get_401_in_the_envelope(db):
    for method, path in [("get", "/api/me/allocations"), ("get", "/api/me/keys"), ("post", "/api/me/keys")]:
        response = getattr(Client(), method)(path)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "unauthorized"
        assert error["type"] == "authentication_error"
        assert error["request_id"]


def test_mutations_without_a_csrf_token_are_refused(alice_csrf_client, alice_alloc):
    response = _json(alice_csrf_client, "post", "/api/me/keys", {"name": "x", "allocations": [str(alice_alloc.pk)]})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "CSRF" in response.json()["error"]["message"]
    assert _json(alice_csrf_client, "post", f"/api/me/allocations/{alice_alloc.pk}/pause").status_code == 403
    key, _ = make_key(member=alice_alloc.member, allocations=[alice_alloc], name="kept")
    assert _json(alice_csrf_client, "patch", f"/api/me/keys/{key.pk}", {"name": "changed"}).status_code == 403
    assert _json(alice_csrf_client, "delete", f"/api/me/keys/{key.pk}").status_code == 403
    assert _json(alice_csrf_client, "post", f"/api/me/keys/{key.pk}/rotate").status_code == 403
    alice_alloc.refresh_from_db()
    key.refresh_from_db()
    assert alice_alloc.status == "active"
    assert key.name == "kept" and key.revoked_at is None
    assert not ApiKey.objects.filter(name="x").exists()
    # Reads need no token.
    assert alice_csrf_client.get("/api/me/keys").status_code == 200


def test_mutations_with_the_csrf_token_pass(alice_csrf_client, alice_alloc):
    alice_csrf_client.get("/portal/")
    token = alice_csrf_client.cookies["csrftoken"].value
    response = alice_csrf_client.post(
        "/api/me/keys",
        data=json.dumps({"name": "x", "allocations": [str(alice_alloc.pk)]}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201


def test_create_key_returns_the_plaintext_once(alice_client, alice_alloc):
    response = _json(alice_client, "post", "/api/me/keys", {"name": " laptop ", "allocations": [str(alice_alloc.pk)]})
    assert response.status_code == 201
    body = response.json()
    assert {"id", "name", "prefix", "allocations", "key"} <= set(body)
    assert body["name"] == "laptop"
    assert body["allocations"] == [str(alice_alloc.pk)]
    assert body["key"].startswith("sk-gw-") and len(body["key"]) == 6 + 43
    assert body["prefix"] == body["key"][:12]
    listed = alice_client.get("/api/me/keys").json()["results"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0]
    assert body["key"] not in alice_client.get("/api/me/keys").content.decode()
    assert AuditEvent.objects.filter(action="key_created", target_id=body["id"]).exists()


def test_rename_rotate_and_revoke_a_key(alice_client, alice, alice_alloc):
    key, old_plaintext = make_key(member=alice, allocations=[alice_alloc], name="old")
    renamed = _json(alice_client, "patch", f"/api/me/keys/{key.pk}", {"name": "new"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "new"
    rotated = alice_client.post(f"/api/me/keys/{key.pk}/rotate")
    assert rotated.status_code == 200
    assert rotated.json()["key"] != old_plaintext
    assert rotated.json()["name"] == "new" and rotated.json()["allocations"] == [str(alice_alloc.pk)]
    assert rotated.json()["prefix"] == rotated.json()["key"][:12]
    assert alice_client.delete(f"/api/me/keys/{key.pk}").status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert alice_client.get("/api/me/keys").json()["results"] == []
    # A revoked key is gone for the member: every verb answers 404.
    assert alice_client.delete(f"/api/me/keys/{key.pk}").status_code == 404
    assert alice_client.post(f"/api/me/keys/{key.pk}/rotate").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allocations": ["x"]}, "name"),
        ({"name": "", "allocations": []}, "name"),
        ({"name": "k" * 101, "allocations": []}, "name"),
        ({"name": 7, "allocations": []}, "name"),
        ({"name": "k"}, "allocations"),
        ({"name": "k", "allocations": []}, "allocations"),
        ({"name": "k", "allocations": "abc"}, "allocations"),
        ({"name": "k", "allocations": ["not-a-uuid"]}, "allocations"),
        ({"name": "k", "allocations": [1]}, "allocations"),
        ({"name": "k", "allocations": [], "scope": "all"}, "scope"),
    ],
)
def test_bad_key_bodies_are_400_with_fields(alice_client, alice_alloc, body, field):
    response = _json(alice_client, "post", "/api/me/keys", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in error["fields"]


def test_a_non_object_body_is_400(alice_client):
    response = alice_client.post("/api/me/keys", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400
    response = alice_client.post("/api/me/keys", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_a_key_with_two_allocations_of_one_model_is_a_conflict(alice_client, alice, alice_alloc):
    twin = AllocationFactory(member=alice, model=alice_alloc.model)
    response = _json(
        alice_client, "post", "/api/me/keys", {"name": "k", "allocations": [str(alice_alloc.pk), str(twin.pk)]}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "scope_conflict"


def test_a_revoked_allocation_cannot_join_a_key(alice_client, alice):
    revoked = AllocationFactory(member=alice, status=Allocation.Status.REVOKED)
    response = _json(alice_client, "post", "/api/me/keys", {"name": "k", "allocations": [str(revoked.pk)]})
    assert response.status_code == 400
    assert "allocations" in response.json()["error"]["fields"]


def test_patch_rejects_unknown_fields(alice_client, alice, alice_alloc):
    key, _ = make_key(member=alice, allocations=[alice_alloc])
    response = _json(alice_client, "patch", f"/api/me/keys/{key.pk}", {"name": "n", "allocations": []})
    assert response.status_code == 400
    assert "allocations" in response.json()["error"]["fields"]


# --- isolation: member A never reaches member B's objects ---------------------------------------


def _bob_objects(bob_alloc):
    key, _ = make_key(member=bob_alloc.member, allocations=[bob_alloc], name="bob key")
    settle_call(bob_alloc, cost_usd="1")
    return key


def test_another_members_ids_answer_404_for_every_endpoint_and_verb(alice_client, alice_alloc, bob_alloc):
    key = _bob_objects(bob_alloc)
    a, k = bob_alloc.pk, key.pk
    attempts = [
        ("get", f"/api/me/allocations/{a}", None),
        ("post", f"/api/me/allocations/{a}/pause", None),
        ("post", f"/api/me/allocations/{a}/resume", None),
        ("get", f"/api/me/calls?allocation={a}", None),
        ("get", f"/api/me/usage?allocation={a}", None),
        ("post", "/api/me/keys", {"name": "steal", "allocations": [str(a)]}),
        ("post", "/api/me/keys", {"name": "steal", "allocations": [str(alice_alloc.pk), str(a)]}),
        ("get", f"/api/me/keys/{k}", None),
        ("patch", f"/api/me/keys/{k}", {"name": "mine now"}),
        ("delete", f"/api/me/keys/{k}", None),
        ("post", f"/api/me/keys/{k}/rotate", None),
    ]
    for method, path, body in attempts:
        response = _json(alice_client, method, path, body)
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    bob_alloc.refresh_from_db()
    key.refresh_from_db()
    assert bob_alloc.status == "active"
    assert key.name == "bob key" and key.revoked_at is None
    assert not ApiKey.objects.filter(name="steal").exists()


def test_lists_hold_only_the_members_own_objects(alice_client, alice_alloc, bob_alloc):
    _bob_objects(bob_alloc)
    settle_call(alice_alloc, cost_usd="2")
    allocations = alice_client.get("/api/me/allocations").json()["results"]
    assert [a["id"] for a in allocations] == [str(alice_alloc.pk)]
    keys = alice_client.get("/api/me/keys").json()["results"]
    assert all(k["allocations"] == [str(alice_alloc.pk)] for k in keys)
    calls = alice_client.get("/api/me/calls").json()["results"]
    assert [c["allocation"] for c in calls] == [str(alice_alloc.pk)]
    for group_by in ("day", "model", "allocation"):
        rows = alice_client.get(f"/api/me/usage?group_by={group_by}").json()["results"]
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("2")


# --- pause / resume -----------------------------------------------------------------------------


def test_member_pauses_and_resumes_own_allocation(alice_client, alice_alloc):
    paused = alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    alice_alloc.refresh_from_db()
    assert alice_alloc.paused_by == "member"
    resumed = alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"


def test_a_member_cannot_resume_an_admins_pause(alice_client, alice_alloc, staff):
    allocation_pause(allocation=alice_alloc, by="admin", actor=staff, reason="budget review")
    response = alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/resume")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    alice_alloc.refresh_from_db()
    assert alice_alloc.status == "paused" and alice_alloc.paused_by == "admin"


def test_pausing_twice_or_resuming_an_active_allocation_is_a_conflict(alice_client, alice_alloc):
    assert alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/resume").status_code == 409
    alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/pause")
    assert alice_client.post(f"/api/me/allocations/{alice_alloc.pk}/pause").status_code == 409


# --- usage and calls ----------------------------------------------------------------------------


def test_usage_groups_by_day_model_and_allocation(alice_client, alice, alice_alloc):
    other = AllocationFactory(member=alice, model=CatalogModelFactory(slug="sim/unpriced"))
    day1 = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 3, 5, 12, tzinfo=dt.UTC)
    settle_call(alice_alloc, cost_usd="0.000123", when=day1)
    settle_call(alice_alloc, cost_usd="1.5", when=day2)
    settle_call(other, input_tokens=10, when=day2)
    reject_call(alice_alloc, when=day2)
    base = "/api/me/usage?from=2026-03-01&to=2026-03-31"
    days = alice_client.get(base + "&group_by=day").json()
    assert days["from"] == "2026-03-01" and days["to"] == "2026-03-31"
    assert [(r["day"], r["cost_usd"], r["calls"]) for r in days["results"]] == [
        ("2026-03-02", "0.000123000", 1),
        ("2026-03-05", "1.500000000", 3),
    ]
    models = {r["model"]: r for r in alice_client.get(base + "&group_by=model").json()["results"]}
    assert models["sim/unpriced"]["cost_usd"] is None  # only unpriced calls: null, never "0.000000000"
    assert models["sim/unpriced"]["unpriced_calls"] == 1
    assert models["openai/gpt-4o-mini"]["unpriced_calls"] == 0
    assert models["openai/gpt-4o-mini"]["calls"] == 3
    allocations = alice_client.get(base + "&group_by=allocation").json()["results"]
    assert {r["allocation"] for r in allocations} == {str(alice_alloc.pk), str(other.pk)}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("from=2026-03-10&to=2026-03-01", "to"),
        ("from=2024-01-01&to=2026-01-01", "to"),
        ("group_by=week", "group_by"),
    ],
)
def test_bad_usage_queries_are_400_with_fields(alice_client, alice_alloc, query, field):
    response = alice_client.get("/api/me/usage?" + query)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_calls_are_keyset_paginated_newest_first(alice_client, alice_alloc):
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    same_time = start + dt.timedelta(hours=5)
    made = [settle_call(alice_alloc, cost_usd="0.01", when=start + dt.timedelta(hours=i)) for i in range(5)]
    made += [settle_call(alice_alloc, cost_usd="0.01", when=same_time) for _ in range(3)]  # ties on started_at
    seen, url = [], f"/api/me/calls?allocation={alice_alloc.pk}&limit=3"
    while url:
        body = alice_client.get(url).json()
        seen += [c["id"] for c in body["results"]]
        url = f"/api/me/calls?allocation={alice_alloc.pk}&limit=3&cursor={body['next']}" if body["next"] else None
    expected = [r.pk for r in sorted(made, key=lambda r: (r.started_at, r.pk), reverse=True)]
    assert seen == expected


def test_call_rows_show_cost_as_decimal_string_or_null_when_unpriced(alice_client, alice, alice_alloc):
    unpriced = AllocationFactory(member=alice)
    settle_call(alice_alloc, cost_usd="0.5")
    settle_call(unpriced, input_tokens=5)
    rows = {c["allocation"]: c for c in alice_client.get("/api/me/calls").json()["results"]}
    assert rows[str(alice_alloc.pk)]["cost_usd"] == "0.500000000"
    assert rows[str(alice_alloc.pk)]["priced"] is True
    assert rows[str(unpriced.pk)]["cost_usd"] is None
    assert rows[str(unpriced.pk)]["priced"] is False


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("cursor=%%%", 400, "cursor"),
        ("cursor=WzEsMl0", 400, "cursor"),
        ("limit=0", 400, "limit"),
        ("limit=abc", 400, "limit"),
        ("limit=1000", 400, "limit"),
        ("allocation=nope", 400, "allocation"),
    ],
)
def test_bad_call_queries_are_400_with_fields(alice_client, alice_alloc, query, status, field):
    response = alice_client.get("/api/me/calls?" + query)
    assert response.status_code == status
    assert field in response.json()["error"]["fields"]


def test_an_unknown_allocation_filter_is_404(alice_client, alice_alloc):
    assert alice_client.get("/api/me/calls?allocation=00000000-0000-0000-0000-000000000000").status_code == 404


def test_usage_can_be_filtered_to_one_allocation(alice_client, alice, alice_alloc):
    other = AllocationFactory(member=alice)
    settle_call(alice_alloc, cost_usd="1")
    settle_call(other, input_tokens=7)
    rows = alice_client.get(f"/api/me/usage?group_by=allocation&allocation={other.pk}").json()["results"]
    assert [(r["allocation"], r["tokens"]) for r in rows] == [(str(other.pk), 7)]


def test_the_allocation_list_costs_the_same_queries_for_one_or_many(alice_client, alice):
    def add_allocation():
        allocation = AllocationFactory(member=alice)
        dollar_price(allocation.model)
        settle_call(allocation, cost_usd="1")
        make_key(member=alice, allocations=[allocation])

    def count():
        with CaptureQueriesContext(connection) as ctx:
            assert alice_client.get("/api/me/allocations").status_code == 200
        return len(ctx)

    add_allocation()
    one = count()
    for _ in range(5):
        add_allocation()
    assert count() == one


def test_the_price_shown_is_the_latest_version_in_force(alice_client, alice_alloc):
    PriceVersionFactory(
        model=alice_alloc.model, effective_from=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), input_per_1m=Decimal("3")
    )
    PriceVersionFactory(
        model=alice_alloc.model, effective_from=dt.datetime(2999, 1, 1, tzinfo=dt.UTC), input_per_1m=Decimal("9")
    )
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["price"]["input_per_1m"] == "3.000000000"


def test_a_unit_price_is_described_per_unit(alice_client, alice):
    allocation = AllocationFactory(member=alice, model=CatalogModelFactory(kind="image"))
    PriceVersionFactory(
        model=allocation.model, input_per_1m=None, output_per_1m=None, unit="image", price_per_unit=Decimal("0.04")
    )
    [row] = alice_client.get("/api/me/allocations").json()["results"]
    assert row["price"] == {"unit": "image", "price_per_unit": "0.040000000"}
    card = alice_client.get("/portal/").content.decode()
    assert "$0.04 per image" in card
