import dataclasses
import datetime as dt
import json
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from quota import ledger
from quota.exceptions import CostQuotaExceeded, QuotaBusy, QuotaExceeded
from quota.ledger import reservations_sweep, settle_statement
from quota.models import CallRecord, Reservation, UsageCounter
from quota.pricing import Usage
from quota.services import usage_reconcile
from tests.factories import AllocationFactory, PriceVersionFactory

from .conftest import admit, record_of_call, settlement

pytestmark = pytest.mark.django_db


def settle(allocation, admission, usage, price):
    return ledger.settle(
        admission=admission,
        record=record_of_call(allocation),
        usage=usage,
        price=price,
    )


def test_it_rejects_with_quota_busy_when_reservations_hold_the_headroom():
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("0.02"))
    admit(allocation, cost="0.015")
    admit(allocation, cost="0.015")  # 0.015 < 0.02: admitted, overshoot bounded by one call
    with pytest.raises(QuotaBusy):
        admit(allocation, cost="0.015")


def test_it_rejects_when_the_cost_cap_is_used_up_and_says_how_much():
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("1"))
    price = PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("1000000"))
    settle(allocation, admit(allocation), Usage(input_tokens=1), price)
    with pytest.raises(CostQuotaExceeded, match=r"\$1 / \$1"):
        admit(allocation)


def test_it_checks_the_token_quota_before_the_cost_cap():
    allocation = AllocationFactory(quota_tokens_per_month=5, quota_cost_usd_per_month=Decimal("0"))
    price = PriceVersionFactory(model=allocation.model)
    UsageCounter.objects.create(allocation=allocation, period_start=timezone.now().date().replace(day=1), tokens_used=5)
    with pytest.raises(QuotaExceeded):
        admit(allocation)
    assert price


def test_a_zero_cost_cap_blocks_even_unpriced_calls_but_a_positive_one_does_not():
    blocked = AllocationFactory(quota_cost_usd_per_month=Decimal("0"))
    with pytest.raises(CostQuotaExceeded):
        admit(blocked, cost=None)
    open_cap = AllocationFactory(quota_cost_usd_per_month=Decimal("0.000000001"))
    for _ in range(3):
        admit(open_cap, cost=None)


def test_settle_moves_usage_into_counters_and_releases_the_reservation_once():
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("5"))
    price = PriceVersionFactory(model=allocation.model)
    admission = admit(allocation, tokens=100, cost="0.5")
    record = settle(allocation, admission, Usage(input_tokens=1000, output_tokens=500), price)
    counter = UsageCounter.objects.get(allocation=allocation)
    assert record.cost_usd == Decimal("0.002") and record.priced
    assert (counter.tokens_used, counter.cost_used) == (1500, Decimal("0.002"))
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    assert not Reservation.objects.exists()
    assert reservations_sweep(now=timezone.now() + dt.timedelta(days=1)) == 0


def test_the_sweeper_releases_abandoned_reservations():
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("5"))
    admit(allocation, tokens=100, cost="0.5", ttl_s=1)
    assert reservations_sweep(now=timezone.now() + dt.timedelta(seconds=5)) == 1
    counter = UsageCounter.objects.get(allocation=allocation)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)


def test_reconcile_reports_and_fixes_drift():
    allocation = AllocationFactory()
    price = PriceVersionFactory(model=allocation.model)
    settle(allocation, admit(allocation), Usage(input_tokens=10), price)
    UsageCounter.objects.filter(allocation=allocation).update(tokens_used=999)
    drifts = usage_reconcile()
    assert [(d.counter_tokens, d.record_tokens) for d in drifts] == [(999, 10)]
    usage_reconcile(fix=True)
    assert usage_reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_admissions_never_exceed_headroom_by_more_than_one_call():
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("0.03"))
    results = []
    barrier = threading.Barrier(30)

    def worker():
        barrier.wait()
        try:
            admit(allocation, cost="0.01")
            results.append("ok")
        except QuotaBusy:
            results.append("busy")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 3
    assert results.count("busy") == 27
    counter = UsageCounter.objects.get(allocation=allocation)
    assert counter.cost_reserved == Decimal("0.03")
    assert CallRecord.objects.count() == 0


def test_a_stale_cached_counter_id_never_reserves_against_another_allocations_counter():
    from quota.ledger import sync
    from quota.periods import period_start_date

    mine, other = AllocationFactory(quota_tokens_per_month=1000), AllocationFactory(quota_tokens_per_month=1000)
    theirs = admit(other, tokens=5)  # caches other's counter id
    sync._counter_ids[(str(mine.pk), period_start_date(timezone.now()))] = theirs.counter_id  # a stale id
    admission = admit(mine, tokens=7)
    assert admission.counter_id != theirs.counter_id
    assert UsageCounter.objects.get(allocation=other).tokens_reserved == 5
    assert UsageCounter.objects.get(allocation=mine).tokens_reserved == 7
    assert Reservation.objects.get(pk=admission.reservation_id).counter.allocation_id == mine.pk


