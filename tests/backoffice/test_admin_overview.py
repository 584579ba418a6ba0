"""The staff spend overview: its figures are the call records', and "raise cap" is audited."""

import csv
import datetime as dt
import io
import re
from decimal import Decimal
from urllib.parse import urlencode

import pytest
import time_machine
from django.core.cache import cache
from django.db.models import Sum

from allocations.models import AuditEvent
from quota.models import CallRecord
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import dollar_price, reject_call, settle_call

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)


@pytest.fixture
def month(db):
    """Two members, three allocations, calls this month and last month, refusals and an error."""
    with time_machine.travel(NOW, tick=False):
        mei, ken = MemberFactory(username="mei"), MemberFactory(username="ken")
        mini = CatalogModelFactory(slug="openai/gpt-4o-mini")
        big = CatalogModelFactory(slug="openai/gpt-4.1")
        free = CatalogModelFactory(slug="sim/free")
        dollar_price(mini), dollar_price(big)
        near = AllocationFactory(member=mei, model=mini, quota_cost_usd_per_month=Decimal("10"))
        over = AllocationFactory(member=ken, model=big, quota_cost_usd_per_month=Decimal("2"))
        unpriced = AllocationFactory(member=ken, model=free, quota_cost_usd_per_month=None)
        settle_call(near, cost_usd="3.000001", when=NOW - dt.timedelta(days=5))
        settle_call(near, cost_usd="5.5", when=NOW - dt.timedelta(days=1))
        settle_call(over, cost_usd="2.3", when=NOW - dt.timedelta(hours=2))
        settle_call(over, cost_usd="0", outcome="upstream_error", when=NOW - dt.timedelta(hours=1))
        settle_call(unpriced, input_tokens=500, when=NOW - dt.timedelta(hours=3))
        settle_call(near, cost_usd="4", when=NOW - dt.timedelta(days=30))  # last month, day 21 → not counted
        settle_call(near, cost_usd="1.25", when=NOW - dt.timedelta(days=31, hours=1))  # last month, day 20
        reject_call(over, outcome="rejected_cost_quota_exceeded", when=NOW - dt.timedelta(minutes=30))
        reject_call(over, outcome="rejected_cost_quota_exceeded", when=NOW - dt.timedelta(minutes=20))
        reject_call(near, outcome="rejected_paused", when=NOW - dt.timedelta(minutes=10))
    return near, over, unpriced


def _page(admin_client, query=""):
    with time_machine.travel(NOW, tick=False):
        response = admin_client.get("/admin/overview/" + query)
    assert response.status_code == 200
    return response


def test_the_overview_figures_are_the_call_records(admin_client, month):
    near, over, _ = month
    context = _page(admin_client).context
    records = CallRecord.objects.filter(started_at__gte=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), priced=True)
    assert context["figures"].total == records.aggregate(t=Sum("cost_usd"))["t"] == Decimal("10.800001")
    assert context["last_month"] == Decimal("1.25")
    assert context["caps_total"] == Decimal("12") and context["uncapped"] == 1
    drawn = [r["cumulative"] for r in context["daily_rows"] if r["cumulative"] is not None]
    assert drawn[-1] == Decimal("10.800001") and len(drawn) == 20  # up to now, the 20th
    assert {r["outcome"]: r["calls"] for r in context["refusals"]} == {
        "rejected_cost_quota_exceeded": 2,
        "rejected_paused": 1,
    }
    assert context["figures"].unpriced_calls == 1
    near_ids = [r["allocation"].pk for r in context["near_rows"]]
    assert near_ids == [near.pk, over.pk]  # 85 % and 115 %, fullest spend first
    assert [m["allocation__member__username"] for m in context["top_members"]] == ["mei", "ken"]


def test_the_overview_shows_money_at_the_portals_precision_and_links(admin_client, month):
    html = _page(admin_client).content.decode()
    assert "$10.80" in html and "$3.00" in html
    assert "?pricing=unpriced_period" in html
    assert "/admin/members/" in html and "/admin/allocations/allocation/" in html
    assert "vendor/chartjs/chart.umd.min.js" in html and "cdn" not in html.lower()


def test_the_overview_stacks_by_provider_on_request(admin_client, month):
    context = _page(admin_client, "?by=provider").context
    assert context["by"] == "provider"
    assert sum(sum(v.values()) for v in context["figures"].spend_by_day.values()) == Decimal("10.800001")


def test_raise_cap_goes_through_the_service_and_writes_its_audit_event(admin_client, month):
    _, over, _ = month
    response = admin_client.post(f"/admin/overview/raise-cap/{over.pk}/", {"quota_cost_usd_per_month": "5"})
    assert response.status_code == 302
    over.refresh_from_db()
    assert over.quota_cost_usd_per_month == Decimal("5")
    event = AuditEvent.objects.get(action="allocation_cost_quota_updated", target_id=str(over.pk))
    assert event.before == {"quota_cost_usd_per_month": "2.000000000"}
    assert event.after == {"quota_cost_usd_per_month": "5.000000000"}


