"""Daily rollups: written with the records by every settlement path, equal to the records they sum
(across a month boundary in the billing timezone and a price change), rebuilt exactly, and read by
the reports with the answers the records give."""

import dataclasses
import datetime as dt
import uuid
from decimal import Decimal

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations.models import AuditEvent
from backoffice.api.selectors import usage_report
from portal.selectors import period_of_days, usage_grouped
from quota import ledger
from quota.anomaly import anomaly_figures
from quota.ledger import statements
from quota.ledger.spool import spool_replay
from quota.models import CARRIES_USAGE, CallRecord, DailyRollup, HourlyRollup, PriceVersion, UsageCounter
from quota.overview import month_figures
from quota.periods import billing_tz, period_bounds
from quota.pricing import Usage
from quota.rollups import hourly_drift, record_days, record_hours, rollup_drift, rollups_cover, rollups_rebuild_range
from quota.services import usage_reconcile
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, PriceVersionFactory, roll_up_records

from .test_spool import _database_down, _database_up, empty_spool  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _record(allocation, rid: str, when: dt.datetime, outcome: str = "success") -> dict:
    return {
        "request_id": rid,
        "allocation": allocation,
        "member": allocation.member,
        "model": allocation.model,
        "endpoint": "chat.completions",
        "started_at": when,
        "outcome": outcome,
        "status_code": 200,
    }


def _price(model, *, since=SINCE, input_per_1m="1", output_per_1m="2"):
    return PriceVersionFactory(
        model=model, effective_from=since, input_per_1m=Decimal(input_per_1m), output_per_1m=Decimal(output_per_1m)
    )


def _call(allocation, rid: str, when: dt.datetime, *, tokens=(100, 50), outcome="success", admitted=True):
    """A call settled through the ledger, with a reservation (the settlement statement) or without."""
    price = PriceVersion.objects.in_force(model=allocation.model_id, at=when)
    admission = None
    if admitted:
        admission = ledger.admit(
            allocation_id=allocation.pk,
            token_cap=None,
            cost_cap=None,
            est_tokens=500,
            est_cost=Decimal("0.01") if price else None,
            request_id=rid,
            now=when,
        )
    usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1])
    return ledger.settle(admission=admission, record=_record(allocation, rid, when, outcome), usage=usage, price=price)


def _reject(allocation, rid: str, when: dt.datetime, outcome="rejected_paused"):
    return ledger.record_reject(record={**_record(allocation, rid, when, outcome), "status_code": 403}, now=when)


def _no_drift(*, hourly: bool = True) -> dict:
    """The daily (and hourly) rollups' keys that differ from their records' sums."""
    days, hours = record_days(), record_hours()
    if days is None or hours is None:
        return {}
    daily = rollup_drift(first_day=days[0], last_day=days[1])
    hourly = hourly_drift(start=hours[0], end=hours[1]) if hourly else {}
    return {**{("day", *k): v for k, v in daily.items()}, **{("hour", *k): v for k, v in hourly.items()}}


def _direct_record(allocation, when, *, tokens=10, cost=None):
    """A record written without the ledger (as a bulk load would): no rollup."""
    return CallRecord.objects.create(
        request_id=str(uuid.uuid4()), allocation=allocation, member=allocation.member, model=allocation.model,
        endpoint="chat.completions", started_at=when, outcome="success", input_tokens=tokens,
        cost_usd=cost, priced=cost is not None,
    )  # fmt: skip


# --- every write path ----------------------------------------------------------------------------------


