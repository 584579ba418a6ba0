"""The call-record and audit lists cost the same at any size: the SQL they send holds no COUNT,
no DISTINCT and no UPPER() search, the search is the request-id index, and pages walk by keyset
(started_at, id) with the same rows an offset would give, ties on the time included."""

import datetime as dt
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from allocations.services import allocation_pause
from proxy.registry import ENDPOINTS
from quota.models import CALL_ENDPOINTS, CallRecord
from realtime.services import ENDPOINT as REALTIME_ENDPOINT
from tests.factories import AllocationFactory

CALLS = "/admin/quota/callrecord/"
T0 = dt.datetime(2026, 3, 3, 9, tzinfo=dt.UTC)


@pytest.fixture
def many_calls(db):
    """120 records; every 3 share a started_at, so the keyset must break ties on the id."""
    allocation = AllocationFactory()
    rows = [
        CallRecord(
            request_id=str(uuid.uuid4()),
            allocation=allocation,
            member=allocation.member,
            model=allocation.model,
            endpoint="embeddings" if n % 4 == 0 else "chat.completions",
            started_at=T0 + dt.timedelta(seconds=n // 3),
            outcome="success",
        )
        for n in range(120)
    ]
    CallRecord.objects.bulk_create(rows)
    return allocation


def _sql_over_calls(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "quota_callrecord" in q["sql"]]


def _page_ids(response) -> list[int]:
    return [r.pk for r in response.context["cl"].result_list]


def test_the_list_never_counts_nor_asks_for_distinct_values(admin_client, many_calls):
    pages = [
        {},
        {"endpoint": "embeddings"},
        {"outcome__exact": "success", "is_stream__exact": "0"},
        {"q": "no-such-request"},
        {"o": "-5"},  # sorted by cost: offset pages
        {"_facets": "1"},
    ]
    for params in pages:
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(CALLS, params)
        assert response.status_code == 200, params
        sql = _sql_over_calls(queries)
        assert sql, params
        for statement in sql:
            assert "COUNT(" not in statement.upper(), (params, statement)
            assert "DISTINCT" not in statement.upper(), (params, statement)
            assert "UPPER(" not in statement.upper(), (params, statement)


def test_the_search_is_one_exact_match_on_the_request_id(admin_client, many_calls):
    wanted = CallRecord.objects.order_by("id")[7]
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CALLS, {"q": wanted.request_id})
    assert _page_ids(response) == [wanted.pk]
    (listed,) = [s for s in _sql_over_calls(queries) if "LIMIT" in s]
    assert '"quota_callrecord"."request_id" = ' in listed
    assert " OR " not in listed and "LIKE" not in listed.upper()
    assert _page_ids(admin_client.get(CALLS, {"q": wanted.request_id.upper()})) == []


def test_the_endpoint_filter_offers_the_fixed_endpoints_and_narrows_by_one(admin_client, many_calls):
    response = admin_client.get(CALLS, {"endpoint": "embeddings"})
    (spec,) = [s for s in response.context["cl"].filter_specs if getattr(s, "parameter_name", "") == "endpoint"]
    assert [value for value, _ in spec.lookup_choices] == list(CALL_ENDPOINTS)
    listed = {CallRecord.objects.get(pk=pk).endpoint for pk in _page_ids(response)}
    assert listed == {"embeddings"} and len(_page_ids(response)) == 30


def test_the_fixed_endpoints_are_every_endpoint_the_gateway_records():
    assert set(CALL_ENDPOINTS) == set(ENDPOINTS) | {REALTIME_ENDPOINT}


def test_keyset_pages_walk_every_record_once_newest_first_with_ties(admin_client, many_calls):
    expected = list(CallRecord.objects.order_by("-started_at", "-id").values_list("id", flat=True))
    seen, url, params = [], CALLS, {}
    for _ in range(5):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url, params)
        seen += _page_ids(response)
        listed = [s for s in _sql_over_calls(queries) if "LIMIT" in s]
        assert listed and all("OFFSET" not in s for s in listed)
        cl = response.context["cl"]
        if not cl.older_url:
            break
        url, params = CALLS + cl.older_url, {}
        assert "after=" in cl.older_url and cl.newest_url
    assert seen == expected  # 50 + 50 + 20, none twice, none missed


def test_a_cursor_that_cannot_be_read_starts_at_the_top(admin_client, many_calls):
    top = _page_ids(admin_client.get(CALLS))
    assert _page_ids(admin_client.get(CALLS, {"after": "yesterday~x"})) == top
    assert _page_ids(admin_client.get(CALLS, {"after": "2026-03-03T09:00:10~5"})) == top  # naive time


def test_a_cursor_keeps_the_filters(admin_client, many_calls):
    first = admin_client.get(CALLS, {"endpoint": "chat.completions"})
    older = admin_client.get(CALLS + first.context["cl"].older_url)
    rows = CallRecord.objects.filter(pk__in=_page_ids(older))
    assert rows.count() == 40 and set(rows.values_list("endpoint", flat=True)) == {"chat.completions"}


def test_other_orders_page_by_offset_without_counting(admin_client, many_calls):
    first = admin_client.get(CALLS, {"o": "0"})  # by started_at, oldest first
    cl = first.context["cl"]
    assert "p=2" in cl.older_url
    second = admin_client.get(CALLS + cl.older_url)
    expected = list(CallRecord.objects.order_by("started_at", "-id").values_list("id", flat=True))
    assert _page_ids(first) + _page_ids(second) == expected[:100]


def test_the_audit_list_filters_by_fixed_values_without_distinct_or_count(admin_client, many_calls):
    allocation_pause(allocation=many_calls, actor=None)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/allocations/auditevent/", {"action": "allocation_paused"})
    assert response.status_code == 200 and len(response.context["cl"].result_list) == 1
    audit_sql = [q["sql"] for q in queries.captured_queries if "allocations_auditevent" in q["sql"]]
    assert audit_sql
    assert not [s for s in audit_sql if "COUNT(" in s.upper() or "DISTINCT" in s.upper()]
    empty = admin_client.get("/admin/allocations/auditevent/", {"target_type": "provider"})
    assert list(empty.context["cl"].result_list) == []


def test_member_and_model_filters_narrow_by_id_without_a_join(admin_client, many_calls):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CALLS, {"member_name": many_calls.member.username})
    assert len(response.context["cl"].result_list) == 50
    (listed,) = [s for s in _sql_over_calls(queries) if "LIMIT" in s]
    assert 'WHERE "quota_callrecord"."member_id" = ' in listed and "username" not in listed.split("WHERE")[1]
    # Nobody by that name: no call record is read at all.
    for params in ({"member_name": "nobody"}, {"model_slug": "no/such"}):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(CALLS, params)
        assert list(response.context["cl"].result_list) == []
        assert not [s for s in _sql_over_calls(queries) if "LIMIT" in s], params
