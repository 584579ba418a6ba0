"""What the realtime relay adds: turn round trip (response.create → response.done) and binary echo
throughput, direct to a fake upstream vs through daphne + the gateway, on the same machine.

    DEBUG=true DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_rt_bench REDIS_URL=redis://127.0.0.1:6379/9 \
        .venv/bin/python bench/realtime_relay.py --turns 200 --frames 2000

The database named in DATABASE_URL is created (migrated) if needed and used as a scratch world.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")


def setup_world(fake_base_url: str, *, cost_cap=None):
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from tests.realtime.conftest import realtime_world

    price = {"input_per_1m": 1, "output_per_1m": 2}
    return realtime_world(None, base_url=fake_base_url, price=price, cost_cap=cost_cap)


async def turns(url: str, headers: dict, n: int) -> list[float]:
    import websockets

    out = []
    async with websockets.connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        await ws.recv()
        for _ in range(n):
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
            out.append((time.perf_counter() - start) * 1000)
    return out


async def echo(url: str, headers: dict, n: int, size: int) -> float:
    import websockets

    payload = bytes(size)
    async with websockets.connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        await ws.recv()
        start = time.perf_counter()

        async def sender():
            for _ in range(n):
                await ws.send(payload)

        task = asyncio.create_task(sender())
        for _ in range(n):
            await ws.recv()
        await task
        return n / (time.perf_counter() - start)


def report(name: str, samples: list[float], fps: float) -> dict:
    q = statistics.quantiles(samples, n=100)
    return {"target": name, "turn_p50_ms": round(q[49], 2), "turn_p99_ms": round(q[98], 2), "echo_fps": round(fps)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        sys.exit("DATABASE_URL must name a scratch PostgreSQL database (it is created if missing)")
    from run import ensure_database  # bench/run.py, next to this script

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from tests.realtime.conftest import start_daphne, stop_daphne
    from tests.realtime.fake_upstream import FakeRealtimeUpstream

    fake = FakeRealtimeUpstream().start()
    world = setup_world(fake.base_url)
    capped = setup_world(fake.base_url, cost_cap=1000)  # a cap: every response.create is checked first
    server = start_daphne(os.environ["DATABASE_URL"].rsplit("/", 1)[-1])
    try:
        direct = (f"ws://127.0.0.1:{fake.port}/v1/realtime?model=gpt-rt", {"Authorization": "Bearer sk-x"})
        gateway = (f"{server.ws_url}?model={world.slug}", {"Authorization": f"Bearer {world.key}"})
        gated = (f"{server.ws_url}?model={capped.slug}", {"Authorization": f"Bearer {capped.key}"})
        targets = [("direct", direct), ("gateway", gateway), ("gateway-capped", gated)] * 2
        for name, (url, headers) in targets:
            samples = asyncio.run(turns(url, headers, args.turns))
            fps = asyncio.run(echo(url, headers, args.frames, args.size))
            print(json.dumps(report(name, samples, fps)))
    finally:
        stop_daphne(server)
        fake.stop()


if __name__ == "__main__":
    main()
