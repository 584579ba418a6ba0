"""One server process of `gateway_project.serve`: daphne on uvloop, on the listening socket the
supervisor hands down (`python -m gateway_project.worker --fd N [daphne's options] APP`; Twisted
adopts a duplicate of the descriptor and closes the original).

daphne runs Twisted's asyncio reactor on an event loop it creates when `daphne.server` is first
imported. Installing uvloop's policy before that import gives daphne (Twisted's reactor, the
consumers, the /v1 views and the aiohttp upstream client) uvloop's loop instead of the standard
one; measured on the project's machine: 7-12 % less CPU per proxied call (docs/PERFORMANCE.md).
Everything else is daphne's own command line, apart from two hooks: the shutdown marks the process
as draining for /readyz, and with GATEWAY_LOG_FORMAT=json the access log is JSON records.
"""

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from typing import Any, cast

import uvloop

PARENT_ENV = "GATEWAY_SERVE_PARENT"  # the supervisor's pid
PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
    """SIGTERM (a drain) when the supervisor dies, even by SIGKILL: no worker outlives it."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        sys.exit("gateway worker: the supervisor is gone")


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
    return cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    sys.exit(main())
