"""Where a whole call's task takes its first step (proxy.views._whole): one call at a time, in the
request's own step (its admission statement leaves without a turn of the loop first); with other
calls in flight, in the loop's next turn as a task made the usual way. Either way the task is
the whole call's, and the request gets its answer from it."""

import asyncio
import types
import uuid

import pytest

from proxy import accounting, views


@pytest.fixture
def whole_call(monkeypatch):
    events: list[tuple[str, str]] = []
    release = asyncio.Event()

    async def fake(call, answered):
        events.append(("first step", asyncio.current_task().get_name()))
        await release.wait()
        if not answered.done():  # as the real one: a request gone reads nothing
            answered.set_result("the answer")

    monkeypatch.setattr(views, "_whole_call", fake)
    return events, release


def _call():
    return types.SimpleNamespace(rate_headers=None, client_gone=False)


async def test_alone_the_whole_calls_first_step_runs_in_the_requests_step(whole_call):
    events, release = whole_call
    assert accounting.none_held()
    request = asyncio.Task(views._whole(_call()), name="request")
    await asyncio.sleep(0)  # the request's first step, to its wait for the answer
    assert events == [("first step", "whole call")]  # already, and as the whole call's task
    release.set()
    assert await request == "the answer"


async def test_with_calls_in_flight_the_whole_call_starts_a_turn_later(whole_call, monkeypatch):
    events, release = whole_call
    monkeypatch.setattr(accounting, "_held", {uuid.uuid4()})  # another call admitted and unsettled
    request = asyncio.Task(views._whole(_call()), name="request")
    await asyncio.sleep(0)
    assert events == []
    await asyncio.sleep(0)
    assert events == [("first step", "whole call")]
    release.set()
    assert await request == "the answer"


async def test_a_request_cancelled_leaves_the_eagerly_started_call_running(whole_call):
    events, release = whole_call
    call = _call()
    request = asyncio.Task(views._whole(call), name="request")
    await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert call.client_gone
    (task,) = [t for t in views._background if t.get_name() == "whole call"]
    assert not task.done()
    release.set()
    await task
    assert events == [("first step", "whole call")]