def test_each_settlement_path_writes_the_records_rollup():
    allocation = AllocationFactory()
    _price(allocation.model)
    now = timezone.now()
    _call(allocation, "statement", now)  # the settlement statement (a reservation)
    _call(allocation, "plain", now, admitted=False)  # no reservation: the plain INSERT
    _call(allocation, "error", now, tokens=(5, 0), outcome="upstream_error")
    _reject(allocation, "refused", now)
    ledger.record_reject(
        record={"request_id": "anonymous", "endpoint": "chat.completions", "started_at": now,
                "outcome": "rejected_unauthenticated", "status_code": 401}
    )  # fmt: skip
    ledger.record_reject(
        record={"request_id": "anonymous-2", "endpoint": "chat.completions", "started_at": now,
                "outcome": "rejected_unauthenticated", "status_code": 401}
    )  # fmt: skip
    assert _no_drift() == {}
    success = DailyRollup.objects.get(allocation=allocation, outcome="success")
    assert (success.calls, success.input_tokens, success.output_tokens) == (2, 200, 100)
    assert (success.cost_usd, success.priced_calls, success.unpriced_calls) == (Decimal("0.0004"), 2, 0)
    # Refusals without an allocation, member or model share one row a day (NULLS NOT DISTINCT).
    anonymous = DailyRollup.objects.get(allocation=None, outcome="rejected_unauthenticated")
    assert (anonymous.calls, anonymous.member_id, anonymous.model_id) == (2, None, None)
    assert DailyRollup.objects.get(outcome="rejected_paused").calls == 1


def test_a_rollup_row_that_no_longer_matches_its_records_is_found():
    allocation = AllocationFactory()
    now = timezone.now()
    _call(allocation, "one", now, admitted=False)
    assert _no_drift() == {}
    _direct_record(allocation, now)
    assert sorted(k[0] for k in _no_drift()) == ["day", "hour"]


def test_a_settlement_that_finds_its_reservation_gone_adds_nothing_to_the_rollups():
    allocation = AllocationFactory()
    now = timezone.now()
    admission = ledger.admit(
        allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=5, est_cost=None,
        request_id="twice", now=now,
    )  # fmt: skip
    record = _record(allocation, "twice", now)
    assert ledger.settle(admission=admission, record=record, usage=Usage(input_tokens=3), price=None) is not None
    assert ledger.settle(admission=admission, record=record, usage=Usage(input_tokens=3), price=None) is None
    assert DailyRollup.objects.get().calls == 1 and _no_drift() == {}


_USAGES = (
    (Usage(input_tokens=100, output_tokens=50, cached_tokens=20, reasoning_tokens=10), "success", True),
    (Usage(input_tokens=7, output_tokens=3, audio_input_tokens=2, audio_output_tokens=1), "success", False),
    (Usage(quantity=Decimal("2.5"), unit="image"), "success", False),
    (Usage(), "upstream_error", False),
    (Usage(input_tokens=4), "client_closed", True),
    (
        Usage(input_tokens=70_000, output_tokens=40_000, tool_calls=(("web_search", 2),), service_tier="flex"),
        "success",
        True,
    ),
)
# What the records of _USAGES carry beyond their identity, by position: text that a row or array
# literal would have to quote (quotes, a backslash, commas, parentheses, braces, blanks, non-ASCII),
# an empty string beside a NULL, a stream's columns, a deployment, a time to first token.
_EXTRA = (
    {"error_message": 'a "quoted", back\\slash (paren) {brace} ü  ', "is_stream": True, "ttft_ms": 40_000},
    {"deployment_id": uuid.UUID(int=7), "attempts": 2, "close_reason": "done"},
    {"error_code": "", "ttft_ms": None, "status_code": None},
    {"error_code": "upstream_5xx", "error_message": "NULL", "finished_at": SINCE},
    {"close_reason": "client", "error_message": ",()"},
    {"ttft_ms": 0, "attempts": 1},
)


def _admitted(allocation, rid, now, record, usage, price, *, est_tokens, groups=()) -> statements.Settlement:
    """A call of `allocation` admitted (no caps) and its settlement made ready for `record` and `usage`."""
    admission = ledger.admit(
        allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=est_tokens, est_cost=Decimal("0.01"),
        request_id=rid, now=now,
    )  # fmt: skip
    values, cost = statements.settle_values(record=record, usage=usage, price=price, now=now, groups=groups)
    return statements.Settlement(values, admission, usage.total_tokens, cost or Decimal(0))


