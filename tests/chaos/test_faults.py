"""The fault suite: two real gateway processes (daphne) on one PostgreSQL database, a real
upstream and real Redis in processes of their own, mixed load, and the faults a deployment
meets — a process killed or stopped and restarted, every database connection terminated, the
database refusing connections, Redis gone — then the billing invariants (see invariants.py).

CI runs one short cycle (`make test`); `make chaos` runs the same test with ≥ 10,000 calls and
10-second outages (CHAOS_CALLS, CHAOS_CONCURRENCY, CHAOS_OUTAGE_S)."""

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from django.utils import timezone

from quota.ledger import reservations_sweep, spool_replay

from .conftest import CAP, UPSTREAM_TIMEOUT_S, rig_of
from .faults import Faults
from .invariants import check
from .load import Load, tally

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("chaos")]

CALLS = int(os.environ.get("CHAOS_CALLS", "300"))
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "8"))
OUTAGE_S = float(os.environ.get("CHAOS_OUTAGE_S", "3"))


def settle_what_is_left(rig, settings) -> tuple[int, int]:
    """What the periodic tasks do after an outage: the spool's replay, then the sweep of the
    reservations left by processes that died (run as if their lease had run out)."""
    time.sleep(UPSTREAM_TIMEOUT_S + 1)  # calls whose clients left finish upstream and settle
    settings.REDIS_URL = rig.redis_url  # the spool the gateways wrote to
    replayed = spool_replay()
    swept = reservations_sweep(now=timezone.now() + dt.timedelta(seconds=UPSTREAM_TIMEOUT_S + 61))
    return replayed, swept


@pytest.fixture
def rig():
    with rig_of(gateways=2, outage_s=OUTAGE_S) as rig:
        rig.seed()
        yield rig


async def _run(load: Load, faults: Faults) -> int:
    """Load until CALLS calls were made and at least one whole cycle of faults ran under it."""
    load.keep_going.set()
    running = asyncio.ensure_future(load.run())
    cycles = 0
    while True:
        await faults.cycle()
        cycles += 1
        if load._issued >= CALLS or running.done():
            break
    load.keep_going.clear()
    await running
    return cycles


def test_no_call_is_lost_or_billed_twice_under_faults(rig, settings):
    gateways, faults = rig.gateways, rig.faults
    load = Load(key=rig.key, ports=[g.port for g in gateways], calls=CALLS, concurrency=CONCURRENCY)
    started = time.monotonic()
    cycles = asyncio.run(_run(load, faults))
    load_s = time.monotonic() - started
    for index, gateway in enumerate(gateways):
        seen = asyncio.run(load.once("plain", server=index))
        assert seen.status == 200, f"{gateway.port} does not serve after the faults: {seen}"
    replayed, swept = settle_what_is_left(rig, settings)
    report = check(upstream_calls=rig.upstream_calls(), seen=load.seen, capped_allocation=rig.capped, cap=CAP)
    report.figures.update(
        load_s=round(load_s, 1),
        fault_cycles=cycles,
        spool_replayed=replayed,
        swept=swept,
        clients=tally(load.seen),
        restarts={g.port: g.starts - 1 for g in gateways},
        faults=faults.log,
    )
    figures = json.dumps(report.figures, indent=1, default=str)
    print("\nchaos figures:", figures)
    if os.environ.get("CHAOS_REPORT"):
        report_path = Path(os.environ["CHAOS_REPORT"])
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(figures)
    assert not report.summary, json.dumps(report.summary, indent=1, default=str)
