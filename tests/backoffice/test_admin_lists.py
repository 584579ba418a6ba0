"""Admin lists: call-record filters, search and columns; money at the portal's precision; distinct
filter titles; change messages; revoke asks first; the audit list names its targets."""

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry

from allocations.models import Allocation
from allocations.services import allocation_pause
from quota.models import CallRecord
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import dollar_price, settle_call

CALLS = "/admin/quota/callrecord/"


@pytest.fixture
def calls(db):
    mini, other = CatalogModelFactory(slug="openai/gpt-4o-mini"), CatalogModelFactory(slug="mistral/small")
    dollar_price(mini), dollar_price(other)
    mei = AllocationFactory(member=MemberFactory(username="mei"), model=mini, quota_cost_usd_per_month=Decimal("0.01"))
    ken = AllocationFactory(member=MemberFactory(username="ken"), model=other)
    key, _ = make_key(member=mei.member, allocations=[mei], name="laptop")
    march_3, march_9 = dt.datetime(2026, 3, 3, 9, tzinfo=dt.UTC), dt.datetime(2026, 3, 9, 9, tzinfo=dt.UTC)
    first = CallRecord.objects.get(pk=_id(settle_call(mei, cost_usd="0.0115", when=march_3)))
    CallRecord.objects.filter(pk=first.pk).update(api_key=key)
    first.refresh_from_db()
    second = CallRecord.objects.get(pk=_id(settle_call(ken, cost_usd="2", when=march_9)))
    return mei, ken, first, second


def _id(settled) -> int:
    return getattr(settled, "pk", settled)


def _ids(response) -> set:
    return {r.pk for r in response.context["cl"].result_list}


def test_call_records_filter_by_member_allocation_model_and_dates(admin_client, calls):
    mei, ken, first, second = calls
    assert _ids(admin_client.get(CALLS, {"member_name": "MEI"})) == {first.pk}
    assert _ids(admin_client.get(CALLS, {"allocation_id": str(ken.pk)})) == {second.pk}
    assert _ids(admin_client.get(CALLS, {"model_slug": "mistral/small"})) == {second.pk}
    assert _ids(admin_client.get(CALLS, {"started_from": "2026-03-05"})) == {second.pk}
    assert _ids(admin_client.get(CALLS, {"started_before": "2026-03-05"})) == {first.pk}


def test_call_records_are_searched_by_an_exact_request_id(admin_client, calls):
    _, _, first, second = calls
    assert _ids(admin_client.get(CALLS, {"q": first.request_id})) == {first.pk}
    assert _ids(admin_client.get(CALLS, {"q": f"  {second.request_id} "})) == {second.pk}
    # Not a prefix, a member or a model: those have their own filters.
    assert _ids(admin_client.get(CALLS, {"q": first.request_id[:8]})) == set()
    assert _ids(admin_client.get(CALLS, {"q": "ken"})) == set()


def test_call_records_show_short_request_id_member_link_latency_and_cost_at_portal_precision(admin_client, calls):
    mei, _, first, _ = calls
    CallRecord.objects.filter(pk=first.pk).update(finished_at=first.started_at + dt.timedelta(milliseconds=1234))
    html = admin_client.get(CALLS).content.decode()
    rid = first.request_id
    assert f'title="{rid}"><span>{rid[:8]}</span><span class="short-id-rest">{rid[8:]}</span>' in html
    assert f'href="/admin/members/{mei.member_id}/"' in html
    assert '<td class="field-latency">1,234</td>' in html
    assert "$0.0115" in html and "$2.00" in html
    small = AllocationFactory(member=mei.member, model=mei.model, quota_cost_usd_per_month=Decimal("0.01"))
    settle_call(small, cost_usd="0.0115")  # this month
    allocations = admin_client.get("/admin/allocations/allocation/", {"q": small.display_name}).content.decode()
    assert "$0.0115 / $0.01" in allocations


def test_no_two_filters_share_a_title(admin_client, calls):
    for url in (CALLS, "/admin/allocations/allocation/"):
        titles = [str(spec.title) for spec in admin_client.get(url).context["cl"].filter_specs]
        assert len(titles) == len(set(titles)), titles


def test_the_change_message_names_only_the_fields_that_changed(admin_client, db):
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("10"), quota_tokens_per_month=500)
    url = f"/admin/allocations/allocation/{allocation.pk}/change/"
    data = {
        "display_name": allocation.display_name,
        "quota_tokens_per_month": "500",
        "quota_cost_usd_per_month": "12",
        "note": "",
    }
    assert admin_client.post(url, data).status_code == 302
    assert LogEntry.objects.get(object_id=str(allocation.pk)).get_change_message() == "Changed Cost cap (USD / month)."


def test_revoking_asks_for_confirmation_first(admin_client, calls):
    mei, _, _, _ = calls
    url = "/admin/allocations/allocation/"
    asked = admin_client.post(url, {"action": "revoke", "_selected_action": [str(mei.pk)]})
    assert asked.status_code == 200 and "This is final." in asked.content.decode()
    assert Allocation.objects.get(pk=mei.pk).status == "active"
    done = admin_client.post(url, {"action": "revoke", "_selected_action": [str(mei.pk)], "confirmed": "yes"})
    assert done.status_code == 302
    assert Allocation.objects.get(pk=mei.pk).status == "revoked"


def test_the_audit_list_names_and_links_its_targets_with_human_labels(admin_client, calls):
    mei, _, _, _ = calls
    allocation_pause(allocation=mei, actor=None)
    html = admin_client.get("/admin/allocations/auditevent/").content.decode()
    assert "allocation paused" in html
    assert f'href="/admin/allocations/allocation/{mei.pk}/change/"' in html
    assert str(mei) in html
