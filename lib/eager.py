"""A task whose first step runs at once, in its creator's step, as Python 3.12's
`asyncio.Task(..., eager_start=True)` does, on the Python this project runs (3.11).

`asyncio.Task(coro)` schedules the coroutine's first step for the loop's next turn: the creator
goes on until it yields, then the loop polls its descriptors (an `epoll_pwait` system call) and
runs the step. When that first step is what a call waits for (a statement to send, a request to
write), the turn is on the call's path. `start` runs the first step now, as the task's: in the
task's own context (a copy of the creator's) and with the task as the loop's current task (so
`asyncio.current_task()` and `asyncio.timeout()` see it, not the creator), then hands the
coroutine to the task as it stands. Its later steps, its cancellation and its result are the
task's as usual; the task itself takes its first turn later, off the path, to pick the coroutine
up (or to end with what the first step returned or raised).

`first_step` is the lighter form for a coroutine that never asks for its task (no
`current_task`, no `asyncio.timeout`): its first step runs under the creator's task, and a
coroutine that ends in it gives a done future and no task at all.
"""

import asyncio
import collections.abc
import contextvars
import sys
from asyncio import tasks
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start(
    coro: Coroutine[Any, Any, T], *, name: str, loop: asyncio.AbstractEventLoop | None = None
) -> "asyncio.Task[T]":
    """`asyncio.Task(coro, name=name)` on the running loop (`loop`, when the caller has it: each
    asyncio.get_running_loop() is a getpid() system call on Python 3.11), its first step run now."""
    loop = loop or asyncio.get_running_loop()
    if sys.version_info >= (3, 12):  # pragma: no cover - the runtime is 3.11
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
    context = contextvars.copy_context()
    started = _Resumed(coro)
    task: asyncio.Task[T] = asyncio.Task(started, loop=loop, name=name, context=context)
    creator = tasks.current_task(loop)
    if creator is not None:
        tasks._leave_task(loop, creator)  # type: ignore[attr-defined]
    tasks._enter_task(loop, task)  # type: ignore[attr-defined]
    try:
        started.first = context.run(coro.send, None)
    except StopIteration as stop:
        started.done, started.first = True, stop.value
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the task's error (or cancellation), raised in its first turn
        started.done, started.error = True, exc
    finally:
        tasks._leave_task(loop, task)  # type: ignore[attr-defined]
        if creator is not None:
            tasks._enter_task(loop, creator)  # type: ignore[attr-defined]
    return task


def first_step(coro: Coroutine[Any, Any, T], *, name: str) -> "asyncio.Future[T]":
    """The coroutine's first step run now (in a copy of the creator's context, under the creator's
    task); a future of its result: done already if it ended there, else a task going on from it."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    started = _Resumed(coro)
    try:
        started.first = context.run(coro.send, None)
    except StopIteration as stop:
        done = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the coroutine's error (or cancellation), as its future's
        done = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(exc)
        return done
    return asyncio.Task(started, loop=loop, name=name, context=context)


class _Resumed(collections.abc.Coroutine):
    """The task's coroutine: `coro` past its first step. The task's first `send` gets what that
    step yielded (the future it waits on, which the task's cancellation then cancels), or ends
    with what it returned or raised; every later send, throw and close is the coroutine's own, so
    a step of the task costs one method call more than a task made the usual way."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.pending = True  # the task has not taken its first step
        self.first: Any = None  # what the first step yielded, or returned when `done`
        self.done = False
        self.error: BaseException | None = None

    def send(self, value: Any) -> Any:
        if self.pending:
            self.pending = False
            first, self.first = self.first, None
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if self.done:
                raise StopIteration(first)
            return first
        return self.coro.send(value)

    def throw(self, *args: Any) -> Any:
        if self.pending:  # cancelled before its first turn
            self.pending, self.first = False, None
            if self.done or self.error is not None:
                self.error = None
                raise args[0] if len(args) == 1 else args[1]  # it had ended: the throw is the task's end
        return self.coro.throw(*args)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("a task's coroutine, not awaited")
