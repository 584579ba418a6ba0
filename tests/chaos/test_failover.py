"""The fault suite with a model on two deployments: the load's main model (`chaos/chaos-ok`) is
served by two provider accounts, each an upstream process of its own, and the first one's upstream
is killed (SIGKILL) and started again, in a cycle, while two gateway processes take the load. The
same invariants as test_faults (nothing lost, nothing billed twice, counters == records), and:
a request reaches the upstreams at most once per attempt its record counts, only one of them
answers it, and the record names the deployment that did.

What the clients of that model saw while a deployment was down is measured (the share of
client-visible errors, docs/RELIABILITY.md). A call that started while the upstream was down must
be served by the other deployment; a stream the killed upstream had begun is cut (a stream fails
over only before its first byte).

CI runs one short cycle (`make test`); `make chaos` runs it with the long run's settings."""

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import CAP, SHARED_MODEL, rig_of
from .faults import Faults
from .invariants import check
from .load import KINDS, Load, Seen, tally
from .test_faults import CALLS, CONCURRENCY, OUTAGE_S, settle_what_is_left

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("chaos")]

# The kinds calling the shared model whose client expects a whole answer.
WATCHED = {kind for kind, (slug, _, _) in KINDS.items() if slug == SHARED_MODEL and not kind.startswith("abandoned")}


# Shorter than the load between outages, so the restarted deployment takes its share again before
# the next kill (and calls are running on it when it is killed).
COOLDOWN_S = 1.0


@pytest.fixture
def rig():
    with rig_of(gateways=2, outage_s=OUTAGE_S, deployments=2, cooldown_s=COOLDOWN_S) as rig:
        rig.seed()
        yield rig


async def _run(load: Load, faults: Faults) -> int:
    load.keep_going.set()
    running = asyncio.ensure_future(load.run())
    cycles = 0
    while True:
        await faults.deployment_cycle()
        cycles += 1
        if load._issued >= CALLS or running.done():
            break
    load.keep_going.clear()
    await running
    return cycles


def failed(seen: Seen) -> bool:
    """What its client counts as an error: no answer, not a 200, or a stream not received whole."""
    return seen.status != 200 or (KINDS[seen.kind][1] and seen.tokens is None)


def during_outages(seen: list[Seen], outages: list[tuple[float, float]]) -> dict:
    """The watched calls that overlapped an outage: those already running when the upstream was
    killed, and those that started while it was down; with their errors and the errors' share."""
    running, started = [], []
    for s in seen:
        if s.kind not in WATCHED or not s.ended:
            continue
        for killed, back in outages:
            if s.began < killed <= s.ended:
                running.append(s)
            elif killed <= s.began <= back:
                started.append(s)

    def share(calls: list[Seen]) -> dict:
        errors = [s for s in calls if failed(s)]
        return {
            "calls": len(calls),
            "errors": len(errors),
            "share": round(len(errors) / len(calls), 4) if calls else None,
            "errors_by_kind": dict(Counter(s.kind for s in errors)),
        }

    return {"running_at_kill": share(running), "started_while_down": share(started), "all": share(running + started)}


def outside_outages(seen: list[Seen], outages: list[tuple[float, float]]) -> dict:
    calls = [
        s
        for s in seen
        if s.kind in WATCHED and s.ended and not any(s.began <= back and s.ended >= killed for killed, back in outages)
    ]
    return {"calls": len(calls), "errors": sum(failed(s) for s in calls)}


def test_one_deployment_killed_and_restarted_loses_nothing_and_bills_once(rig, settings):
    gateways, faults = rig.gateways, rig.faults
    load = Load(key=rig.key, ports=[g.port for g in gateways], calls=CALLS, concurrency=CONCURRENCY)
    started = time.monotonic()
    cycles = asyncio.run(_run(load, faults))
    load_s = time.monotonic() - started
    replayed, swept = settle_what_is_left(rig, settings)
    shared = (SHARED_MODEL.split("/", 1)[1], rig.deployment_ids)
    upstream_calls = rig.upstream_calls()
    report = check(upstream_calls=upstream_calls, seen=load.seen, capped_allocation=rig.capped, cap=CAP, shared=shared)
    outage = during_outages(load.seen, faults.upstream_outages)
    report.figures.update(
        load_s=round(load_s, 1),
        outage_cycles=cycles,
        outage_s=OUTAGE_S,
        cooldown_s=COOLDOWN_S,
        spool_replayed=replayed,
        swept=swept,
        clients=tally(load.seen),
        during_outages=outage,
        outside_outages=outside_outages(load.seen, faults.upstream_outages),
        served_by_upstream={i: sum(i in c["served_by"] for c in upstream_calls) for i in range(2)},
        faults=faults.log,
    )
    figures = json.dumps(report.figures, indent=1, default=str)
    print("\nchaos failover figures:", figures)
    if os.environ.get("CHAOS_REPORT"):
        path = Path(os.environ["CHAOS_REPORT"])
        path = path.with_name(f"{path.stem}-failover{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(figures)
    assert not report.summary, json.dumps(report.summary, indent=1, default=str)
    assert outage["started_while_down"]["calls"] > 0, "no call started while the deployment was down"
    assert outage["started_while_down"]["errors"] == 0, outage  # the other deployment served them
    assert report.figures["served_after_failover"] > 0  # some calls went to the killed one first
    assert report.figures["served_by_upstream"][1] > 0
