"""The admin REST API (/api/admin/, SPEC section 8): auth, objects, validation, audit, usage."""

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from allocations.access import key_scope
from allocations.exceptions import Unauthorized
from allocations.models import Allocation, ApiKey, AuditEvent, CatalogModel, Member, Provider
from allocations.services import admin_token_create, allocation_create
from portal.selectors import period_current, usage_grouped
from quota.models import CallRecord, PriceVersion, UsageCounter
from quota.periods import period_start_date
from tests.backoffice.conftest import changes, error_of
from tests.factories import AllocationFactory, CatalogModelFactory, ProviderFactory, make_key, roll_up_records

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]


# --- auth ------------------------------------------------------------------------------------------------

ENDPOINTS = ["members", "providers", "models", "prices", "allocations", "usage", "audit"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_nobody_gets_401_in_the_envelope(client, path):
    response = client.get(f"/api/admin/{path}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_member_session_gets_403(client, member, path):
    client.force_login(member)
    response = client.get(f"/api/admin/{path}")
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"


def test_a_non_staff_users_admin_token_gets_403_and_a_members_api_key_401(client, member, allocation):
    token = admin_token_create(user=member)
    response = client.get("/api/admin/allocations", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403
    _, plaintext = make_key(member=member, allocations=[allocation])
    response = client.post(
        "/api/admin/members",
        {"username": "x"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plaintext}",
    )
    assert response.status_code == 401 and not Member.objects.filter(username="x").exists()


def test_a_revoked_or_malformed_token_gets_401(client, staff, token):
    from allocations.models import AdminToken
    from allocations.services import admin_token_revoke

    admin_token_revoke(token=AdminToken.objects.get())
    assert client.get("/api/admin/audit", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert client.get("/api/admin/audit", HTTP_AUTHORIZATION="Basic abc").status_code == 401


def test_a_staff_session_needs_csrf_for_writes(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get("/api/admin/members").status_code == 200
    response = client.post("/api/admin/members", {"username": "x"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in error_of(response)["message"]
    client.get("/admin/")  # sets the csrftoken cookie
    csrf = client.cookies["csrftoken"].value
    response = client.post(
        "/api/admin/members", {"username": "x"}, content_type="application/json", HTTP_X_CSRFTOKEN=csrf
    )
    assert response.status_code == 201


# --- members, providers, models, prices ------------------------------------------------------------------


def test_members_create_list_and_disable(api, staff):
    response = api.post(
        "members", {"username": "Erin", "email": "e@x.org", "password": "long-pass-1", "is_staff": False}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["username"] == "erin" and isinstance(body["id"], str) and body["is_active"] is True
    assert "password" not in body
    assert Member.objects.get(username="erin").check_password("long-pass-1")
    response = api.patch(f"members/{body['id']}", {"is_active": False})
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert api.patch(f"members/{body['id']}", {"is_active": False, "username": "x"}).status_code == 400
    assert api.patch(f"members/{body['id']}", {"is_active": "no"}).status_code == 400
    assert not Member.objects.get(username="erin").is_staff
    assert api.patch("members/not-a-uuid", {"is_active": True}).status_code == 404
    assert list(AuditEvent.objects.filter(target_id=body["id"]).values_list("action", flat=True).order_by("id")) == [
        "member_created",
        "member_disabled",
    ]
    assert "erin" in [m["username"] for m in api.get("members").json()["results"]]


@pytest.mark.django_db(transaction=True)  # the auth generation moves on commit
def test_a_disabled_members_keys_stop_at_once(api, member, allocation):
    _, plaintext = make_key(member=member, allocations=[allocation])
    key_scope(plaintext)
    api.patch(f"members/{member.pk}", {"is_active": False})
    with pytest.raises(Unauthorized):
        key_scope(plaintext)


def test_member_create_validates(api, member):
    assert error_of(api.post("members", {"username": "ALICE"}))["fields"]["username"]
    assert error_of(api.post("members", {}))["fields"]["username"]
    assert error_of(api.post("members", {"username": "z", "nickname": "zz"}))["fields"]["nickname"]
    assert api.post("members", ["x"]).status_code == 400
    assert error_of(api.post("members", {"username": "z", "email": "not-an-email"}))["fields"]["email"]
    assert error_of(api.post("members", {"username": "z", "password": 12345}))["fields"]["password"]
    assert not Member.objects.filter(username="z").exists()


def test_providers_return_the_fingerprint_never_the_key(api):
    response = api.post(
        "providers", {"name": "oa", "kind": "openai", "base_url": "https://api.test/v1", "api_key": "sk-upstream-9"}
    )
    assert response.status_code == 201, response.content
    assert response.json()["fingerprint"] == ApiKey.hash("sk-upstream-9")[:12]
    listing = api.get("providers")
    for text in (response.content, listing.content):
        assert b"sk-upstream-9" not in text
    assert Provider.objects.get(name="oa").api_key_encrypted
    assert AuditEvent.objects.get(action="provider_created").after["fingerprint"] == response.json()["fingerprint"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "kind": "bogus", "base_url": "https://a.test"},
        {"name": "x", "kind": "openai", "base_url": "not a url"},
        {"name": "x", "kind": "openai", "base_url": "https://a.test", "secret": "y"},
        {"kind": "openai", "base_url": "https://a.test"},
    ],
)
def test_a_bad_provider_is_400_and_creates_nothing(api, body):
    assert api.post("providers", body).status_code == 400
    assert not Provider.objects.exists() and not changes().exists()


def test_models_by_provider_name_or_id(api):
    provider = ProviderFactory(name="simulated", kind="simulated")
    response = api.post("models", {"slug": "sim/a", "provider": "simulated", "upstream_name": "a", "kind": "chat"})
    assert response.status_code == 201, response.content
    assert response.json()["provider_kind"] == "simulated"
    response = api.post("models", {"slug": "sim/b", "provider": str(provider.pk), "upstream_name": "b", "kind": "ocr"})
    assert response.status_code == 201
    assert (
        api.post("models", {"slug": "sim/a", "provider": "simulated", "upstream_name": "a", "kind": "chat"}).status_code
        == 400
    )
    assert (
        api.post("models", {"slug": "sim/c", "provider": "nope", "upstream_name": "c", "kind": "chat"}).status_code
        == 400
    )
    assert (
        api.post("models", {"slug": "sim/c", "provider": "simulated", "upstream_name": "c", "kind": "x"}).status_code
        == 400
    )
    assert {m["slug"] for m in api.get("models").json()["results"]} == {"sim/a", "sim/b"}


def test_prices_are_appended_with_decimal_strings(api, staff):
    CatalogModelFactory(slug="sim/a")
    response = api.post(
        "prices",
        {"model": "sim/a", "input_per_1m": "0.15", "output_per_1m": 0.6, "effective_from": "2025-01-01T00:00:00Z"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input_per_1m"] == "0.150000000" and body["output_per_1m"] == "0.600000000"
    assert body["effective_from"].startswith("2025-01-01T00:00:00")
    assert api.post("prices", {"model": "sim/a", "unit": "image", "price_per_unit": "0.04"}).status_code == 201
    assert PriceVersion.objects.count() == 2
    assert [p["unit"] for p in api.get("prices", {"model": "sim/a"}).json()["results"]] == ["image", None]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "sim/none", "input_per_1m": "1"},
        {"model": "sim/a", "input_per_1m": "-1"},
        {"model": "sim/a", "input_per_1m": "abc"},
        {"model": "sim/a", "unit": "image"},
        {"model": "sim/a", "unit": "parsec", "price_per_unit": "1"},
        {"model": "sim/a", "input_per_1m": "1", "effective_from": "yesterday"},
        {"model": "sim/a", "input_per_1m": "1", "output_per_1k": "1"},
    ],
)
def test_a_bad_price_is_400_and_adds_nothing(api, body):
    CatalogModelFactory(slug="sim/a")
    response = api.post("prices", body)
    assert response.status_code == 400
    assert error_of(response)["fields"]
    assert not PriceVersion.objects.exists()


# --- allocations -----------------------------------------------------------------------------------------


def test_allocation_create_returns_the_object_and_the_key_once(api, member):
    CatalogModelFactory(slug="sim/chat")
    response = api.post(
        "allocations",
        {"member": "alice", "model": "sim/chat", "quota_tokens_per_month": 1000, "quota_cost_usd_per_month": "5"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("sk-gw-") and body["key_prefixes"] == [body["key"][:12]]
    assert body["quota_cost_usd_per_month"] == "5.000000000" and body["quota_tokens_per_month"] == 1000
    assert body["tokens_used_this_month"] == 0 and body["cost_used_this_month"] == "0.000000000"
    assert body["status"] == "active" and body["member"] == str(member.pk) and body["model"] == "sim/chat"
    assert key_scope(body["key"]).allocations[0].allocation_id == body["id"]
    detail = api.get(f"allocations/{body['id']}")
    assert "key" not in detail.json() and body["key"].encode() not in detail.content
    assert ApiKey.objects.get(key_hash=ApiKey.hash(body["key"])).prefix == body["key"][:12]


def test_allocation_create_by_member_id_and_validation(api, member):
    CatalogModelFactory(slug="sim/chat")
    assert api.post("allocations", {"member": str(member.pk), "model": "sim/chat"}).status_code == 201
    assert api.post("allocations", {"member": "nobody", "model": "sim/chat"}).status_code == 400
    assert api.post("allocations", {"member": "alice", "model": "sim/none"}).status_code == 400
    assert api.post("allocations", {"member": "alice", "model": "sim/chat", "status": "paused"}).status_code == 400
    bad = api.post("allocations", {"member": "alice", "model": "sim/chat", "quota_cost_usd_per_month": "-1"})
    assert error_of(bad)["fields"] == {"quota_cost_usd_per_month": ["Enter an amount in USD ≥ 0 (blank for no cap)."]}
    assert Allocation.objects.count() == 1


def test_allocation_objects_carry_this_months_usage(api, allocation):
    UsageCounter.objects.create(
        allocation=allocation, period_start=period_start_date(timezone.now()), tokens_used=42, cost_used=Decimal("1.5")
    )
    body = api.get(f"allocations/{allocation.pk}").json()
    assert body["tokens_used_this_month"] == 42 and body["cost_used_this_month"] == "1.500000000"
    assert api.get("allocations").json()["results"][0]["tokens_used_this_month"] == 42


BAD_CAPS = [-1, "-1", "abc", "1e400", 10**20, "NaN", True, "1e12"]


@pytest.mark.parametrize("value", BAD_CAPS)
def test_patch_with_a_bad_cost_cap_is_a_field_error_and_changes_nothing(api, allocation, value):
    response = api.patch(f"allocations/{allocation.pk}", {"quota_cost_usd_per_month": value, "note": "x"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "bad_request" and "quota_cost_usd_per_month" in error["fields"]
    allocation.refresh_from_db()
    assert allocation.quota_cost_usd_per_month is None and allocation.note == ""
    assert not changes().exists()


@pytest.mark.parametrize("value", [-1, "abc", "1e400", 10**20, 1.5])
def test_patch_with_a_bad_token_quota_is_a_field_error(api, allocation, value):
    response = api.patch(f"allocations/{allocation.pk}", {"quota_tokens_per_month": value})
    assert response.status_code == 400 and "quota_tokens_per_month" in error_of(response)["fields"]


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("0", "0E-9"), (12.5, "12.500000000")])
def test_patch_blank_or_null_clears_the_cap(api, allocation, value, expected):
    Allocation.objects.filter(pk=allocation.pk).update(quota_cost_usd_per_month=Decimal(3))
    response = api.patch(f"allocations/{allocation.pk}", {"quota_cost_usd_per_month": value})
    assert response.status_code == 200, response.content
    stored = Allocation.objects.get(pk=allocation.pk).quota_cost_usd_per_month
    assert (None if stored is None else str(stored)) == expected


def test_patch_with_an_unknown_field_is_400_and_changes_nothing(api, allocation):
    response = api.patch(f"allocations/{allocation.pk}", {"quota_tokens_per_month": 10, "status": "revoked"})
    assert response.status_code == 400
    assert "status" in error_of(response)["fields"]
    allocation.refresh_from_db()
    assert allocation.status == "active" and allocation.quota_tokens_per_month is None
    assert not changes().exists()


def test_patch_the_allowed_fields_audits_each_change(api, allocation, staff):
    response = api.patch(
        f"allocations/{allocation.pk}",
        {
            "quota_tokens_per_month": 10,
            "quota_cost_usd_per_month": "2",
            "is_service_allocation": True,
            "quota_locked": True,
            "note": "n",
            "display_name": "d",
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["quota_tokens_per_month"], body["quota_cost_usd_per_month"], body["note"]) == (10, "2.000000000", "n")
    assert sorted(changes().values_list("action", flat=True)) == [
        "allocation_cost_quota_updated",
        "allocation_token_quota_updated",
        "allocation_updated",
    ]
    assert set(changes().values_list("actor", flat=True)) == {staff.pk}


def test_actions_follow_the_state_rules(api, allocation):
    url = f"allocations/{allocation.pk}"
    assert api.post(f"{url}/pause").json()["status"] == "paused"
    conflict = api.post(f"{url}/pause")
    assert conflict.status_code == 409 and error_of(conflict)["code"] == "invalid_transition"
    assert api.post(f"{url}/resume").json()["status"] == "active"
    assert api.post(f"{url}/unquarantine").status_code == 409
    assert api.post(f"{url}/revoke").json()["status"] == "revoked"
    assert api.post(f"{url}/resume").status_code == 409
    assert api.post(f"{url}/explode").status_code == 404
    assert api.post("allocations/00000000-0000-0000-0000-000000000000/pause").status_code == 404
    assert list(changes().order_by("id").values_list("action", flat=True)) == [
        "allocation_paused",
        "allocation_resumed",
        "allocation_revoked",
    ]


def test_unquarantine_via_the_api(api, member):
    allocation = AllocationFactory(member=member, status="quarantined")
    assert api.post(f"allocations/{allocation.pk}/unquarantine").json()["status"] == "active"


def test_allocation_lists_filter_and_page_without_counting(api, member, other_member):
    for _ in range(3):
        AllocationFactory(member=member)
    AllocationFactory(member=other_member)
    first = api.get("allocations", {"member": "alice", "limit": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    second = api.get("allocations", {"member": "alice", "limit": 2, "cursor": first["next"]}).json()
    assert len(second["results"]) == 1 and second["next"] is None
    ids = [a["id"] for a in first["results"] + second["results"]]
    assert len(set(ids)) == 3
    assert api.get("allocations", {"cursor": "garbage"}).status_code == 400
    assert api.get("allocations", {"limit": "0"}).status_code == 400


# --- usage -------------------------------------------------------------------------------------------------


@pytest.fixture
def records(member, other_member):
    now = timezone.now()
    a = AllocationFactory(member=member, model=CatalogModelFactory(slug="sim/a"))
    b = AllocationFactory(member=other_member, model=CatalogModelFactory(slug="=b"))
    rows = [
        (a, 10, 5, Decimal("0.5"), now),
        (a, 1, 1, None, now),
        (b, 100, 0, Decimal("2"), now),
        (b, 100, 0, Decimal("9"), now - dt.timedelta(days=400)),
    ]
    for allocation, i, o, cost, when in rows:
        CallRecord.objects.create(
            request_id="r",
            allocation=allocation,
            member=allocation.member,
            model=allocation.model,
            endpoint="chat.completions",
            started_at=when,
            outcome="success",
            input_tokens=i,
            output_tokens=o,
            cost_usd=cost,
            priced=cost is not None,
        )
    roll_up_records()
    return a, b


def test_usage_by_member_this_month_by_default(api, records):
    body = api.get("usage", {"group_by": "member"}).json()
    rows = {r["member"]: r for r in body["results"]}
    assert rows["alice"]["calls"] == 2 and rows["alice"]["total_tokens"] == 17
    assert rows["alice"]["cost_usd"] == "0.500000000" and rows["alice"]["unpriced_calls"] == 1
    assert rows["bob"]["cost_usd"] == "2.000000000"  # last year's record is outside the month


def test_the_usage_report_and_the_portal_count_spend_and_unpriced_calls_by_one_rule(api, member):
    """Spend is the sum over priced records; a record marked unpriced counts as an unpriced call
    even when it holds a stray cost (SPEC 4: never summed as money), a reject carries no usage."""
    allocation = AllocationFactory(member=member)
    now = timezone.now()
    for request_id, tokens, cost, priced, outcome in (
        ("priced", 10, Decimal("0.25"), True, "success"),
        ("unpriced", 7, Decimal("9"), False, "success"),
        ("rejected", 0, None, False, "rejected_paused"),
    ):
        CallRecord.objects.create(
            request_id=request_id,
            allocation=allocation,
            member=member,
            model=allocation.model,
            endpoint="/v1/chat/completions",
            started_at=now,
            outcome=outcome,
            input_tokens=tokens,
            cost_usd=cost,
            priced=priced,
        )
    roll_up_records()
    [admin] = api.get("usage", {"group_by": "allocation"}).json()["results"]
    [portal] = usage_grouped(member=member, period=period_current(now), group_by="allocation")
    assert (admin["calls"], admin["unpriced_calls"], admin["cost_usd"]) == (3, 1, "0.250000000")
    assert (portal["calls"], portal["unpriced_calls"], portal["cost_usd"]) == (3, 1, "0.250000000")
    assert [r.request_id for r in CallRecord.objects.unpriced()] == ["unpriced"]
    assert sorted(r.request_id for r in CallRecord.objects.carrying_usage()) == ["priced", "unpriced"]
    assert [r.carries_usage for r in CallRecord.objects.order_by("id")] == [True, True, False]


def test_usage_by_model_and_allocation_with_a_range(api, records):
    a, b = records
    old = (timezone.now() - dt.timedelta(days=400)).date()
    body = api.get(
        "usage", {"group_by": "model", "from": old.isoformat(), "to": timezone.now().date().isoformat()}
    ).json()
    assert {r["model"]: r["cost_usd"] for r in body["results"]} == {"sim/a": "0.500000000", "=b": "11.000000000"}
    body = api.get("usage", {"group_by": "allocation"}).json()
    assert {r["allocation_id"] for r in body["results"]} == {str(a.pk), str(b.pk)}


@pytest.mark.parametrize("how", ["query", "accept"])
def test_usage_as_csv(api, records, how):
    if how == "query":
        response = api.get("usage", {"group_by": "model", "format": "csv"})
    else:
        response = api.get("usage", {"group_by": "model"}, HTTP_ACCEPT="text/csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="usage-by-model.csv"'
    assert response.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: spreadsheets then read zh-Hant names
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [r["model"] for r in rows] == ["'=b", "sim/a"] or [r["model"] for r in rows] == ["sim/a", "'=b"]
    assert {r["cost_usd"] for r in rows} == {"0.500000000", "2.000000000"}
    assert list(rows[0]) == [
        "model_id",
        "model",
        "calls",
        "unpriced_calls",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost_usd",
    ]


@pytest.mark.parametrize(
    "params", [{"group_by": "day"}, {"from": "not-a-date"}, {"from": "2025-02-01", "to": "2025-01-01"}]
)
def test_bad_usage_queries_are_400_in_json_even_when_csv_was_asked(api, params):
    response = api.get("usage", {**params, "format": "csv"})
    assert response.status_code == 400 and response["Content-Type"].startswith("application/json")
    assert error_of(response)["fields"]


# --- audit -------------------------------------------------------------------------------------------------


def test_audit_lists_newest_first_with_filters_and_pages(api, member):
    model = CatalogModelFactory()
    allocation, _key, _plaintext = allocation_create(member=member, model=model)
    api.post(f"allocations/{allocation.pk}/pause")
    api.patch(f"allocations/{allocation.pk}", {"quota_cost_usd_per_month": "3"})
    body = api.get("audit").json()
    actions = [e["action"] for e in body["results"]]
    assert actions[:2] == ["allocation_cost_quota_updated", "allocation_paused"]
    first = body["results"][0]
    assert set(first) >= {"action", "actor", "target_type", "target_id", "before", "after", "created_at"}
    assert (
        first["actor"] == "admin" and first["target_type"] == "allocation" and first["target_id"] == str(allocation.pk)
    )
    assert first["before"] == {"quota_cost_usd_per_month": None}
    filtered = api.get(
        "audit", {"action": "allocation_paused", "target_type": "allocation", "target_id": str(allocation.pk)}
    )
    assert [e["action"] for e in filtered.json()["results"]] == ["allocation_paused"]
    page1 = api.get("audit", {"limit": 1}).json()
    page2 = api.get("audit", {"limit": 1, "cursor": page1["next"]}).json()
    assert page1["results"][0]["id"] != page2["results"][0]["id"]
    assert page2["results"][0]["action"] == "allocation_paused"


def test_every_api_write_is_audited(api, member):
    before = AuditEvent.objects.count()
    api.post("members", {"username": "m1"})
    api.post("providers", {"name": "p1", "kind": "simulated"})
    api.post("models", {"slug": "p1/x", "provider": "p1", "upstream_name": "x", "kind": "chat"})
    api.post("prices", {"model": "p1/x", "input_per_1m": "1"})
    allocation_id = api.post("allocations", {"member": "m1", "model": "p1/x"}).json()["id"]
    api.patch(f"allocations/{allocation_id}", {"note": "n"})
    assert AuditEvent.objects.count() - before == 7  # + the default key
    assert CatalogModel.objects.filter(slug="p1/x").exists()


def test_a_form_encoded_body_is_refused_and_changes_nothing(api, allocation, token):
    response = api.client.patch(
        f"/api/admin/allocations/{allocation.pk}",
        "note=x",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 415
    assert error_of(response)["code"] == "bad_request"
    assert Allocation.objects.get(pk=allocation.pk).note == ""
