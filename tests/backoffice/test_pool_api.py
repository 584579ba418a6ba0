"""The pool through the admin API (/api/admin/pool) and through Django admin."""

import datetime as dt

import pytest

from allocations.models import Allocation, AuditEvent
from allocations.services import admin_token_create
from quota.models import UsageCounter
from quota.periods import previous_period_start
from quota.pool_models import AnomalyConfig, PoolConfig, RebalanceLog
from tests.factories import AllocationFactory, MemberFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def trio(db):
    """Three pool allocations that used 5:3:2 last period."""
    last = previous_period_start(dt.datetime.now(dt.UTC)).date()
    allocations = [AllocationFactory(quota_tokens_per_month=1) for _ in range(3)]
    for allocation, tokens in zip(allocations, (5, 3, 2), strict=True):
        UsageCounter.objects.create(allocation=allocation, period_start=last, tokens_used=tokens)
    PoolConfig.objects.create(pk=1, total_tokens_per_month=1000, floor_per_allocation=100)
    return allocations


def quotas(allocations):
    return [Allocation.objects.get(pk=a.pk).quota_tokens_per_month for a in allocations]


def test_anonymous_gets_401_and_a_member_gets_403_in_the_error_envelope(client, member):
    response = client.get("/api/admin/pool")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    client.force_login(member)
    response = client.patch("/api/admin/pool", {"total_tokens_per_month": 5}, content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert client.post("/api/admin/pool/rebalance").status_code == 403
    assert PoolConfig.objects.filter(total_tokens_per_month=5).count() == 0


def test_staff_reads_the_pool_overview(admin_client, trio):
    AllocationFactory(is_service_allocation=True, quota_tokens_per_month=200)
    body = admin_client.get("/api/admin/pool").json()
    assert body["total_tokens_per_month"] == 1000
    assert (body["reserved"], body["distributable"], body["pool_size"]) == (200, 800, 3)
    assert body["last_run"] is None
    assert body["suggested_total_tokens_per_month"] == 200 + 300  # reserved + max(floor × N, usage × 1.2)


def test_patch_updates_the_config_with_an_audit_event_and_rejects_bad_fields(admin_client, trio):
    response = admin_client.patch(
        "/api/admin/pool", {"total_tokens_per_month": 3000000000}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["total_tokens_per_month"] == 3_000_000_000
    event = AuditEvent.objects.get(action="pool_config_updated")
    assert (event.before, event.after, event.source_ip) == (
        {"total_tokens_per_month": 1000},
        {"total_tokens_per_month": 3_000_000_000},
        "127.0.0.1",
    )
    bad = admin_client.patch("/api/admin/pool", {"floor_per_allocation": -5}, content_type="application/json")
    assert bad.status_code == 400
    assert list(bad.json()["error"]["fields"]) == ["floor_per_allocation"]
    unknown = admin_client.patch("/api/admin/pool", {"colour": "red"}, content_type="application/json")
    assert unknown.status_code == 400
    assert "colour" in unknown.json()["error"]["fields"]
    assert AuditEvent.objects.filter(action="pool_config_updated").count() == 1


def test_preview_shows_the_plan_without_writing(admin_client, trio):
    body = admin_client.get("/api/admin/pool/preview").json()
    assert body["refused"] is None
    assert sorted(row["quota_after"] for row in body["allocations"]) == [240, 310, 450]
    assert quotas(trio) == [1, 1, 1]
    assert not RebalanceLog.objects.exists()


def test_rebalance_through_the_api_with_an_admin_token(client, staff, trio):
    token = admin_token_create(user=staff)
    response = client.post("/api/admin/pool/rebalance", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"
    assert quotas(trio) == [450, 310, 240]
    assert RebalanceLog.objects.get().actor == staff
    assert AuditEvent.objects.get(action="quota_pool_rebalanced").actor_label == "admin"


def test_a_refused_rebalance_answers_409_and_is_audited(admin_client, trio):
    PoolConfig.objects.filter(pk=1).update(total_tokens_per_month=250)
    response = admin_client.post("/api/admin/pool/rebalance")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "rebalance_refused"
    assert "distributable 250" in response.json()["error"]["message"]
    assert AuditEvent.objects.filter(action="quota_pool_rebalance_refused").count() == 1
    assert admin_client.get("/api/admin/pool/preview").json()["refused"].startswith("distributable 250")


# --- Django admin ----------------------------------------------------------------------------------


def test_the_admin_page_shows_t_reserved_distributable_pool_size_last_run_and_a_suggestion(admin_client, trio):
    page = admin_client.get("/admin/quota/poolconfig/1/change/").content.decode()
    for text in ("Reserved", "Distributable", "Pool size", "Suggested T", "Last run", "never"):
        assert text in page


def test_admin_previews_then_runs_a_rebalance(admin_client, trio):
    preview = admin_client.get("/admin/quota/poolconfig/rebalance/")
    assert preview.status_code == 200
    assert "<td>450</td>" in preview.content.decode()
    assert quotas(trio) == [1, 1, 1]
    response = admin_client.post("/admin/quota/poolconfig/rebalance/")
    log = RebalanceLog.objects.get()
    assert response.status_code == 302
    assert response.url == f"/admin/quota/rebalancelog/{log.pk}/change/"
    assert (log.trigger, log.outcome) == ("admin", "applied")
    assert quotas(trio) == [450, 310, 240]
    assert admin_client.get(response.url).status_code == 200


def test_the_admin_action_leads_to_the_preview(admin_client, trio):
    response = admin_client.post(
        "/admin/quota/poolconfig/", {"action": "rebalance_with_preview", "_selected_action": ["1"]}
    )
    assert response.status_code == 302
    assert response.url == "/admin/quota/poolconfig/rebalance/"


def test_admin_edits_of_the_configs_are_audited(admin_client, trio):
    response = admin_client.post(
        "/admin/quota/poolconfig/1/change/", {"total_tokens_per_month": "2000", "floor_per_allocation": "100"}
    )
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="pool_config_updated").after == {"total_tokens_per_month": 2000}
    admin_client.get("/admin/quota/anomalyconfig/")
    response = admin_client.post(
        "/admin/quota/anomalyconfig/1/change/",
        {
            "enabled": "",
            "paused_until_0": "",
            "paused_until_1": "",
            "min_calls": "100",
            "multiplier": "10",
            "sparse_baseline_calls": "200",
            "sparse_absolute_calls": "10000",
        },
    )
    assert response.status_code == 302
    assert AnomalyConfig.load().enabled is False
    assert AuditEvent.objects.get(action="anomaly_config_updated").after == {"enabled": False}


def test_members_cannot_reach_the_admin_pages(client, trio):
    client.force_login(MemberFactory(username="carol"))
    assert client.get("/admin/quota/poolconfig/rebalance/").status_code == 302  # to the admin login
    assert client.post("/admin/quota/poolconfig/rebalance/").status_code == 302
    assert not RebalanceLog.objects.exists()


def test_the_admin_preview_says_when_a_rebalance_would_be_refused(admin_client, trio):
    PoolConfig.objects.filter(pk=1).update(total_tokens_per_month=0)
    page = admin_client.get("/admin/quota/poolconfig/rebalance/").content.decode()
    assert "This rebalance would be refused: the pool is off" in page
    admin_client.post("/admin/quota/poolconfig/rebalance/")
    assert RebalanceLog.objects.get().outcome == "refused"
    assert quotas(trio) == [1, 1, 1]
    assert admin_client.get("/api/admin/pool").json()["last_run"]["outcome"] == "refused"
