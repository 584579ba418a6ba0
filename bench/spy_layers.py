#!/usr/bin/env python3
"""Shares of a server process's CPU by layer, from py-spy raw profiles (`py-spy record --native -f raw`):
a markdown table, one column per profile, with µs per call when the CPU per call is given.

  bench/spy_layers.py thin=/tmp/spy-thin.txt@0.50 thin_daphne=/tmp/spy-floor.txt@0.77 ...

A sample goes to the cyclic collector when a collection is under way, to system calls when its
innermost frame is one, else to the innermost frame below the event loop's entry whose file
belongs to a known layer (a standard-library frame counts for its caller; none: the event loop).
Waits that py-spy --native takes for work (a thread on a lock, the loop in epoll) are left out.
"""

import collections
import re
import sys

FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]+?)(?::\d+)?\)$")
IDLE = ("epoll_pwait", "PyThread_acquire_lock_timed", "pthread_cond_timedwait", "_queue_SimpleQueue_get_impl")
SYSCALLS = {"send", "write", "read", "recv", "sendto", "recvfrom", "getsockname", "getpid", "epoll_ctl", "writev"}
APP, DJANGO, DB = "app: gateway", "app: Django, asgiref, channels", "database: psycopg, redis"
LAYERS = (  # (the start of a frame's file, its layer): the first that matches
    ("gateway_project/server_patches.py", "server: patched writes"),
    ("fastapi/", "app: FastAPI/Starlette"),
    ("starlette/", "app: FastAPI/Starlette"),
    ("pydantic", "app: FastAPI/Starlette"),
    ("anyio/", "app: FastAPI/Starlette"),
    ("opentelemetry/", "app: FastAPI/Starlette"),
    ("thin_proxy.py", "app: thin_proxy"),
    ("aiohttp/", "client: aiohttp"),
    ("yarl/", "client: aiohttp"),
    ("multidict/", "client: aiohttp"),
    ("aiohappyeyeballs/", "client: aiohttp"),
    ("propcache/", "client: aiohttp"),
    ("uvicorn/", "server: uvicorn+httptools"),
    ("daphne/", "server: daphne ASGI bridge"),
    ("twisted/web/", "server: Twisted HTTP"),
    ("twisted/protocols/", "server: Twisted HTTP"),
    ("twisted/internet/defer.py", "server: Twisted Deferred"),
    ("twisted/internet/base.py", "server: Twisted timers"),
    ("twisted/", "server: Twisted reactor+transport"),
    ("zope/", "server: Twisted reactor+transport"),
    *((f"{package}/", APP) for package in ("gateway_project", "proxy", "quota", "lib", "allocations", "ops")),
    *((f"{package}/", DJANGO) for package in ("django", "asgiref", "channels")),
    ("psycopg", DB),
    ("redis/", DB),
)


def layer(file: str) -> str | None:
    return next((name for prefix, name in LAYERS if file.startswith(prefix)), None)


def classify(frames: list[str]) -> str | None:
    if any(frame.startswith(IDLE) for frame in frames[-4:]):
        return None
    entry = max((i for i, frame in enumerate(frames) if frame.startswith("run_forever (loop.c")), default=-1)
    below = frames[entry + 1 :]
    if any(frame.startswith("gc_collect_main") for frame in below):
        return "gc (cyclic collector)"
    leaf = FRAME.match(below[-1]) if below else None
    if leaf and leaf["fn"] in SYSCALLS and "libc" in leaf["file"]:
        return "system calls"
    for frame in reversed(below):
        match = FRAME.match(frame)
        if match and (name := layer(match["file"])):
            return name
    return "event loop (uvloop/asyncio)"


def shares(path: str) -> tuple[collections.Counter, int]:
    counts: collections.Counter = collections.Counter()
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip().rpartition(" ")
            name = classify(stack.split(";"))
            if name is not None:
                counts[name] += int(n)
    return counts, sum(counts.values())


def main() -> None:
    columns = []
    for arg in sys.argv[1:]:
        label, _, rest = arg.partition("=")
        path, _, cpu = rest.partition("@")
        columns.append((label, *shares(path), float(cpu) if cpu else None))
    names = sorted({k for _, c, _, _ in columns for k in c}, key=lambda k: -max(c[k] / t for _, c, t, _ in columns))
    print("| layer | " + " | ".join(f"{label} %" + (" (µs/call)" if cpu else "") for label, *_, cpu in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in names:
        cells = []
        for _, counts, total, cpu in columns:
            share = counts[name] / total
            cells.append(f"{100 * share:.1f}" + (f" ({1000 * cpu * share:.0f})" if cpu else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| samples (active) | " + " | ".join(str(t) for _, _, t, _ in columns) + " |")


if __name__ == "__main__":
    main()