def _settlements(allocation, price, now) -> list[statements.Settlement]:
    """One settlement of each kind of _USAGES (priced or not, tokens, a quantity, no usage), admitted."""
    found = []
    for n, (usage, outcome, priced) in enumerate(_USAGES):
        rid = f"{allocation.pk}-{n}"
        record = {**_record(allocation, rid, now, outcome), "member_id": allocation.member_id, **_EXTRA[n]}
        found.append(_admitted(allocation, rid, now, record, usage, price if priced else None, est_tokens=500))
    return found


def _written(allocation) -> tuple:
    """What the settlements of an allocation wrote: its counter, records and rollups (ids aside)."""
    counter = UsageCounter.objects.values_list(
        "tokens_used", "cost_used", "calls", "tokens_reserved", "cost_reserved"
    ).get(allocation=allocation)
    skip = {"id", "request_id", "allocation"}
    fields = [f.attname for f in CallRecord._meta.concrete_fields if f.name not in skip]
    records = sorted(CallRecord.objects.filter(allocation=allocation).values_list(*fields), key=repr)
    skip = {"id", "allocation"}
    fields = [f.attname for f in DailyRollup._meta.concrete_fields if f.name not in skip]
    daily = sorted(DailyRollup.objects.filter(allocation=allocation).values_list(*fields), key=repr)
    fields = ["hour", "member_id", "model_id", "outcome", "group_ids", "calls", "cost_usd", "priced_calls"]
    hourly = sorted(HourlyRollup.objects.filter(allocation=allocation).values_list(*fields), key=repr)
    return counter, records, daily, hourly


def test_the_statement_of_one_call_writes_what_the_batch_statement_writes():
    """A call settled alone (the statement of one call: no GROUP BY) and the same calls settled in
    one batch write the same counter, records and rollups."""
    member, model = MemberFactory(), CatalogModelFactory()
    price = _price(model)
    alone, batched = AllocationFactory(member=member, model=model), AllocationFactory(member=member, model=model)
    now = timezone.now()
    with connection.cursor() as cursor:
        for settlement in _settlements(alone, price, now):
            sql, params = statements.settle_statement([settlement])
            assert sql == statements._SETTLE_ONE_SQL
            cursor.execute(sql, params)
            assert [n for n, _ in cursor.fetchall()] == [1]
        settlements = _settlements(batched, price, now)
        sql, params = statements.settle_statement(settlements)
        assert sql != statements._SETTLE_ONE_SQL
        cursor.execute(sql, params)
        assert sorted(n for n, _ in cursor.fetchall()) == [1, 2, 3, 4, 5, 6]

    assert _written(alone) == _written(batched)
    counter, records, daily, _ = _written(alone)
    assert counter[2] == 6 and counter[3] == 0 and len(records) == 6
    first = CallRecord.objects.get(request_id=f"{alone.pk}-0")
    assert (first.error_message, first.is_stream, first.ttft_ms) == (_EXTRA[0]["error_message"], True, 40_000)
    empty = CallRecord.objects.get(request_id=f"{alone.pk}-2")
    assert (empty.error_code, empty.ttft_ms, empty.status_code, empty.quantity) == ("", None, None, Decimal("2.5"))
    tools = CallRecord.objects.get(request_id=f"{alone.pk}-5")
    assert tools.tool_calls == {"web_search": 2} and (tools.input_tokens, tools.service_tier) == (70_000, "flex")
    assert CallRecord.objects.get(request_id=f"{alone.pk}-1").deployment_id == uuid.UUID(int=7)
    success = DailyRollup.objects.get(allocation=alone, outcome="success")
    assert (success.calls, success.priced_calls, success.unpriced_calls) == (4, 2, 2)
    assert success.quantity == Decimal("2.5")
    assert _no_drift() == {}


