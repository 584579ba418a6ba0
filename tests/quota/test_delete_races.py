"""Deleting an allocation (or a counter), an API key or a price version while one of its calls is in
flight: each race staged between two connections at the point of Django's deletion where it matters
(before its transaction, between the cascade's statements), and what each side ends with. The
database guards these without the foreign keys the accounting rows had (quota 0021-0024)."""

import threading
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection
from django.db.models import ProtectedError
from django.db.models.query import QuerySet
from django.db.models.signals import pre_delete
from django.db.models.sql.subqueries import DeleteQuery
from django.utils import timezone

from allocations.models import Allocation, ApiKey
from quota import ledger
from quota.ledger.spool import call_settle_durable, spool_depth
from quota.models import CallRecord, Reservation, UsageCounter
from quota.pricing import Usage
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, PriceVersionFactory, make_key

from .conftest import admit, record_of_call

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = Usage(input_tokens=5, output_tokens=5)


def _thread_of(work):
    """`work()` started in a thread of its own (its own connection, its own transaction): the
    thread, and the list that gets its result or the exception it raised."""
    outcome: list = []

    def run():
        try:
            outcome.append(work())
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def on_another_connection(work):
    """`work()` on a connection of its own, to its end: its result, or the exception it raised."""
    thread, outcome = _thread_of(work)
    thread.join(30)
    assert not thread.is_alive()
    return outcome[0]


def started_on_another_connection(work):
    """`work()` started on a connection of its own; returns (thread, outcome list) once that
    connection waits for a lock (or the work has finished)."""
    thread, outcome = _thread_of(work)
    for _ in range(500):
        if outcome:
            break
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                break
        thread.join(0.01)
    return thread, outcome


def refused_deletion_with(allocation, work):
    """Deletes `allocation` through Django, running `work` to its end on another connection at the
    deletion's pre_delete signal (after Django's collection, before its first DELETE); the deletion
    must be refused (IntegrityError). Returns what `work` returned or raised."""
    done: list = []

    def run_now(sender, instance, **kwargs):
        if not done:
            done.append(on_another_connection(work))

    pre_delete.connect(run_now, sender=Allocation)
    try:
        with pytest.raises(IntegrityError):
            Allocation.objects.get(pk=allocation.pk).delete()
    finally:
        pre_delete.disconnect(run_now, sender=Allocation)
    return done[0]


def deleted_with(allocation, model, work, monkeypatch):
    """Deletes `allocation` through Django, starting `work` on another connection right after the
    deletion's DELETE of `model`'s rows (so `work` meets the rows that DELETE holds); returns what
    `work` returned or raised, once the deletion is over."""
    original = DeleteQuery.delete_batch
    waiting: list = []

    def delete_batch(self, pk_list, using):
        deleted = original(self, pk_list, using)
        if self.model is model and not waiting:
            waiting.append(started_on_another_connection(work))
        return deleted

    monkeypatch.setattr(DeleteQuery, "delete_batch", delete_batch)
    Allocation.objects.get(pk=allocation.pk).delete()
    monkeypatch.undo()
    thread, outcome = waiting[0]
    thread.join(30)
    return outcome[0]


def after_cascade_of(model, work, monkeypatch):
    """Runs `work` once, on another connection, right after Django's deletion has deleted the rows
    of `model` it cascades into (their fast delete, a statement of the deletion's transaction)."""
    original = QuerySet._raw_delete
    done: list = []

    def raw_delete(self, using):
        deleted = original(self, using)
        if self.model is model and not done:
            done.append(on_another_connection(work))
        return deleted

    monkeypatch.setattr(QuerySet, "_raw_delete", raw_delete)
    return done


