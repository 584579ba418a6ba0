"""The cyclic collector's passes and CPU in a server process, for `GCSTAT=1 PYTHONPATH=bench/gcstat`
(Python imports `sitecustomize` at start-up): each generation's passes, their CPU (thread time)
and what they freed, written as JSON to /tmp/gcstat-<pid>.json on SIGUSR2. Take one before and
one after a load run and divide the difference by the calls (docs/PERFORMANCE.md, "the server's share")."""

import gc
import json
import os
import signal
import sys
import time

if os.environ.get("GCSTAT"):
    _stats = {"passes": [0, 0, 0], "cpu_s": [0.0, 0.0, 0.0], "collected": [0, 0, 0]}
    _started = [0.0]

    def _on_pass(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.thread_time()
            return
        generation = info["generation"]
        _stats["passes"][generation] += 1
        _stats["cpu_s"][generation] += time.thread_time() - _started[0]
        _stats["collected"][generation] += info["collected"]

    def _dump(*_: object) -> None:
        state = {**_stats, "objects": len(gc.get_objects()), "argv": sys.argv}
        with open(f"/tmp/gcstat-{os.getpid()}.json", "w") as fh:  # noqa: S108 - a bench's scratch file
            json.dump(state, fh)

    gc.callbacks.append(_on_pass)
    signal.signal(signal.SIGUSR2, _dump)
