"""Django admin for allocations (usage columns, cap form, actions), prices (add-only) and call records."""

import datetime as dt
import io
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from allocations.access import key_scope
from allocations.exceptions import Unauthorized
from allocations.models import Allocation, ApiKey, AuditEvent, Member
from quota.models import CallRecord, PriceVersion, UsageCounter
from quota.periods import period_start_date
from tests.factories import AllocationFactory, CatalogModelFactory, ProviderFactory, audit_actions

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]


def use(allocation, *, tokens=0, cost="0"):
    UsageCounter.objects.create(
        allocation=allocation,
        period_start=period_start_date(timezone.now()),
        tokens_used=tokens,
        cost_used=Decimal(cost),
    )


def change_form(allocation, **overrides) -> dict:
    form = {
        "display_name": allocation.display_name,
        "quota_tokens_per_month": ""
        if allocation.quota_tokens_per_month is None
        else allocation.quota_tokens_per_month,
        "quota_cost_usd_per_month": ""
        if allocation.quota_cost_usd_per_month is None
        else allocation.quota_cost_usd_per_month,
        "note": allocation.note,
    }
    if allocation.is_service_allocation:
        form["is_service_allocation"] = "on"
    return {**form, **overrides}


# --- list --------------------------------------------------------------------------------------------


def test_over_the_cap_reads_blocked_and_is_marked_apart_from_near(admin_client, member):
    near = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("10"))
    over = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("2"), quota_tokens_per_month=100)
    use(near, cost="8")
    use(over, tokens=40, cost="2.4")
    page = admin_client.get(reverse("admin:allocations_allocation_changelist")).content.decode()
    assert '<strong class="cap-mark cap-over">blocked: over cap</strong>' in page
    assert page.count("blocked: over cap") == 1  # the near one is still "active"
    assert '<span class="cap-mark cap-over">$2.40 / $2.00 (120 %) <strong>over cap</strong>' in page
    assert '<span class="cap-mark cap-near">$8.00 / $10.00 (80 %) <span>near cap</span>' in page
    assert "40 / 100 (40 %)</td>" in page  # the token quota is far: unmarked
    assert f'href="/admin/members/{member.pk}/"' in page  # the member page, one click away


def test_the_change_page_of_a_capped_allocation_shows_its_marks_as_html_not_text(admin_client, member):
    over = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("2"))
    use(over, cost="2.4")
    page = admin_client.get(reverse("admin:allocations_allocation_change", args=[over.pk])).content.decode()
    assert "&lt;" not in page.split('<div class="readonly">', 1)[1].split("</form>")[0]
    assert "<strong>over cap</strong>" in page


def test_the_list_shows_member_model_status_usage_spend_cap_and_percent(admin_client, member):
    allocation = AllocationFactory(
        member=member,
        model=CatalogModelFactory(slug="sim/chat", provider=ProviderFactory(kind="simulated")),
        quota_tokens_per_month=1000,
        quota_cost_usd_per_month=Decimal("10"),
    )
    use(allocation, tokens=250, cost="9.5")
    page = admin_client.get(reverse("admin:allocations_allocation_changelist")).content.decode()
    assert "alice" in page and "sim/chat" in page and ">simulated</span>" in page and "active" in page
    assert "250 / 1,000 (25 %)" in page
    assert '<span class="cap-mark cap-near">$9.50 / $10.00 (95 %) <span>near cap</span>' in page
    assert "cap-over" not in page and "blocked" not in page


def test_an_allocation_far_from_its_caps_is_not_highlighted_and_no_cap_reads_as_such(admin_client, allocation):
    use(allocation, tokens=5, cost="0.01")
    page = admin_client.get(reverse("admin:allocations_allocation_changelist")).content.decode()
    assert "5 / unlimited" in page and "$0.01 / no cap" in page
    assert "cap-near" not in page and "cap-over" not in page