def test_the_batch_writes_awkward_records_as_the_statement_of_one_call_does():
    """The batch's records are JSON arrays of their columns' values, the statement of one call's are
    parameters of their own: both write the same rows for values that either form could get wrong
    (escapes and control characters, JSON-like and array-like text, text "NULL" beside NULL and an
    empty string, a bigint near its top, the largest smallint and integer, nested tool calls, group
    ids)."""
    member, model = MemberFactory(), CatalogModelFactory()
    alone, batched = AllocationFactory(member=member, model=model), AllocationFactory(member=member, model=model)
    groups = (str(uuid.UUID(int=1)), str(uuid.UUID(int=2)))
    awkward = (
        (
            {"error_message": 'q"\\" \\\\ \n\t\x01 ü 😀 {"k": [1]} {a,b} (c)', "error_code": ""},
            Usage(input_tokens=2**62),
        ),
        ({"error_message": "NULL", "error_code": "NULL", "ttft_ms": 2**31 - 1, "status_code": 32767}, Usage()),
        ({"error_message": "", "close_reason": "\\", "attempts": 32767}, Usage(tool_calls=(('a"b\\ ü', 3),))),
    )
    now = timezone.now()

    def settlements(allocation) -> list[statements.Settlement]:
        found = []
        for n, (extra, usage) in enumerate(awkward):
            rid = f"{allocation.pk}-{n}"
            record = {**_record(allocation, rid, now), **extra}
            found.append(_admitted(allocation, rid, now, record, usage, None, est_tokens=1, groups=groups if n else ()))
        return found

    with connection.cursor() as cursor:
        for settlement in settlements(alone):
            cursor.execute(*statements.settle_statement([settlement]))
        sql, params = statements.settle_statement(settlements(batched))
        assert sql != statements._SETTLE_ONE_SQL
        cursor.execute(sql, params)
    assert _written(alone) == _written(batched)
    first, second, third = (CallRecord.objects.get(request_id=f"{batched.pk}-{n}") for n in range(3))
    assert (first.error_message, first.error_code, first.input_tokens) == (awkward[0][0]["error_message"], "", 2**62)
    assert (second.error_message, second.ttft_ms, second.group_ids) == (
        "NULL",
        2**31 - 1,
        [uuid.UUID(g) for g in groups],
    )
    assert (third.close_reason, third.tool_calls, first.group_ids) == ("\\", {'a"b\\ ü': 3}, [])


@pytest.mark.parametrize("grouped", [False, True])
def test_the_batchs_generic_plan_probes_the_reservations_by_key_even_planned_on_an_empty_table(grouped):
    """A prepared statement's generic plan is made once, at its sixth execution, and kept for the
    connection's life: the settlement batch's, planned while the reservations' table is small (a
    fresh database, a vacuumed one), must still find each reservation by its key, not read the
    table whole, which grows with the rows deleted until a vacuum."""
    allocation = AllocationFactory()
    made = _settlements(allocation, None, timezone.now())[:3]
    if grouped:
        group = (str(uuid.UUID(int=1)),)
        made = [dataclasses.replace(s, admission=dataclasses.replace(s.admission, groups=group)) for s in made]
    sql, params = statements.settle_statement(made)
    assert "%" not in sql.replace("%s", "")
    native = "".join(f"{part}${n}" for n, part in enumerate(sql.split("%s")[:-1], 1)) + sql.split("%s")[-1]
    with connection.cursor() as cursor:
        cursor.execute(f"PREPARE batch_plan AS {native}")
        try:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute("EXPLAIN EXECUTE batch_plan(" + ", ".join(["%s"] * len(params)) + ")", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("DEALLOCATE batch_plan")
    assert "Index Scan using quota_reservation_pkey" in plan
    assert "Seq Scan on quota_reservation" not in plan and "Seq Scan on public.quota_reservation" not in plan


def test_a_reservation_named_twice_in_one_batch_is_settled_once():
    allocation = AllocationFactory()
    settlement = _settlements(allocation, None, timezone.now())[0]
    with connection.cursor() as cursor:
        cursor.execute(*statements.settle_statement([settlement, settlement]))
        assert len(cursor.fetchall()) == 1
    assert CallRecord.objects.filter(allocation=allocation).count() == 1
    assert UsageCounter.objects.get(allocation=allocation).calls == 1
    assert DailyRollup.objects.get(allocation=allocation).calls == 1 and _no_drift() == {}


def test_the_sweepers_worker_lost_record_is_rolled_up():
    allocation = AllocationFactory()
    price = _price(allocation.model)
    now = timezone.now()
    record = {
        **_record(allocation, "lost", now),
        "allocation_id": str(allocation.pk),
        "member_id": str(allocation.member_id),
        "model_id": str(allocation.model_id),
    }
    for name in ("allocation", "member", "model"):
        del record[name]
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=300,
        est_cost=Decimal("0.0003"),
        request_id="lost",
        now=now,
        ttl_s=1,
        context=ledger.lost_context(record=record, usage=Usage(input_tokens=200, output_tokens=100), price=price),
    )
    assert admission is not None
    assert ledger.reservations_sweep(now=now + dt.timedelta(seconds=5)) == 1
    lost = CallRecord.objects.get(request_id="lost")
    assert (lost.outcome, lost.error_code) == ("gateway_error", "worker_lost")
    row = DailyRollup.objects.get()
    assert (row.outcome, row.calls, row.input_tokens, row.cost_usd) == ("gateway_error", 1, 200, lost.cost_usd)
    assert _no_drift() == {}


