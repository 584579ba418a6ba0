"""The registry of this process's in-flight work: what a server that shuts down must wait for,
end at once, write off and close. The drain (gateway_project.server_patches) reads only this
registry; each kind of work registers itself once, where it lives, when its module is imported
(the ASGI application imports them all before the server starts).

Four kinds, in the order the drain uses them:
- `tasks(name)`: a set of futures held by strong references (an upstream call finishing for a
  client that left, a settlement being written). Its owner adds each future and discards it when
  done; the drain waits until every set is empty.
- `on_shutdown(name, finish)`: work that ends at once when the drain starts (realtime sessions:
  billed, recorded and closed with 1001). The drain waits for it like a task.
- `on_abandon(name, write_off)`: at the end of the grace, what is still unsettled is written off
  (recorded as `worker_lost`); returns how many.
- `on_close(name, close)`: what the event loop holds (sessions, connection pools), closed last,
  once everything drained.

A name registers once: registering it again (a module imported twice) replaces the hook and
keeps the set, so nothing is waited for twice or lost.
"""

import asyncio
from collections.abc import Awaitable, Callable

_tasks: dict[str, set[asyncio.Future]] = {}
_on_shutdown: dict[str, Callable[[], Awaitable[None]]] = {}
_on_abandon: dict[str, Callable[[], Awaitable[int]]] = {}
_on_close: dict[str, Callable[[], Awaitable[None]]] = {}


def tasks(name: str) -> set[asyncio.Future]:
    """The set of `name`'s futures in flight, registered for the drain to wait for."""
    return _tasks.setdefault(name, set())


def on_shutdown(name: str, finish: Callable[[], Awaitable[None]]) -> None:
    _on_shutdown[name] = finish


def on_abandon(name: str, write_off: Callable[[], Awaitable[int]]) -> None:
    _on_abandon[name] = write_off


def on_close(name: str, close: Callable[[], Awaitable[None]]) -> None:
    _on_close[name] = close


def names() -> dict[str, list[str]]:
    """What is registered, by kind (for logs and tests)."""
    return {
        "tasks": list(_tasks),
        "on_shutdown": list(_on_shutdown),
        "on_abandon": list(_on_abandon),
        "on_close": list(_on_close),
    }


def pending() -> list[asyncio.Future]:
    """Every registered future still in flight."""
    return [future for futures in _tasks.values() for future in futures]


async def shutdown() -> None:
    """Ends at once the work that does not wait for the grace (each kind concurrently)."""
    await asyncio.gather(*(finish() for finish in list(_on_shutdown.values())))


async def abandon() -> int:
    """Writes off what is still unsettled; how many calls were."""
    return sum([await write_off() for write_off in list(_on_abandon.values())])


async def close() -> None:
    """Closes the event loop's resources, in the order they registered."""
    for close_one in list(_on_close.values()):
        await close_one()