def test_the_list_costs_a_fixed_number_of_queries_whatever_its_length(admin_client, member):
    for _ in range(3):
        AllocationFactory(member=member)
    url = reverse("admin:allocations_allocation_changelist")
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for _ in range(10):
        use(AllocationFactory(member=member), tokens=1)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(url)
    assert len(many.captured_queries) == len(few.captured_queries)


def test_the_list_filters_and_searches(admin_client, member, other_member):
    AllocationFactory(member=member, model=CatalogModelFactory(slug="x/alpha"))
    paused = AllocationFactory(member=other_member, model=CatalogModelFactory(slug="x/beta"), status="paused")
    url = reverse("admin:allocations_allocation_changelist")
    assert list(admin_client.get(url, {"status__exact": "paused"}).context["cl"].result_list) == [paused]
    assert list(admin_client.get(url, {"q": "bob"}).context["cl"].result_list) == [paused]
    assert list(admin_client.get(url, {"model__kind__exact": "chat", "q": "alpha"}).context["cl"].result_list) != []


# --- change form: caps through the service -------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "abc", "1e400", str(10**20), "NaN", "1e12"])
def test_a_bad_cost_cap_is_a_field_error_and_nothing_is_saved(admin_client, allocation, value):
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    response = admin_client.post(url, change_form(allocation, quota_cost_usd_per_month=value, note="changed"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "quota_cost_usd_per_month" in errors
    allocation.refresh_from_db()
    assert allocation.quota_cost_usd_per_month is None and allocation.note == ""
    assert audit_actions() == []


@pytest.mark.parametrize("value", ["-1", "abc", "1e400", str(10**20), "1.5"])
def test_a_bad_token_quota_is_a_field_error(admin_client, allocation, value):
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    response = admin_client.post(url, change_form(allocation, quota_tokens_per_month=value))
    assert response.status_code == 200
    assert "quota_tokens_per_month" in response.context["adminform"].form.errors
    assert Allocation.objects.get(pk=allocation.pk).quota_tokens_per_month is None


def test_changing_the_cap_is_audited_with_before_and_after(admin_client, allocation, staff):
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    response = admin_client.post(url, change_form(allocation, quota_cost_usd_per_month="12.5"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Allocation.objects.get(pk=allocation.pk).quota_cost_usd_per_month == Decimal("12.5")
    event = AuditEvent.objects.get()
    assert event.action == "allocation_cost_quota_updated" and event.actor == staff
    assert event.before == {"quota_cost_usd_per_month": None}
    assert event.after == {"quota_cost_usd_per_month": "12.500000000"}
    assert event.source_ip == "127.0.0.1"


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_cap_means_no_cap(admin_client, allocation, blank):
    Allocation.objects.filter(pk=allocation.pk).update(quota_cost_usd_per_month=Decimal(3), quota_tokens_per_month=9)
    allocation.refresh_from_db()
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    response = admin_client.post(
        url, change_form(allocation, quota_cost_usd_per_month=blank, quota_tokens_per_month=blank)
    )
    assert response.status_code == 302
    allocation.refresh_from_db()
    assert allocation.quota_cost_usd_per_month is None and allocation.quota_tokens_per_month is None
    assert sorted(audit_actions()) == ["allocation_cost_quota_updated", "allocation_token_quota_updated"]


def test_saving_an_unchanged_form_audits_nothing(admin_client, allocation):
    Allocation.objects.filter(pk=allocation.pk).update(quota_cost_usd_per_month=Decimal(3))
    allocation.refresh_from_db()
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    form_page = admin_client.get(url)
    assert form_page.context["adminform"].form.initial["quota_cost_usd_per_month"] == "3"
    assert admin_client.post(url, change_form(allocation, quota_cost_usd_per_month="3")).status_code == 302
    assert audit_actions() == []


def test_allocations_cannot_be_deleted_in_admin(admin_client, allocation):
    assert admin_client.get(reverse("admin:allocations_allocation_delete", args=[allocation.pk])).status_code == 403


# --- add form -----------------------------------------------------------------------------------------


def test_adding_an_allocation_creates_it_through_the_service_and_shows_the_key_once(admin_client, member):
    model = CatalogModelFactory()
    response = admin_client.post(
        reverse("admin:allocations_allocation_add"),
        {
            "member": member.pk,
            "model": model.pk,
            "display_name": "",
            "quota_tokens_per_month": "",
            "quota_cost_usd_per_month": "5",
        },
    )
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    allocation = Allocation.objects.get(member=member, model=model)
    assert allocation.quota_cost_usd_per_month == Decimal(5)
    shown = [str(m) for m in get_messages(response.wsgi_request) if "sk-gw-" in str(m)]
    assert len(shown) == 1
    plaintext = shown[0].rsplit(" ", 1)[-1]
    assert key_scope(plaintext).allocations[0].allocation_id == str(allocation.pk)
    assert ApiKey.objects.get(is_default=True, member=member).key_hash == ApiKey.hash(plaintext)
    assert audit_actions() == ["allocation_created", "key_created"]


def test_a_bad_cap_on_the_add_form_creates_nothing(admin_client, member):
    response = admin_client.post(
        reverse("admin:allocations_allocation_add"),
        {"member": member.pk, "model": CatalogModelFactory().pk, "quota_cost_usd_per_month": "-1"},
    )
    assert response.status_code == 200
    assert not Allocation.objects.exists() and audit_actions() == []


# --- actions -------------------------------------------------------------------------------------------


def act(admin_client, action, *allocations):
    return admin_client.post(
        reverse("admin:allocations_allocation_changelist"),
        {"action": action, "_selected_action": [a.pk for a in allocations], "confirmed": "yes"},  # revoke asks
        follow=True,
    )


def test_pause_resume_revoke_actions_call_the_services(admin_client, allocation):
    act(admin_client, "pause", allocation)
    assert Allocation.objects.get(pk=allocation.pk).status == "paused"
    assert Allocation.objects.get(pk=allocation.pk).paused_by == "admin"
    act(admin_client, "resume", allocation)
    assert Allocation.objects.get(pk=allocation.pk).status == "active"
    act(admin_client, "revoke", allocation)
    assert Allocation.objects.get(pk=allocation.pk).status == "revoked"
    assert audit_actions() == ["allocation_paused", "allocation_resumed", "allocation_revoked"]


def test_an_invalid_transition_is_reported_and_the_others_still_happen(admin_client, member):
    active, revoked = AllocationFactory(member=member), AllocationFactory(member=member, status="revoked")
    response = act(admin_client, "pause", active, revoked)
    text = response.content.decode()
    assert "cannot pause an allocation that is revoked" in text and "1 allocation(s) paused" in text
    assert Allocation.objects.get(pk=active.pk).status == "paused"
    assert Allocation.objects.get(pk=revoked.pk).status == "revoked"


def test_unquarantine_action(admin_client, member):
    allocation = AllocationFactory(member=member, status="quarantined")
    act(admin_client, "unquarantine", allocation)
    assert Allocation.objects.get(pk=allocation.pk).status == "active"
    assert audit_actions() == ["allocation_unquarantined"]


def test_rotate_default_key_action_shows_the_new_key_once_and_kills_the_old(admin_client, member):
    from allocations.services import allocation_create

    allocation, _key, old = allocation_create(member=member, model=CatalogModelFactory())
    response = act(admin_client, "rotate_default_key", allocation)
    new = [str(m) for m in response.context["messages"] if "sk-gw-" in str(m)][0].rsplit(" ", 1)[-1]
    with pytest.raises(Unauthorized):
        key_scope(old)
    assert key_scope(new)
    assert audit_actions()[-1] == "key_rotated"


# --- prices and call records ----------------------------------------------------------------------------


def test_prices_are_add_only_and_added_through_the_service(admin_client, staff):
    model = CatalogModelFactory()
    response = admin_client.post(
        reverse("admin:quota_priceversion_add"),
        {
            "model": model.pk,
            "effective_from_0": "",
            "effective_from_1": "",
            "input_per_1m": "0.15",
            "output_per_1m": "0.6",
            "unit": "",
        },
    )
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    version = PriceVersion.objects.get()
    assert version.input_per_1m == Decimal("0.15")
    assert audit_actions() == ["price_version_added"]
    change = admin_client.post(reverse("admin:quota_priceversion_change", args=[version.pk]), {"input_per_1m": "9"})
    assert change.status_code == 403
    assert admin_client.get(reverse("admin:quota_priceversion_delete", args=[version.pk])).status_code == 403
    assert PriceVersion.objects.get().input_per_1m == Decimal("0.15")


@pytest.mark.parametrize(
    "fields",
    [{"unit": "image"}, {"unit": "image", "price_per_unit": "1", "input_per_1m": "1"}, {"input_per_1m": "-1"}, {}],
)
def test_a_bad_price_is_a_form_error_and_adds_nothing(admin_client, fields):
    data = {"model": CatalogModelFactory().pk, "effective_from_0": "", "effective_from_1": "", "unit": "", **fields}
    response = admin_client.post(reverse("admin:quota_priceversion_add"), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert not PriceVersion.objects.exists() and audit_actions() == []


def test_call_records_are_read_only_and_listed_without_a_full_count(admin_client, allocation):
    record = CallRecord.objects.create(
        request_id="req-1",
        allocation=allocation,
        member=allocation.member,
        model=allocation.model,
        endpoint="chat.completions",
        started_at=timezone.now() - dt.timedelta(seconds=1),
        outcome="success",
        input_tokens=3,
    )
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(reverse("admin:quota_callrecord_changelist"))
    assert b"req-1" in page.content and b"unpriced" in page.content
    over_calls = [q["sql"] for q in queries.captured_queries if "callrecord" in q["sql"]]
    assert over_calls and not [sql for sql in over_calls if "COUNT(" in sql.upper()]
    assert admin_client.get(reverse("admin:quota_callrecord_add")).status_code == 403
    assert admin_client.get(reverse("admin:quota_callrecord_delete", args=[record.pk])).status_code == 403
    assert (
        admin_client.post(reverse("admin:quota_callrecord_change", args=[record.pk]), {"outcome": "x"}).status_code
        == 403
    )


def test_every_admin_page_of_the_gateway_renders_for_a_superuser(admin_client):
    from django.contrib import admin as django_admin
    from django.core.management import call_command

    call_command("seed_demo", stdout=io.StringIO())
    admin_client.force_login(Member.objects.get(username="admin"))  # seed_demo set a new password
    ours = [m for m in django_admin.site._registry if m._meta.app_label in ("allocations", "quota")]
    assert len(ours) >= 9
    for model in ours:
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        assert admin_client.get(reverse(f"{name}_changelist")).status_code == 200, name
        add = admin_client.get(reverse(f"{name}_add")).status_code
        assert add in (200, 403), name
        obj = model._default_manager.first()
        if obj is not None:
            assert admin_client.get(reverse(f"{name}_change", args=[obj.pk])).status_code == 200, name


def test_the_usage_filter_finds_allocations_near_or_over_a_cap(admin_client, member):
    near_cost = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("10"))
    use(near_cost, cost="8.5")
    over_tokens = AllocationFactory(member=member, quota_tokens_per_month=100)
    use(over_tokens, tokens=100)
    blocked = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("0"))
    far = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("10"), quota_tokens_per_month=1000)
    use(far, tokens=10, cost="1")
    AllocationFactory(member=member)  # no caps, no usage
    url = reverse("admin:allocations_allocation_changelist")
    near = set(admin_client.get(url, {"usage": "near"}).context["cl"].result_list)
    assert near == {near_cost, over_tokens, blocked}
    over = set(admin_client.get(url, {"usage": "over"}).context["cl"].result_list)
    assert over == {over_tokens, blocked}