@pytest.mark.django_db(transaction=True)
def test_a_spooled_settlement_is_rolled_up_once_when_replayed(settings, empty_spool):  # noqa: F811
    allocation = AllocationFactory()
    _price(allocation.model)
    now = timezone.now()
    saved = _database_down()
    try:
        ledger.call_settle_durable(
            admission=None, record=_record(allocation, "spooled", now), usage=Usage(input_tokens=40), price=None
        )
    finally:
        _database_up(saved)
    assert not DailyRollup.objects.exists()
    assert spool_replay() == 1
    assert spool_replay() == 0
    row = DailyRollup.objects.get()
    assert (row.calls, row.input_tokens) == (1, 40)
    assert _no_drift() == {}


# --- days, months and prices ---------------------------------------------------------------------------


def test_days_and_months_are_the_billing_timezones(settings):
    """23:59:59 and 00:00:00 in Taipei on the last and first day of a month are 15:59:59 and
    16:00:00 UTC: their rollups fall on the two local days, their counters in the two periods."""
    settings.GATEWAY_BILLING_TIMEZONE = "Asia/Taipei"
    allocation = AllocationFactory()
    _price(allocation.model)
    last_second = dt.datetime(2026, 11, 30, 15, 59, 59, tzinfo=dt.UTC)
    first_second = dt.datetime(2026, 11, 30, 16, 0, 0, tzinfo=dt.UTC)
    with time_machine.travel(first_second + dt.timedelta(minutes=1), tick=False):
        _call(allocation, "november", last_second, tokens=(1000, 0))
        _call(allocation, "december", first_second, tokens=(3000, 0))
        _reject(allocation, "december-refused", first_second)
    rows = {(r.day, r.outcome): r for r in DailyRollup.objects.all()}
    assert set(rows) == {
        (dt.date(2026, 11, 30), "success"),
        (dt.date(2026, 12, 1), "success"),
        (dt.date(2026, 12, 1), "rejected_paused"),
    }
    assert rows[dt.date(2026, 11, 30), "success"].input_tokens == 1000
    counters = {c.period_start: c.tokens_used for c in UsageCounter.objects.all()}
    assert counters == {dt.date(2026, 11, 1): 1000, dt.date(2026, 12, 1): 3000}
    assert _no_drift() == {}
    november = period_of_days(dt.date(2026, 11, 1), dt.date(2026, 11, 30))
    [by_model] = usage_grouped(member=allocation.member, period=november, group_by="model")
    assert (by_model["calls"], by_model["input_tokens"]) == (1, 1000)
    for now, tokens in ((last_second, 1000), (first_second, 3000)):
        assert usage_reconcile(now=now) == []  # the counters agree with the month's rollups
        assert UsageCounter.objects.get(period_start=period_bounds(now)[0].date()).tokens_used == tokens


