"""One server process of `gateway_project.serve`: daphne on uvloop, on the listening socket the
supervisor hands down (`python -m gateway_project.worker --fd N [daphne's options] APP`; Twisted
adopts a duplicate of the descriptor and closes the original).

daphne runs Twisted's asyncio reactor on an event loop it creates when `daphne.server` is first
imported. Installing uvloop's policy before that import gives daphne (Twisted's reactor, the
consumers, the /v1 views and the aiohttp upstream client) uvloop's loop instead of the standard
one; everything else is daphne's own command line. Measured on the project's machine: 7-12 % less
CPU per proxied call (docs/PERFORMANCE.md).
"""

import asyncio
import contextlib
import ctypes
import os
import signal
import sys

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
    from daphne.cli import CommandLineInterface

    return CommandLineInterface.entrypoint()


if __name__ == "__main__":
    sys.exit(main())