def test_an_allocation_is_not_deleted_under_a_call_admitted_after_its_reservations_were_cascaded(monkeypatch):
    """The call admitted between the cascade's DELETE of the reservations and the DELETE of their
    counter: the deletion fails (the counter is held by a call in flight) and the call settles."""
    allocation = AllocationFactory()
    ledger.release(admission=admit(allocation))  # the period's counter, its id cached
    admitted = after_cascade_of(Reservation, lambda: admit(allocation), monkeypatch)
    with pytest.raises(IntegrityError):
        Allocation.objects.get(pk=allocation.pk).delete()
    monkeypatch.undo()
    admission = admitted[0]
    assert Allocation.objects.filter(pk=allocation.pk).exists()
    assert Reservation.objects.filter(pk=admission.reservation_id, counter_id=admission.counter_id).exists()
    record = ledger.settle(admission=admission, record=record_of_call(allocation), usage=USAGE, price=None)
    assert record is not None
    counter = UsageCounter.objects.get(pk=admission.counter_id)
    assert (counter.tokens_used, counter.tokens_reserved, counter.calls) == (10, 0, 1)


def test_a_call_admitted_once_the_counter_is_deleted_waits_and_is_refused(monkeypatch):
    """The call whose admission meets the counter already deleted by the allocation's deletion
    waits for that transaction; once it commits, the admission finds no counter, and the one it
    makes is refused by the counter's own key to the deleted allocation: nothing is left behind."""
    allocation = AllocationFactory()
    ledger.release(admission=admit(allocation))
    outcome = deleted_with(allocation, UsageCounter, lambda: admit(allocation), monkeypatch)
    assert isinstance(outcome, IntegrityError)
    assert not Reservation.objects.exists()
    assert not UsageCounter.objects.exists()


def test_an_allocation_deleted_while_a_call_is_in_flight_takes_its_reservation_and_the_call_goes_unrecorded():
    """What an allocation's deletion does today to a call admitted before it: the cascade deletes
    the reservation with the counter, so the call's settlement finds it gone and writes nothing (no
    record can name an allocation that no longer exists). Allocations are deleted only once their
    months of records are pruned (docs/DECISIONS.md); the admin cannot delete them."""
    allocation = AllocationFactory()
    admission = admit(allocation)
    Allocation.objects.get(pk=allocation.pk).delete()
    assert ledger.settle(admission=admission, record=record_of_call(allocation), usage=USAGE, price=None) is None
    assert not CallRecord.objects.exists()
    assert not Reservation.objects.exists()


def test_a_counter_deleted_alone_while_a_call_holds_it_is_refused():
    """Any DELETE of a counter that a reservation names fails, however it is sent."""
    allocation = AllocationFactory()
    admission = admit(allocation)
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("DELETE FROM quota_usagecounter WHERE id = %s", [admission.counter_id])
    assert UsageCounter.objects.filter(pk=admission.counter_id).exists()


@pytest.fixture
def file_spool(settings, tmp_path):
    """The spool as a local file of this test's own (no Redis)."""
    settings.REDIS_URL = ""
    settings.GATEWAY_SPOOL_FILE = tmp_path / "spool.jsonl"


def test_a_key_or_a_price_is_never_deleted_so_a_call_in_flight_settles_with_both(file_spool):
    """A call's record names its API key and price version without a database constraint: the
    database refuses to delete either, whatever sends the DELETE, so the call admitted with them
    settles, is recorded and billed with both. (With the record's foreign keys and deletable keys, a
    key deleted while its call was in flight made the call's settlement fail on every attempt: the
    call unrecorded, its spooled settlement stopping the replay of those behind it, its sweep
    failing alike.)"""
    allocation = AllocationFactory()
    key = make_key(member=allocation.member, allocations=[allocation])[0]
    price = PriceVersionFactory(model=allocation.model)
    record = {**record_of_call(allocation), "api_key_id": str(key.pk), "member_id": str(allocation.member_id)}
    record["allocation_id"] = str(record.pop("allocation").pk)
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=10,
        est_cost=Decimal("0.01"),
        request_id="req",
        now=timezone.now(),
        context=ledger.lost_context(record=record, usage=USAGE, price=price),
    )
    with pytest.raises(IntegrityError, match="revoked, never deleted"):
        ApiKey.objects.filter(pk=key.pk).delete()
    with pytest.raises(IntegrityError, match="append-only"), connection.cursor() as cursor:
        cursor.execute("DELETE FROM quota_priceversion WHERE id = %s", [price.pk])
    assert call_settle_durable(admission=admission, record=record, usage=USAGE, price=price) is not None
    assert spool_depth() == 0
    settled = CallRecord.objects.get()
    assert (settled.api_key_id, settled.price_version_id, settled.priced) == (key.pk, price.pk, True)
    assert settled.cost_usd > 0


