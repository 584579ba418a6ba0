#!/usr/bin/env python3
"""Unauthenticated flood: 10,000 requests with an unknown key from one address against one daphne
gateway, alongside authenticated calls. Reports the call records the flood wrote, how it was
answered (401 / 429), and the authenticated throughput and latency with and without the flood,
alternating rounds so that machine drift hits both sides alike. JSON lines on stdout.

  bench/unauth_flood.py [--duration 5] [--rounds 2] [--flood 10000] [--tree /work/main]

--tree runs the gateway from another checkout (e.g. main before the door check) for a before/after.
Same needs as bench/run.py (wrk, BENCH_PY).
"""

import argparse
import asyncio
import collections
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from run import BENCH_PY, HARNESS, ROOT, cpu_s, ensure_database, free_port, stop, wait_port

BAD_KEY = "sk-gw-" + "F" * 43


def load(url: str, key: str, model: str, *, concurrency: int, duration: float, max_requests: int = 1_000_000):
    cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", url, "--key", key, "--model", model, "--engine", "wrk",
           "-c", str(concurrency), "-d", str(duration), "--max-requests", str(max_requests)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def result(proc) -> dict:
    out, _ = proc.communicate(timeout=300)
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def paced_flood(url: str, count: int, seconds: float) -> collections.Counter:
    """`count` unauthenticated POSTs spread evenly over `seconds` (an open-loop flood: its rate does
    not depend on how fast the gateway answers), one keep-alive connection per in-flight request."""
    host, port = url.split("//")[1].split(":")
    body = b'{"model":"x","messages":[]}'
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {BAD_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    statuses: collections.Counter = collections.Counter()

    async def one(pool: list):
        reader, writer = pool.pop() if pool else await asyncio.open_connection(host, int(port))
        writer.write(head)
        status = (await reader.readline()).split(b" ")[1].decode()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        statuses[status] += 1
        pool.append((reader, writer))

    async def run():
        pool: list = []
        start, tasks = time.monotonic(), []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i * seconds / count - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(pool)))
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, writer in pool:
            writer.close()

    asyncio.run(run())
    return statuses


def rows(dsn: str) -> int:
    """Call records of unauthenticated rejects (the flood's, since the bench key is valid)."""
    with psycopg.connect(dsn) as conn:
        query = "SELECT count(*) FROM quota_callrecord WHERE outcome = 'rejected_unauthenticated'"
        return conn.execute(query).fetchone()[0]


def measured(proc, pid: int, start_cpu: float) -> dict:
    out = result(proc)
    out["gateway_cpu_ms_per_request"] = round((cpu_s(pid) - start_cpu) * 1000 / max(1, out["requests"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flood", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tree", default=str(ROOT))
    ap.add_argument("--paced", type=float, default=0, help="also: the flood spread over this many seconds")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    tree = Path(args.tree)
    gw_py = str(ROOT / ".venv" / "bin" / "python")
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gw_bench"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"),
        "DEBUG": "False",
        "SECRET_KEY": "bench-" + secrets.token_hex(16),
        "GATEWAY_ENCRYPTION_KEY": "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E=",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    ensure_database(env["DATABASE_URL"])
    procs = []
    try:
        up_port, gw_port = free_port(), free_port()
        procs.append(subprocess.Popen([BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(up_port)],
                                      stdout=subprocess.DEVNULL))  # fmt: skip
        subprocess.run([gw_py, "manage.py", "migrate", "--noinput", "-v0"], cwd=tree, env=env, check=True)
        upstream = f"http://127.0.0.1:{up_port}"
        seeded = subprocess.run([gw_py, str(ROOT / "bench" / "seed.py"), upstream, upstream], cwd=tree, env=env,
                                check=True, capture_output=True, text=True)  # fmt: skip
        key = seeded.stdout.strip().splitlines()[-1]
        gateway = subprocess.Popen(
            [gw_py, "-m", "gateway_project.serve", "-v", "0", "-b", "127.0.0.1", "-p", str(gw_port),
             "gateway_project.asgi:application"],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(gateway)
        wait_port(up_port)
        wait_port(gw_port)
        url, model = f"http://127.0.0.1:{gw_port}", "bench0/gpt-4o-mini"
        result(load(url, key, model, concurrency=args.concurrency, duration=2))  # warm-up
        dsn = env["DATABASE_URL"]
        for round_ in range(args.rounds):
            cpu = cpu_s(gateway.pid)
            alone = load(url, key, model, concurrency=args.concurrency, duration=args.duration)
            alone = measured(alone, gateway.pid, cpu)
            before, cpu = rows(dsn), cpu_s(gateway.pid)
            flood_alone = load(url, BAD_KEY, model, concurrency=2, duration=120, max_requests=args.flood)
            flood_alone = measured(flood_alone, gateway.pid, cpu)
            written = rows(dsn) - before
            authed = load(url, key, model, concurrency=args.concurrency, duration=args.duration)
            flood = load(url, BAD_KEY, model, concurrency=2, duration=args.duration, max_requests=args.flood)
            authed, flood = result(authed), result(flood)
            row = {"round": round_, "tree": str(tree), "alone": alone, "flood_alone": flood_alone}
            row.update(flood_rows_written=written, with_flood=authed, flood=flood)
            print(json.dumps(row), flush=True)
        if args.paced:
            for round_ in range(args.rounds):
                alone = result(load(url, key, model, concurrency=args.concurrency, duration=args.paced))
                authed = load(url, key, model, concurrency=args.concurrency, duration=args.paced)
                statuses: dict = {}
                flood = threading.Thread(
                    target=lambda out=statuses: out.update(paced_flood(url, args.flood, args.paced))
                )
                flood.start()
                authed = result(authed)
                flood.join()
                print(json.dumps({"round": round_, "paced_s": args.paced, "alone": alone, "with_paced_flood": authed,
                                  "paced_flood_statuses": statuses}), flush=True)  # fmt: skip
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
