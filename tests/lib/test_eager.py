"""lib.eager: a task whose first step runs in its creator's step, and otherwise behaves as a task."""

import asyncio
import contextvars

import pytest

from lib import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="creator")


async def _waits(log: list, wait: asyncio.Future) -> int:
    log.append(("first", asyncio.current_task()))
    VAR.set("task")
    value = await wait
    log.append(("after", VAR.get()))
    return value * 2


@pytest.mark.parametrize("begin", [eager.start, eager.first_step])
async def test_first_step_runs_before_the_creator_yields(begin) -> None:
    wait = asyncio.get_running_loop().create_future()
    log: list = []
    task = begin(_waits(log, wait), name="t")
    assert [entry[0] for entry in log] == ["first"]  # no turn of the loop in between
    assert VAR.get() == "creator"  # the task's context is a copy
    await asyncio.sleep(0)
    wait.set_result(21)
    assert await task == 42
    assert log[-1] == ("after", "task")


async def test_the_first_step_runs_as_the_task() -> None:
    creator = asyncio.current_task()
    log: list = []
    task = eager.start(_waits(log, asyncio.get_running_loop().create_future()), name="t")
    assert log[0][1] is task  # asyncio.current_task() inside the first step
    assert asyncio.current_task() is creator  # and the creator's again after it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_entered_in_the_first_step_cancels_the_task_not_its_creator() -> None:
    async def times_out() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            return "timed out"
        return "not"

    task = eager.start(times_out(), name="t")
    assert await task == "timed out"
    await asyncio.sleep(0.02)  # the creator is still running: it was not cancelled


async def test_cancelling_the_task_cancels_what_it_waits_for() -> None:
    wait = asyncio.get_running_loop().create_future()
    for begin in (eager.start, eager.first_step):
        wait = asyncio.get_running_loop().create_future()
        task = begin(_waits([], wait), name="t")
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wait.cancelled()


async def test_a_coroutine_that_catches_the_cancellation_goes_on() -> None:
    wait = asyncio.get_running_loop().create_future()

    async def shrugs() -> str:
        try:
            await wait
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "caught"
        return "not"

    task = eager.start(shrugs(), name="t")
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "caught"


async def test_what_the_first_step_returns_or_raises() -> None:
    async def returns() -> int:
        return 5

    async def raises() -> int:
        raise ValueError("no")

    assert await eager.start(returns(), name="t") == 5
    with pytest.raises(ValueError, match="no"):
        await eager.start(raises(), name="t")
    done = eager.first_step(returns(), name="t")
    assert done.done() and done.result() == 5  # no task at all
    failed = eager.first_step(raises(), name="t")
    assert isinstance(failed.exception(), ValueError)


async def test_an_error_after_the_first_step_is_the_tasks() -> None:
    wait = asyncio.get_running_loop().create_future()

    async def fails_later() -> None:
        await wait
        raise KeyError("later")

    task = eager.start(fails_later(), name="t")
    wait.set_result(None)
    with pytest.raises(KeyError):
        await task
    assert task.get_name() == "t"
