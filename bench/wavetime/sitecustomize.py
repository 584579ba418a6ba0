"""Where a call's accounting waits go, for `WAVETIME=1 PYTHONPATH=<tree>/bench/wavetime` (Python
imports `sitecustomize` at start-up; off unless asked). When `quota.ledger.loop` and
`proxy.handler` are imported it wraps, by monkeypatching and nothing in served code:

- `ProxyHandler.__call__`: the request's time in the handler (its start and end);
- `loop.admit` / `loop.settle`: when a call asked for its admission / settlement and when it got it;
- the statement builders (`admit_statement`, `admit_many_statement`, `settle_statement`) and
  psycopg's `AsyncRawCursor.execute`: each statement's kind, the reservations it carries, when it
  was sent and when it was answered (its commit).

`kill -USR1 <pid>` starts recording (and forgets what was recorded), `kill -USR2 <pid>` writes
/tmp/wavetime-<pid>.json; `bench/wavetime.py` reads it: per-call steps, statements per wave and
their sizes. Timestamps are `time.monotonic()`; recording costs a few µs per call."""

import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time

if os.environ.get("WAVETIME"):
    _on = False
    _calls: list = []  # ("admit"|"settle", start, end, reservation id)
    _statements: list = []  # (kind, sent, answered, [reservation ids], failed)
    _requests: list = []  # (start, end, path)
    _pending: dict = {}  # id(params) -> (kind, reservation ids)
    _clock = time.monotonic

    def _start(signum: int, frame: object) -> None:
        global _on
        _calls.clear()
        _statements.clear()
        _requests.clear()
        _on = True

    def _stop(signum: int, frame: object) -> None:
        global _on
        _on = False
        with open(f"/tmp/wavetime-{os.getpid()}.json", "w") as out:
            json.dump({"calls": _calls, "statements": _statements, "requests": _requests}, out)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)

    def _builder(kind, build, ids_of):
        def built(*args, **kwargs):
            sql, params = build(*args, **kwargs)
            if _on:
                _pending[id(params)] = (kind, ids_of(args, kwargs))
            return sql, params

        return built

    def _patch_loop(loop) -> None:
        loop.admit_statement = _builder("admit", loop.admit_statement, lambda a, k: [str(k["reservation"]["id"])])
        loop.admit_many_statement = _builder(
            "admit_many", loop.admit_many_statement, lambda a, k: [str(r["id"]) for r in k["reservations"]]
        )
        loop.settle_statement = _builder(
            "settle", loop.settle_statement, lambda a, k: [str(s.admission.reservation_id) for s in a[0]]
        )
        admit, settle = loop.admit, loop.settle

        async def admit_timed(**kwargs):
            start = _clock()
            admitted = await admit(**kwargs)
            if _on:
                _calls.append(("admit", start, _clock(), admitted and str(admitted.reservation_id)))
            return admitted

        async def settle_timed(**kwargs):
            start = _clock()
            try:
                return await settle(**kwargs)
            finally:
                if _on:
                    _calls.append(("settle", start, _clock(), str(kwargs["admission"].reservation_id)))

        loop.admit, loop.settle = admit_timed, settle_timed

        import psycopg

        execute = psycopg.AsyncRawCursor.execute

        async def execute_timed(self, query, params=None, **kwargs):
            found = _pending.pop(id(params), None) if params is not None else None
            if found is None or not _on:
                return await execute(self, query, params, **kwargs)
            sent = _clock()
            failed = True
            try:
                result = await execute(self, query, params, **kwargs)
                failed = False
                return result
            finally:
                _statements.append((found[0], sent, _clock(), found[1], failed))

        psycopg.AsyncRawCursor.execute = execute_timed

        run_statement = getattr(loop.LoopConnection, "run_statement", None)
        if run_statement is not None:  # the ledger's statements sent by libpq directly

            async def run_timed(self, sql, params, **kwargs):
                found = _pending.pop(id(params), None) if params is not None else None
                if found is None or not _on:
                    return await run_statement(self, sql, params, **kwargs)
                sent = _clock()
                failed = True
                try:
                    result = await run_statement(self, sql, params, **kwargs)
                    failed = False
                    return result
                finally:
                    _statements.append((found[0], sent, _clock(), found[1], failed))

            loop.LoopConnection.run_statement = run_timed

    def _patch_handler(handler) -> None:
        call = handler.ProxyHandler.__call__

        async def call_timed(self, scope, receive, send):
            start = _clock()
            try:
                return await call(self, scope, receive, send)
            finally:
                if _on and scope.get("type") == "http":
                    _requests.append((start, _clock(), scope.get("path")))

        handler.ProxyHandler.__call__ = call_timed

    _patches = {"quota.ledger.loop": _patch_loop, "proxy.handler": _patch_handler}

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in _patches:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_patch(module):
                exec_module(module)
                _patches[name](module)

            spec.loader.exec_module = exec_then_patch
            return spec

    sys.meta_path.insert(0, _Finder())