def test_an_allocation_with_a_record_settled_during_its_deletion_stays():
    """The call record's key to its allocation (PROTECT): a call settled after Django's check for
    the allocation's records (at collection, before the deletion's transaction) and before the
    deletion's first statement makes the deletion fail; the record stays, with its allocation."""
    allocation = AllocationFactory()
    admission = admit(allocation)
    record = record_of_call(allocation)
    settled = refused_deletion_with(
        allocation, lambda: ledger.settle(admission=admission, record=record, usage=USAGE, price=None)
    )
    assert isinstance(settled, CallRecord)
    assert CallRecord.objects.get().allocation_id == allocation.pk
    assert UsageCounter.objects.get(allocation=allocation).calls == 1


def refusal_of(allocation, rid: str) -> dict:
    """A refused call's record fields (no usage, no reservation), as quota.admission writes them."""
    return {
        **record_of_call(allocation, rid),
        "outcome": "rejected_rate_limited",
        "status_code": 429,
        "error_code": "rate_limited",
    }


def test_an_allocation_with_a_refusal_recorded_during_its_deletion_stays():
    """A refusal's record has no reservation: its statement holds the allocation's row itself, so a
    refusal recorded after Django's check for records and before the deletion's DELETE makes the
    deletion fail, and the record keeps its allocation."""
    allocation = AllocationFactory()
    refusal = refusal_of(allocation, "no")
    recorded = refused_deletion_with(allocation, lambda: ledger.record_reject(record=refusal))
    assert isinstance(recorded, CallRecord)
    assert CallRecord.objects.get().allocation_id == allocation.pk


def test_a_refusal_waiting_for_an_allocations_deletion_is_not_recorded_against_it(monkeypatch):
    """A refusal recorded while the deletion holds the allocation's row waits for it; once the
    deletion commits, the refusal's statement finds no allocation and fails, as the key's check
    did: no record names an allocation that does not exist."""
    allocation = AllocationFactory()
    record = refusal_of(allocation, "late")
    outcome = deleted_with(allocation, Allocation, lambda: ledger.record_reject(record=record), monkeypatch)
    assert isinstance(outcome, IntegrityError)
    assert not CallRecord.objects.exists()
    assert not Allocation.objects.filter(pk=allocation.pk).exists()


@pytest.mark.parametrize("named", ["member", "model"])
def test_a_member_or_model_a_record_names_is_not_deleted(named):
    """A record's member and model carry no foreign key: a record's member is its key's and its model
    its allocation's, each kept by that row's own key, and the deletion of a member or model that a
    record names is refused where it is deleted, by Django (PROTECT) and by the database, whatever
    sends the DELETE. Here the record names a member (or model) with no key and no allocation of
    its own, so nothing but that refusal keeps it."""
    member, model = MemberFactory(), CatalogModelFactory()
    CallRecord.objects.create(
        request_id="lone",
        member=member,
        model=model,
        endpoint="chat.completions",
        started_at=timezone.now(),
        outcome="rejected_rate_limited",
    )
    row = {"member": member, "model": model}[named]
    with pytest.raises(ProtectedError):
        row.delete()
    table = type(row)._meta.db_table
    with pytest.raises(IntegrityError, match="has call records"), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [row.pk])  # noqa: S608 (a model's own table)
    assert type(row).objects.filter(pk=row.pk).exists()
    CallRecord.objects.all().delete()
    row.delete()  # named by no record: deletable
    assert not type(row).objects.filter(pk=row.pk).exists()
