"""A database outage during settlement loses nothing: the settlement is spooled and replayed."""

from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from quota import ledger
from quota.ledger.spool import SPOOL_KEY, _redis, call_settle_durable, spool_depth, spool_push, spool_replay
from quota.models import CallRecord, UsageCounter
from quota.pricing import Usage
from tests.factories import AllocationFactory, PriceVersionFactory


@pytest.fixture
def empty_spool(settings, tmp_path):
    settings.GATEWAY_SPOOL_FILE = tmp_path / "spool.jsonl"
    client = _redis()
    if client is not None:
        client.delete(SPOOL_KEY, SPOOL_KEY + ":processing")
    yield
    if client is not None:
        client.delete(SPOOL_KEY, SPOOL_KEY + ":processing")


def _database_down():
    """Really cut the connection: point it at a closed port and drop the open socket."""
    connection.close()
    saved = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = 1
    return saved


def _database_up(saved):
    connection.close()
    connection.settings_dict["PORT"] = saved


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_redis", [True, False])
def test_a_settlement_during_a_database_outage_is_replayed_exactly_once(settings, empty_spool, with_redis):
    if not with_redis:
        settings.REDIS_URL = ""
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("10"))
    price = PriceVersionFactory(model=allocation.model)
    now = timezone.now()
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=Decimal("10"),
        est_tokens=50,
        est_cost=Decimal("0.5"),
        request_id="req-outage",
        now=now,
    )
    record = {
        "request_id": "req-outage",
        "allocation": allocation,
        "member": allocation.member,
        "model": allocation.model,
        "endpoint": "chat.completions",
        "started_at": now,
        "outcome": "success",
        "status_code": 200,
    }
    saved = _database_down()
    try:
        assert (
            call_settle_durable(
                admission=admission, record=record, usage=Usage(input_tokens=1000, output_tokens=500), price=price
            )
            is None
        )
    finally:
        _database_up(saved)
    assert spool_depth() == 1
    assert CallRecord.objects.count() == 0

    assert spool_replay() == 1
    assert spool_replay() == 0
    row = CallRecord.objects.get()
    assert (row.request_id, row.cost_usd, row.input_tokens) == ("req-outage", Decimal("0.002"), 1000)
    counter = UsageCounter.objects.get(allocation=allocation)
    assert (counter.tokens_used, counter.cost_used, counter.cost_reserved) == (1500, Decimal("0.002"), 0)
    assert spool_depth() == 0


@pytest.mark.django_db(transaction=True)
def test_replay_while_the_database_is_still_down_keeps_the_settlement(empty_spool):
    allocation = AllocationFactory()
    now = timezone.now()
    record = {
        "request_id": "r2",
        "allocation": allocation,
        "endpoint": "embeddings",
        "started_at": now,
        "outcome": "success",
    }
    saved = _database_down()
    try:
        call_settle_durable(admission=None, record=record, usage=Usage(input_tokens=3), price=None)
        assert spool_replay() == 0
    finally:
        _database_up(saved)
    assert spool_depth() == 1
    assert spool_replay() == 1
    assert CallRecord.objects.get().input_tokens == 3


@pytest.mark.django_db(transaction=True)
def test_the_replay_task_settles_what_the_outage_spooled(empty_spool):
    from quota.tasks import settlements_replay

    allocation = AllocationFactory()
    record = {
        "request_id": "r3",
        "allocation": allocation,
        "endpoint": "embeddings",
        "started_at": timezone.now(),
        "outcome": "success",
    }
    saved = _database_down()
    try:
        call_settle_durable(admission=None, record=record, usage=Usage(input_tokens=7), price=None)
    finally:
        _database_up(saved)
    assert settlements_replay.delay().get() == 1
    assert settlements_replay.delay().get() == 0
    assert UsageCounter.objects.get(allocation=allocation).tokens_used == 7


@pytest.mark.django_db(transaction=True)
def test_a_settlement_whose_connection_was_terminated_is_written_on_a_new_one_not_spooled(empty_spool):
    allocation = AllocationFactory()
    admission = ledger.admit(
        allocation_id=allocation.pk,
        token_cap=None,
        cost_cap=None,
        est_tokens=50,
        est_cost=None,
        request_id="r4",
        now=timezone.now(),
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    db = connection.settings_dict
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    record = {"request_id": "r4", "allocation": allocation, "endpoint": "embeddings", "started_at": timezone.now()}
    written = call_settle_durable(
        admission=admission, record={**record, "outcome": "success"}, usage=Usage(input_tokens=9), price=None
    )
    assert written is not None and written.pk
    assert spool_depth() == 0
    counter = UsageCounter.objects.get(allocation=allocation)
    assert (counter.tokens_used, counter.tokens_reserved, counter.calls) == (9, 0, 1)


@pytest.mark.django_db(transaction=True)
def test_the_sweep_and_the_gauge_leave_the_spool_directory_alone_while_redis_answers(settings, tmp_path):
    # In the image the application directory is read-only: the local file is created only by a
    # settlement that Redis refused, never by a replay, a sweep or a scrape.
    settings.GATEWAY_SPOOL_FILE = tmp_path / "not-yet" / "spool.jsonl"
    assert _redis() is not None
    from quota.tasks import reservations_sweep_task

    assert reservations_sweep_task() == 0
    assert spool_replay() == 0 and spool_depth() == 0
    assert not (tmp_path / "not-yet").exists()


@pytest.mark.django_db(transaction=True)
def test_without_redis_the_first_spooled_settlement_creates_the_spool_directory(settings, tmp_path):
    settings.REDIS_URL = ""
    settings.GATEWAY_SPOOL_FILE = tmp_path / "spool" / "dir" / "spool.jsonl"
    spool_push({"spool_id": "x"})
    assert spool_depth() == 1