def test_one_statement_settles_several_calls_and_skips_those_whose_reservation_is_gone():
    """The settlement statement takes any number of calls (the event loop writes them together): one
    counter update per counter, one record each; a call whose reservation was already settled (by
    the sweeper, as a lost call) writes nothing, so it is never recorded or counted twice."""
    first, second = AllocationFactory(), AllocationFactory()
    price = PriceVersionFactory(model=first.model, input_per_1m=Decimal("3"), output_per_1m=Decimal("7"))
    admissions = [admit(first, tokens=100, cost="0.5"), admit(first, tokens=40, cost="0.25"), admit(second, cost=None)]
    Reservation.objects.filter(pk=admissions[1].reservation_id).delete()  # as the sweeper does...
    UsageCounter.objects.filter(pk=admissions[1].counter_id).update(  # ...with the counter in the same step
        tokens_reserved=F("tokens_reserved") - 40, cost_reserved=F("cost_reserved") - Decimal("0.25")
    )
    settlements = [
        settlement(first, admissions[0], "batch-1", Usage(input_tokens=10, output_tokens=5), price),
        settlement(first, admissions[1], "batch-2", Usage(input_tokens=1_000_000), price),
        settlement(second, admissions[2], "batch-3", Usage(input_tokens=7, estimated=True), None),
    ]
    with connection.cursor() as cursor:
        cursor.execute(*settle_statement(settlements))
        written = dict(cursor.fetchall())
    assert sorted(written) == [1, 3]
    records = [CallRecord.objects.get(pk=written[n]) for n in (1, 3)]
    assert [r.request_id for r in records] == ["batch-1", "batch-3"]
    assert [(r.cost_usd, r.priced, r.estimated) for r in records] == [
        (Decimal("0.000065"), True, False),
        (None, False, True),
    ]
    assert not CallRecord.objects.filter(request_id="batch-2").exists()
    counter = UsageCounter.objects.get(pk=admissions[0].counter_id)
    assert (counter.tokens_used, counter.cost_used, counter.calls) == (15, Decimal("0.000065"), 1)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    other = UsageCounter.objects.get(pk=admissions[2].counter_id)
    assert (other.tokens_used, other.cost_used, other.calls, other.tokens_reserved) == (7, 0, 1, 0)
    assert not Reservation.objects.exists()
    assert usage_reconcile(fix=False) == []


def test_a_lost_calls_context_holds_the_usage_set_and_the_sweep_bills_it_exactly():
    """The context every admission writes holds only the usage fields an estimate sets (the rest are
    Usage's defaults), and a lost call is billed from it as the estimate: exact digits, aware times."""
    allocation = AllocationFactory()
    price = PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("3"), output_per_1m=Decimal("7"))
    now = timezone.now()
    record = {
        "request_id": "lost-ctx",
        "endpoint": "chat.completions",
        "started_at": now,
        "allocation_id": str(allocation.pk),
        "member_id": str(allocation.member_id),
        "model_id": str(allocation.model_id),
    }
    estimate = Usage(input_tokens=1234, output_tokens=567, quantity=Decimal("1.250"), estimated=True)
    context = ledger.lost_context(record=record, usage=estimate, price=price)
    assert context["usage"] == {"input_tokens": 1234, "output_tokens": 567, "quantity": "1.250", "estimated": True}
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=1801,
        est_cost=Decimal("0.007671"),
        request_id="lost-ctx",
        now=now,
        ttl_s=1,
        context=context,
    )
    assert admission is not None
    assert Reservation.objects.get().context == context
    assert reservations_sweep(now=now + dt.timedelta(seconds=5)) == 1
    lost = CallRecord.objects.get(request_id="lost-ctx")
    assert (lost.outcome, lost.error_code, lost.estimated) == ("gateway_error", "worker_lost", True)
    assert (lost.input_tokens, lost.output_tokens, lost.quantity) == (1234, 567, Decimal("1.250"))
    assert lost.cost_usd == Decimal("0.007671")  # 1234 × 3 + 567 × 7 per million
    assert lost.started_at == now and lost.started_at.tzinfo is not None
    assert not Reservation.objects.exists()


@pytest.mark.parametrize(
    "estimate",
    [
        Usage(),
        Usage(input_tokens=12, output_tokens=34),
        Usage(input_tokens=12, estimated=True),
        Usage(quantity=Decimal("2.50"), unit="image", tool_calls=(("web_search", 2),), requested_tier="flex"),
    ],
)
def test_an_estimated_context_is_the_one_of_the_estimate_marked_estimated(estimate: Usage) -> None:
    """`estimated=True` gives the context (and its JSON text, key order included) that the usage
    marked estimated by `dataclasses.replace` gives."""
    record = {"request_id": "est", "endpoint": "chat.completions", "started_at": timezone.now()}
    marked = dataclasses.replace(estimate, estimated=True)
    made = ledger.lost_context(record=record, usage=estimate, price=None, estimated=True)
    assert json.dumps(made) == json.dumps(ledger.lost_context(record=record, usage=marked, price=None))
    assert made["usage"]["estimated"] is True
