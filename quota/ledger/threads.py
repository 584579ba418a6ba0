"""The accounting threads: the ledger's synchronous steps (and a relay's preflight that ends in
one) run here when they cannot run on the event loop.

A small dedicated pool whose threads keep their database connection for the process's life:
connecting per step would cost more CPU than the relay. GATEWAY_ACCOUNTING_THREADS bounds both
these threads and the event loop's connections (ledger.loop) per process.
"""

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import Error as DatabaseError
from django.db import connection

_pool = ThreadPoolExecutor(max_workers=settings.GATEWAY_ACCOUNTING_THREADS, thread_name_prefix="gw-accounting")
_thread = threading.local()
_T = TypeVar("_T")


def _guarded(fn: Callable[..., _T]) -> Callable[..., _T]:
    def run(**kwargs: Any) -> _T:
        # Each pool thread runs its steps in one context of its own: Django's cache handler keeps
        # its clients in context-local storage, so the request's context would open a new Redis
        # connection per call (the database handler is thread-local and keeps its connection anyway).
        context = getattr(_thread, "context", None)
        if context is None:
            context = _thread.context = contextvars.Context()
        try:
            return context.run(fn, **kwargs)
        except DatabaseError:
            # A broken connection must not poison this thread: the next step reconnects.
            connection.close()
            raise

    return run


async def run(fn: Callable[..., _T], **kwargs: Any) -> _T:
    """fn(**kwargs) on an accounting thread.

    Straight to the pool: asgiref's sync_to_async would also copy and restore the request's
    context around the call, which these steps never read (they run in the thread's own context).
    A cancelled caller stops waiting; a step already running finishes in its thread."""
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(_guarded(fn), **kwargs))


def pool_close_connections() -> None:
    """Closes every pool thread's connection (tests, before the test database is dropped)."""
    workers = _pool._max_workers
    barrier = threading.Barrier(workers)

    def close() -> None:
        connection.close()
        barrier.wait(timeout=10)

    for future in [_pool.submit(close) for _ in range(workers)]:
        future.result()
