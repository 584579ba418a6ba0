#!/usr/bin/env python3
"""The rate limiter's CPU per call on the event loop: admit (one script round trip, waited for)
plus settle (one write, no reply), as a limited call pays them, against Redis, for one call at a
time and for 16 at once. The gateway's other work is not included: this isolates what a limited
allocation adds to a warm call. Usage: REDIS_URL=redis://127.0.0.1:6379/3 bench/ratelimit_cost.py"""

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

import uvloop  # noqa: E402

from quota import ratelimit  # noqa: E402

CALLS = 6000
NAME = uuid.uuid4().hex[:8]
LIMITS = ((f"a:bench-{NAME}", 10**9, 10**15, 10**6), (f"m:bench-{NAME}", 10**9, 10**15, 10**6))


async def one() -> None:
    decision, ticket = await ratelimit.admit_async(LIMITS, tokens=100)
    if ticket is None:
        raise SystemExit(f"not admitted: {decision} (is Redis up?)")
    await ratelimit.settle_async(ticket, tokens=50)


async def measure(concurrency: int) -> tuple[float, float]:
    for _ in range(200):
        await one()

    async def worker() -> None:
        for _ in range(CALLS // concurrency):
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / CALLS * 1e6, (time.perf_counter() - wall) / CALLS * 1e6


def main() -> None:
    uvloop.install()
    for concurrency in (1, 16):
        cpu_us, wall_us = asyncio.run(measure(concurrency))
        print(f"c={concurrency}: {cpu_us:.0f} us CPU per limited call (admit + settle), {wall_us:.0f} us wall")


if __name__ == "__main__":
    main()