def test_a_price_change_within_a_day_is_summed_at_each_calls_price():
    allocation = AllocationFactory()
    noon = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    _price(allocation.model, input_per_1m="1")
    _price(allocation.model, since=noon, input_per_1m="3")
    _call(allocation, "before", noon - dt.timedelta(hours=1), tokens=(1_000_000, 0))
    _call(allocation, "after", noon + dt.timedelta(hours=1), tokens=(1_000_000, 0))
    costs = sorted(CallRecord.objects.values_list("cost_usd", flat=True))
    assert costs == [Decimal("1"), Decimal("3")]
    row = DailyRollup.objects.get()
    assert (row.calls, row.cost_usd, row.priced_calls) == (2, Decimal("4"), 2)
    assert _no_drift() == {}


# --- rebuild, coverage, migration ------------------------------------------------------------------------


def test_rebuild_restores_the_rollups_exactly_and_is_audited():
    allocation = AllocationFactory()
    _price(allocation.model)
    day = dt.datetime(2026, 10, 3, 9, tzinfo=dt.UTC)
    for n in range(3):
        _call(allocation, f"c{n}", day + dt.timedelta(days=n * 20))
    _direct_record(allocation, day, tokens=7)  # a bulk-loaded record: not rolled up yet
    assert not rollups_cover(dt.date(2026, 10, 1))
    assert rollups_cover(dt.date(2026, 11, 1))
    before = {tuple(r) for r in DailyRollup.objects.values_list("day", "calls", "input_tokens", "cost_usd")}
    summary = rollups_rebuild_range()
    assert summary == {"first_day": "2026-10-03", "last_day": "2026-11-12", "days": 41, "rows": 3}
    assert rollups_cover(dt.date(2026, 10, 1)) and _no_drift(hourly=False) == {}
    after = {tuple(r) for r in DailyRollup.objects.values_list("day", "calls", "input_tokens", "cost_usd")}
    assert after - before == {(dt.date(2026, 10, 3), 2, 107, Decimal("0.0002"))}
    event = AuditEvent.objects.get(action="rollups_rebuilt")
    assert event.after["rows"] == 3 and event.target_id == "2026-10-03..2026-11-12"


