"""One server process of `gateway_project.serve`: daphne on uvloop, on the listening socket the
supervisor hands down (`python -m gateway_project.worker --fd N [daphne's options] APP`; Twisted
adopts a duplicate of the descriptor and closes the original).

daphne runs Twisted's asyncio reactor on an event loop it creates when `daphne.server` is first
imported. Installing uvloop's policy before that import gives daphne (Twisted's reactor, the
consumers, the /v1 views and the aiohttp upstream client) uvloop's loop instead of the standard
one; measured on the project's machine: 7-12 % less CPU per proxied call (docs/PERFORMANCE.md).
Everything else is daphne's own command line, apart from two hooks: the shutdown marks the process
as draining for /readyz, and with GATEWAY_LOG_FORMAT=json the access log is JSON records.

The cyclic collector is set for a server whose calls make almost no reference cycles (their
objects die by reference counting): its young generation is collected after YOUNG_THRESHOLD net
new container objects instead of CPython's 700, and what start-up made (modules, classes, the
application) is frozen out of its passes once the reactor runs (`tune_collector`).
"""

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
from typing import Any, cast

import uvloop

PARENT_ENV = "GATEWAY_SERVE_PARENT"  # the supervisor's pid
PR_SET_PDEATHSIG = 1
# Net new container objects between two young-generation passes. Under load every pass walks the
# objects of the calls in flight and finds next to nothing to free (a call's objects die by
# reference counting): at 700 (CPython's) the passes ran every ~20 calls at 16 in flight. Garbage
# that is cyclic waits up to this many allocations for its pass: a few thousand small objects.
YOUNG_THRESHOLD = 10_000


def follow_parent() -> None:
    """SIGTERM (a drain) when the supervisor dies, even by SIGKILL: no worker outlives it."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        sys.exit("gateway worker: the supervisor is gone")


def tune_collector() -> None:
    """The young generation's threshold raised, the older ones' left; `gc.freeze()` once the
    reactor runs (the application imported), so that the old generation's full passes no longer
    walk start-up's ~170 k objects (one took ~80 ms of the loop every few thousand calls)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    from twisted.internet import reactor

    cast(Any, reactor).callWhenRunning(gc.freeze)


def main() -> int | None:
    follow_parent()
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne.server is already imported: its event loop exists, uvloop came too late")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from daphne import cli
    from twisted.internet import reactor

    from ops import health

    if os.environ.get("GATEWAY_LOG_FORMAT") == "json":
        from ops.logs import JsonAccessLog

        cli.AccessLogGenerator = JsonAccessLog  # type: ignore[misc]  # the access log as JSON records too
    # /readyz answers 503 from the start of the shutdown (the interface's stub has no `self`: Any)
    cast(Any, reactor).addSystemEventTrigger("before", "shutdown", health.draining_started)
    tune_collector()
    return cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    sys.exit(main())
