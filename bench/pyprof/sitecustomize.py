"""Python function calls of a server process, for `PYPROF=1 PYTHONPATH=bench/pyprof` (Python imports
`sitecustomize` at start-up): `kill -USR1 <pid>` starts cProfile in the process's main thread,
`kill -USR2 <pid>` stops it and writes /tmp/pyprof-<pid>.out (read it with `pstats`; divide the
counts by the calls made meanwhile). cProfile slows every Python call several times over: read the
counts and what calls what, not its times (docs/PERFORMANCE.md, "Django's objects off the /v1
JSON call")."""

import cProfile
import os
import signal

if os.environ.get("PYPROF"):
    _profile = cProfile.Profile()

    def _start(signum: int, frame: object) -> None:
        _profile.enable()

    def _stop(signum: int, frame: object) -> None:
        _profile.disable()
        _profile.dump_stats(f"/tmp/pyprof-{os.getpid()}.out")
        _profile.clear()

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