def test_rebuild_never_empties_the_rollups_of_days_whose_records_are_gone():
    allocation = AllocationFactory()
    old, recent = dt.datetime(2026, 6, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
    _call(allocation, "old", old, admitted=False)
    _call(allocation, "recent", recent, admitted=False)
    CallRecord.objects.filter(request_id="old").delete()  # its month pruned
    rollups_rebuild_range(first_day=dt.date(2026, 1, 1), last_day=dt.date(2026, 12, 31))
    assert DailyRollup.objects.filter(day=old.date()).get().calls == 1
    assert not rollups_cover(dt.date(2026, 6, 1))  # no records left to account for


def test_the_rebuild_command_shows_progress(capsys):
    from django.core.management import call_command

    allocation = AllocationFactory()
    _direct_record(allocation, dt.datetime(2026, 9, 30, 23, tzinfo=dt.UTC))
    _direct_record(allocation, dt.datetime(2026, 10, 1, 1, tzinfo=dt.UTC))
    call_command("rebuild_rollups", "--from", "2026-09-01")
    out = capsys.readouterr().out
    assert "[1/2] 2026-09-30 .. 2026-09-30" in out and "[2/2] 2026-10-01 .. 2026-10-01" in out
    assert DailyRollup.objects.aggregate(n=Sum("calls"))["n"] == 2


@pytest.mark.django_db(transaction=True)
def test_the_backfill_migration_builds_the_rollups_with_keys_and_groups_and_reverses():
    allocation = AllocationFactory()
    groups = sorted([uuid.uuid4(), uuid.uuid4()])
    for n in range(4):
        _direct_record(allocation, dt.datetime(2026, 11, 1 + n, 8, tzinfo=dt.UTC), tokens=n + 1)
    # The 1st again, in two groups: a second rollup row of that day (a member moved that day).
    CallRecord.objects.filter(pk=_direct_record(allocation, dt.datetime(2026, 11, 1, 9, tzinfo=dt.UTC)).pk).update(
        group_ids=groups
    )

    def rows() -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT day, calls, input_tokens FROM quota_dailyrollup ORDER BY day")
            return cursor.fetchall()

    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([("quota", "0013_daily_rollup")])
        assert not rows()
        executor = MigrationExecutor(connection)
        executor.migrate([("quota", "0014_daily_rollup_backfill")])
        assert not rows()  # built once their key has the groups (0016)
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
        assert DailyRollup.objects.count() == 5 and _no_drift(hourly=False) == {}
        assert DailyRollup.objects.get(group_ids=groups).input_tokens == 10
        executor = MigrationExecutor(connection)
        executor.migrate([("quota", "0014_daily_rollup_backfill")])  # the groups folded out of the key
        assert rows() == [(dt.date(2026, 11, 1 + n), 1 + (n == 0), n + 1 + 10 * (n == 0)) for n in range(4)]
        executor = MigrationExecutor(connection)
        executor.migrate([("quota", "0013_daily_rollup")])
        assert not rows()
    finally:
        MigrationExecutor(connection).migrate(leaves)


# --- readers: the answers the records give ----------------------------------------------------------------


@pytest.fixture
def traffic(settings):
    """Three days of calls by two members on two models, priced, unpriced and refused, in a
    billing timezone ahead of UTC."""
    settings.GATEWAY_BILLING_TIMEZONE = "Europe/Paris"
    mei, ken = MemberFactory(username="mei"), MemberFactory(username="ken")
    priced, free = CatalogModelFactory(slug="t/priced"), CatalogModelFactory(slug="t/free")
    _price(priced)
    allocations = [
        AllocationFactory(member=mei, model=priced),
        AllocationFactory(member=mei, model=free),
        AllocationFactory(member=ken, model=priced),
    ]
    start = dt.datetime(2026, 11, 9, 22, tzinfo=dt.UTC)  # 23:00 in Paris
    for n in range(36):
        allocation = allocations[n % 3]
        when = start + dt.timedelta(hours=2 * n)
        if n % 7 == 3:
            _reject(allocation, f"r{n}", when)
        else:
            _call(allocation, f"c{n}", when, tokens=(100 + n, n), admitted=n % 2 == 0)
    return mei, ken, allocations


def _records_report(start, end, keys: tuple[str, ...], where: Q | None = None):
    """The reports' figures computed from the call records alone."""
    rows = (
        CallRecord.objects.filter(where or Q(), started_at__gte=start, started_at__lt=end)
        .annotate(day=TruncDate("started_at", tzinfo=billing_tz()))
        .values(*keys)
        .annotate(
            n=Count("id"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd", filter=Q(priced=True)),
            unpriced=Count("id", filter=Q(priced=False) & CARRIES_USAGE),
        )
    )
    return {tuple(r[k] for k in keys): (r["n"], r["tokens_in"], r["tokens_out"], r["cost"], r["unpriced"])
            for r in rows}  # fmt: skip


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (dt.datetime(2026, 11, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 12, 9, 30, tzinfo=dt.UTC)),  # partial edges
        (dt.datetime(2026, 11, 9, 23, tzinfo=dt.UTC), dt.datetime(2026, 11, 12, 23, tzinfo=dt.UTC)),  # Paris days
        (dt.datetime(2026, 11, 11, 3, tzinfo=dt.UTC), dt.datetime(2026, 11, 11, 7, tzinfo=dt.UTC)),  # within a day
    ],
    ids=["edges", "whole-days", "hours"],
)
def test_the_admin_usage_report_is_the_records_answer(traffic, start, end):
    for group_by, key in (("member", "member_id"), ("allocation", "allocation_id"), ("model", "model_id")):
        expected = _records_report(start, end, (key,))
        got = {r[key]: r for r in usage_report(group_by=group_by, start=start, end=end)}
        assert set(got) == {str(value) for (value,) in expected if value is not None}
        for (value,), (calls, tokens_in, tokens_out, cost, unpriced) in expected.items():
            row = got[str(value)]
            assert (row["calls"], row["input_tokens"], row["output_tokens"], row["unpriced_calls"]) == (
                calls,
                tokens_in,
                tokens_out,
                unpriced,
            )
            assert row["cost_usd"] == (None if cost is None and unpriced else f"{cost or 0:.9f}")


