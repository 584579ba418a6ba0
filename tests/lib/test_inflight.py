"""The registry of a process's in-flight work, which the shutdown drain reads
(gateway_project.server_patches; the drain itself runs under real daphne in tests/serving)."""

import asyncio

import pytest

from lib import inflight


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    for kind in ("_tasks", "_on_shutdown", "_on_abandon", "_on_close"):
        monkeypatch.setattr(inflight, kind, {})


async def test_pending_holds_every_kinds_futures_until_each_is_discarded():
    calls, settlements = inflight.tasks("calls"), inflight.tasks("settlements")
    release = asyncio.Event()
    tasks = [asyncio.ensure_future(release.wait()) for _ in range(3)]
    for owner, task in zip((calls, calls, settlements), tasks, strict=True):
        owner.add(task)
        task.add_done_callback(owner.discard)
    assert set(inflight.pending()) == set(tasks)
    release.set()
    await asyncio.gather(*tasks)
    assert inflight.pending() == []


def test_a_name_registered_again_keeps_its_set_and_replaces_its_hook():
    first = inflight.tasks("calls")
    first.add("a future")
    assert inflight.tasks("calls") is first and inflight.pending() == ["a future"]

    async def old():
        return 1

    async def new():
        return 2

    inflight.on_abandon("held", old)
    inflight.on_abandon("held", new)
    assert inflight.names()["on_abandon"] == ["held"]
    assert asyncio.run(inflight.abandon()) == 2


async def test_shutdown_ends_every_kind_at_once():
    started: list[str] = []
    both = asyncio.Event()

    def finisher(name):
        async def finish():
            started.append(name)
            if len(started) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), timeout=5)  # would time out if run one after the other

        return finish

    inflight.on_shutdown("sessions", finisher("sessions"))
    inflight.on_shutdown("streams", finisher("streams"))
    await inflight.shutdown()
    assert sorted(started) == ["sessions", "streams"]


async def test_abandon_counts_what_every_kind_wrote_off():
    async def three():
        return 3

    async def none():
        return 0

    inflight.on_abandon("calls", three)
    inflight.on_abandon("sessions", none)
    assert await inflight.abandon() == 3


async def test_close_runs_in_registration_order_and_an_error_stops_it():
    closed: list[str] = []

    def closer(name, fail=False):
        async def close():
            if fail:
                raise OSError(name)
            closed.append(name)

        return close

    inflight.on_close("upstream", closer("upstream"))
    inflight.on_close("pool", closer("pool"))
    await inflight.close()
    assert closed == ["upstream", "pool"]
    inflight.on_close("upstream", closer("upstream", fail=True))
    with pytest.raises(OSError, match="upstream"):
        await inflight.close()
    assert closed == ["upstream", "pool"]


async def test_nothing_registered_drains_at_once():
    await inflight.shutdown()
    await inflight.close()
    assert inflight.pending() == [] and await inflight.abandon() == 0