@pytest.mark.parametrize("value", ["1", "2", "abc", "-3", ""])
def test_raise_cap_refuses_a_cap_that_does_not_raise_it(admin_client, month, value):
    _, over, _ = month
    admin_client.post(f"/admin/overview/raise-cap/{over.pk}/", {"quota_cost_usd_per_month": value})
    over.refresh_from_db()
    assert over.quota_cost_usd_per_month == Decimal("2")
    assert not AuditEvent.objects.filter(action="allocation_cost_quota_updated").exists()


def test_the_overview_is_for_staff_only(client, month):
    member = MemberFactory(username="plain")
    client.force_login(member)
    assert client.get("/admin/overview/").status_code == 302
    assert (
        client.post(f"/admin/overview/raise-cap/{month[1].pk}/", {"quota_cost_usd_per_month": "9"}).status_code == 302
    )
    month[1].refresh_from_db()
    assert month[1].quota_cost_usd_per_month == Decimal("2")


def test_the_admin_index_links_the_overview_first(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert html.index('href="/admin/overview/"') < html.index("/admin/allocations/")


def test_todays_calls_show_at_once_while_whole_days_come_from_the_cache(admin_client, month):
    near, _, _ = month
    before = _page(admin_client).context["figures"].total
    settle_call(near, cost_usd="1", when=NOW - dt.timedelta(minutes=5))  # today: read live
    settle_call(near, cost_usd="2", when=NOW - dt.timedelta(days=2))  # a late settlement of a closed day
    assert _page(admin_client).context["figures"].total == before + 1
    cache.clear()  # what CLOSED_DAYS_TTL_S does after ten minutes
    assert _page(admin_client).context["figures"].total == before + 3


def test_near_and_over_rows_are_marked_apart_and_raise_cap_suggests_a_sensible_figure(admin_client, month):
    near, over, _ = month
    html = _page(admin_client).content.decode()
    assert f'data-allocation="{over.pk}" class="row-over"' in html
    assert f'data-allocation="{near.pk}" class="row-near"' in html
    assert html.count("<strong>over the cap</strong>") == 1 and html.count("<span>near the cap</span>") == 1
    assert f'id="cap-{over.pk}" name="quota_cost_usd_per_month" value="3.5"' in html  # 1.5 × $2.30


@pytest.mark.parametrize(
    ("cap", "used", "suggested"),
    [("0.002", "0.0021", "0.0032"), ("0.002", "0", "0.003"), ("2", "2.3", "3.5"), ("10", "8.5", "15"),
     ("7.5", "1", "12"), ("0", "0", "1"), ("400", "10", "600")],
)  # fmt: skip
def test_the_suggested_cap_keeps_the_scale_of_small_caps(cap, used, suggested):
    from backoffice.admin.overview import suggested_cap

    assert suggested_cap(Decimal(cap), Decimal(used)) == Decimal(suggested)


def test_an_empty_month_draws_no_chart_and_the_axes_are_labelled(admin_client, db):
    html = _page(admin_client).content.decode()
    assert 'id="overview-daily-empty"' in html and 'id="overview-daily-chart"' not in html


def test_the_chart_data_label_both_axes_and_stop_the_running_total_today(admin_client, month):
    chart = _page(admin_client).context["chart"]
    assert (chart["axis_daily"], chart["axis_total"]) == ("Per day (USD)", "So far (USD)")
    assert chart["cumulative"][19] is not None and set(chart["cumulative"][20:]) == {None}  # NOW is the 20th


def test_refusals_this_month_open_this_months_refusals_only(admin_client, month):
    near, over, _ = month
    html = _page(admin_client).content.decode()
    link = "/admin/quota/callrecord/?outcome__exact=rejected_cost_quota_exceeded&amp;started_from=2026-11-01"
    assert link in html
    with time_machine.travel(NOW, tick=False):
        reject_call(over, outcome="rejected_cost_quota_exceeded", when=NOW - dt.timedelta(days=40))  # October
        listed = admin_client.get(link.replace("&amp;", "&")).context["cl"].result_list
    assert len(listed) == 2


def test_the_member_page_is_linked_from_users_allocations_and_call_records(admin_client, month):
    near, _, _ = month
    page = f'href="/admin/members/{near.member_id}/"'
    for url in ("/admin/allocations/member/", "/admin/allocations/allocation/", "/admin/quota/callrecord/"):
        assert page in admin_client.get(url).content.decode(), url


def _table(html: str) -> list[list[str]]:
    body = html.split('id="daily-table"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("</tr>") if "<td" in row]


@pytest.mark.parametrize(
    ("query", "first", "buckets", "step"),
    [({}, dt.datetime(2026, 11, 1, tzinfo=dt.UTC), 30, "day"),
     ({"period": "last"}, dt.datetime(2026, 10, 1, tzinfo=dt.UTC), 31, "day"),
     ({"period": "custom", "from": "2026-10-15", "to": "2026-11-20"},
      dt.datetime(2026, 10, 15, tzinfo=dt.UTC), 37, "day"),
     ({"period": "custom", "from": "2026-11-19", "to": "2026-11-20", "step": "hour"},
      dt.datetime(2026, 11, 19, tzinfo=dt.UTC), 48, "hour")],
)  # fmt: skip
def test_the_period_picker_ranges(admin_client, month, query, first, buckets, step):
    context = _page(admin_client, "?" + urlencode(query)).context
    period = context["period"]
    assert (period.start, period.step, len(context["daily_rows"])) == (first, step, buckets)
    assert context["daily_rows"][0]["at"] == first


@pytest.mark.parametrize(
    ("query", "message"),
    [({"period": "custom", "from": "2025-01-01", "to": "2026-11-20"}, "at most a year"),
     ({"period": "custom", "from": "2026-11-20", "to": "2026-11-01"}, "ends before it starts"),
     ({"period": "custom", "from": "Nov 1", "to": "2026-11-20"}, "is not a date"),
     ({"period": "custom", "from": "2026-10-01", "to": "2026-11-20", "step": "hour"}, "at most 2 days"),
     ({"period": "custom", "from": "2026-11-18", "to": "2026-11-20", "step": "hour"}, "at most 2 days"),
     ({"step": "hour"}, "at most 2 days")],
)  # fmt: skip
def test_a_range_the_picker_cannot_draw_is_refused_with_a_message(admin_client, month, query, message):
    response = _page(admin_client, "?" + urlencode(query))
    assert message in str(list(response.context["messages"])[0])
    assert response.context["period"].name == "this"


@pytest.mark.parametrize("by", ["model", "provider", "member"])
def test_the_csv_export_is_the_table_on_screen(admin_client, month, by):
    query = urlencode({"period": "custom", "from": "2026-10-20", "to": "2026-11-20", "by": by})
    html = _page(admin_client, "?" + query).content.decode()
    with time_machine.travel(NOW, tick=False):
        exported = admin_client.get("/admin/overview/?" + query + "&export=csv")
    assert exported["Content-Type"] == "text/csv" and "attachment" in exported["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(exported.content.decode())))
    screen = _table(html)
    assert len(lines) - 1 == len(screen) == 32
    header = re.findall(r'<th scope="col"[^>]*>(.*?)</th>', html.split('id="daily-table"', 1)[1].split("</thead>")[0])
    assert lines[0][1:-2] == header[1:-2]  # the same series in the same order
    for line, cells in zip(lines[1:], screen, strict=True):
        shown = [Decimal(c.replace("$", "").replace(",", "")) if c.startswith("$") else None for c in cells[1:]]
        exported_amounts = [Decimal(v) if v else None for v in line[1:]]
        for on_screen, in_csv in zip(shown, exported_amounts, strict=True):
            if on_screen is None:  # "—": nothing that bucket, or the running total after now
                assert in_csv in (None, Decimal(0))
            else:
                assert abs(on_screen - in_csv) <= Decimal("0.005")  # the screen rounds to cents
    assert sum(Decimal(line[-2]) for line in lines[1:]) == Decimal("16.050001")  # October 20-21 and November


def test_the_overview_stacks_spend_by_group_and_tables_each_groups_spend_against_its_budget(admin_client, month):
    from allocations.models import Group
    from quota.models import GroupUsageCounter
    from quota.periods import period_start_date
    from tests.factories import roll_up_records

    near, over, _ = month
    research = Group.objects.create(name="Research", slug="research", quota_cost_usd_per_month=Decimal("20"))
    ops = Group.objects.create(name="Ops", slug="ops")
    Group.objects.create(name="Idle", slug="idle")  # no spend, no budget: not in the table
    research.members.add(near.member, over.member)
    # The records name the groups they counted toward at admission; the counters hold this month.
    CallRecord.objects.filter(allocation=near).update(group_ids=[research.pk, ops.pk])
    CallRecord.objects.filter(allocation=over).update(group_ids=[research.pk])
    roll_up_records()  # records changed by hand: their rollups rebuilt (docs/OPERATIONS.md)
    period = period_start_date(NOW)
    GroupUsageCounter.objects.create(group=research, period_start=period, cost_used=Decimal("10.800001"))
    GroupUsageCounter.objects.create(group=ops, period_start=period, cost_used=Decimal("8.500001"), tokens_used=9)
    response = _page(admin_client, "?by=group")
    context = response.context
    assert context["series_names"] == ["Research", "Ops"]
    totals = [sum(r["amounts"][i] for r in context["daily_rows"]) for i in range(2)]
    assert totals == [Decimal("10.800001"), Decimal("8.500001")]  # a call of both groups stacks in both
    assert [(r["group"].slug, r["share"]) for r in context["group_rows"]] == [("research", 54), ("ops", None)]
    html = response.content.decode()
    table = html.split('id="group-spend"', 1)[1].split("</table>", 1)[0]
    assert "Research" in table and "$10.80 / $20.00 (54 %)" in table and "no cap" in table
    with time_machine.travel(NOW, tick=False):
        exported = admin_client.get("/admin/overview/?by=group&export=csv")
    assert next(csv.reader(io.StringIO(exported.content.decode())))[1:3] == ["Research", "Ops"]