def test_the_portal_usage_is_the_records_answer(traffic):
    mei, _, allocations = traffic
    period = period_of_days(dt.date(2026, 11, 10), dt.date(2026, 11, 12))
    mine = Q(allocation__member=mei)
    by_day = _records_report(period.start, period.end, ("day",), mine)
    rows = usage_grouped(member=mei, period=period, group_by="day")
    assert [r["day"] for r in rows] == sorted(d.isoformat() for (d,) in by_day)
    for r in rows:
        calls, tokens_in, tokens_out, cost, unpriced = by_day[(dt.date.fromisoformat(r["day"]),)]
        assert (r["calls"], r["tokens"], r["unpriced_calls"]) == (calls, tokens_in + tokens_out, unpriced)
        assert r["cost_usd"] == (None if cost is None and unpriced else f"{cost or 0:.9f}")
    by_model = _records_report(period.start, period.end, ("model__slug",), mine)
    assert {r["model"]: r["calls"] for r in usage_grouped(member=mei, period=period, group_by="model")} == {
        slug: v[0] for (slug,), v in by_model.items()
    }
    one = allocations[1]
    only = usage_grouped(member=mei, period=period, group_by="allocation", allocation=one)
    assert [r["allocation"] for r in only] == [str(one.pk)]
    assert only[0]["cost_usd"] is None and only[0]["unpriced_calls"] > 0  # unpriced: null, never $0


def test_the_overview_is_the_records_answer(traffic):
    cache.clear()
    start, end = period_bounds(dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
    now = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    figures = month_figures(start=start, end=end, now=now)
    records = CallRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    assert figures.calls == records.count()
    assert figures.total == records.filter(priced=True).aggregate(t=Sum("cost_usd"))["t"]
    assert figures.unpriced_calls == records.filter(priced=False).filter(CARRIES_USAGE).count()
    assert sum(figures.refusals.values()) == records.filter(outcome__startswith="rejected_").count()


def test_the_rollups_are_read_for_whole_days_and_the_records_for_the_edges(traffic):
    start, end = dt.datetime(2026, 11, 9, 23, tzinfo=dt.UTC), dt.datetime(2026, 11, 12, 23, tzinfo=dt.UTC)
    with CaptureQueriesContext(connection) as whole:
        usage_report(group_by="model", start=start, end=end)
    assert ["quota_callrecord" in q["sql"] for q in whole.captured_queries] == [False]
    with CaptureQueriesContext(connection) as partial:
        usage_report(group_by="model", start=start + dt.timedelta(hours=3), end=end - dt.timedelta(hours=1))
    assert ["quota_callrecord" in q["sql"] for q in partial.captured_queries] == [True, False, True]


# --- anomaly figures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("allocations", [2, 20])
def test_anomaly_figures_take_three_queries_whatever_the_number_of_allocations(allocations):
    now = timezone.now()
    watched = [AllocationFactory() for _ in range(allocations)]
    service = AllocationFactory(is_service_allocation=True)
    rows = [
        CallRecord(request_id=f"r{n}-{i}", allocation=a, endpoint="chat", started_at=now - dt.timedelta(minutes=i * 7),
                   outcome="success")
        for n, a in enumerate([*watched, service])
        for i in range(1, 20)
    ]  # fmt: skip
    CallRecord.objects.bulk_create(rows)
    roll_up_records()
    with CaptureQueriesContext(connection) as queries:
        figures = anomaly_figures(now=now)
    assert len(queries.captured_queries) == 3
    assert set(figures) == {a.pk for a in watched}
    assert {(f.calls_last_hour, f.baseline_calls) for f in figures.values()} == {(8, 11)}
    assert "JOIN" not in queries.captured_queries[0]["sql"].upper()
