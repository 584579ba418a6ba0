"""One outage at a time against one real gateway process: what the client gets and what is billed
when PostgreSQL refuses connections, when Redis is gone, and when the database goes away between
a call's admission and its settlement."""

import asyncio
import signal

import pytest

from quota.models import CallRecord, Reservation
from quota.services import usage_reconcile

from .conftest import rig_of
from .load import Load
from .test_faults import settle_what_is_left

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("chaos")]


@pytest.fixture(scope="module")
def one_process(django_db_setup, django_db_blocker):
    """One gateway and its neighbours for the whole module: each test seeds its own world (the
    gateway's caches follow the auth generation its seeding bumps)."""
    with django_db_blocker.unblock(), rig_of(gateways=1, outage_s=0) as rig:
        yield rig


@pytest.fixture
def rig(one_process, transactional_db):
    one_process.seed()
    return one_process


@pytest.fixture
def load(rig):
    load = Load(key=rig.key, ports=[rig.gateways[0].port], calls=0, concurrency=1)
    assert asyncio.run(load.once("plain")).status == 200  # warm: the call's caches are filled
    return load


def test_a_database_refusing_connections_answers_503_gateway_unavailable_with_retry_after(rig, load):
    rig.forwarder.down()
    refused = asyncio.run(load.once("plain"))
    rig.forwarder.up()
    assert (refused.status, refused.error_code) == (503, "gateway_unavailable")
    assert refused.retry_after and int(refused.retry_after) > 0
    assert refused.rid not in {c["rid"] for c in rig.upstream_calls()}  # nothing went upstream
    assert asyncio.run(load.once("plain")).status == 200  # and the next call is served again


def test_without_redis_calls_are_served_and_billed_from_the_database(rig, load):
    rig.redis.stop(signal.SIGKILL)
    plain, stream = asyncio.run(load.once("plain")), asyncio.run(load.once("stream"))
    rig.redis.start()
    assert (plain.status, stream.status) == (200, 200)
    served = {c["rid"]: c["served"] for c in rig.upstream_calls()}
    for seen in (plain, stream):
        record = CallRecord.objects.get(request_id=seen.rid)
        assert record.input_tokens + record.output_tokens == served[seen.rid] == seen.tokens


def test_a_settlement_the_database_refuses_is_spooled_answered_and_billed_after_replay(rig, load, settings):
    async def call_while_the_database_goes_away():
        call = asyncio.ensure_future(load.once("slow"))
        await asyncio.sleep(0.7)  # admitted; the upstream answers after 1.5 s
        await asyncio.to_thread(rig.forwarder.down)
        seen = await call
        rig.forwarder.up()
        return seen

    seen = asyncio.run(call_while_the_database_goes_away())
    assert seen.status == 200 and seen.tokens  # the client has its answer
    assert not CallRecord.objects.filter(request_id=seen.rid).exists()
    replayed, _ = settle_what_is_left(rig, settings)
    assert replayed == 1
    record = CallRecord.objects.get(request_id=seen.rid)
    assert (record.outcome, record.input_tokens + record.output_tokens) == ("success", seen.tokens)
    assert not Reservation.objects.exists()
    assert usage_reconcile() == []


def test_a_call_whose_process_is_killed_is_billed_once_at_its_estimate_by_the_sweeper(rig, load, settings):
    async def call_then_kill():
        call = asyncio.ensure_future(load.once("slow"))
        await asyncio.sleep(0.7)  # admitted, and upstream: the answer comes after 1.5 s
        await asyncio.to_thread(rig.gateways[0].stop, signal.SIGKILL)
        return await call

    lost = asyncio.run(call_then_kill())
    rig.gateways[0].start()
    assert lost.status is None  # the client lost its connection
    held = Reservation.objects.get(request_id=lost.rid)
    _, swept = settle_what_is_left(rig, settings)
    assert swept == 1
    record = CallRecord.objects.get(request_id=lost.rid)
    assert (record.outcome, record.error_code, record.estimated) == ("gateway_error", "worker_lost", True)
    assert (record.input_tokens + record.output_tokens, record.cost_usd) == (held.tokens, held.cost)
    assert record.output_tokens == 64  # the request's max_tokens: what the admission reserved
    assert usage_reconcile() == []
    assert asyncio.run(load.once("plain")).status == 200
