#!/usr/bin/env python3
"""An A/B of gateway CPU per call that holds up on a noisy machine: short wrk rounds against each
target in turn (the order flipped every round), the serving worker's CPU from /proc, the median
per target. A target is a tree (this checkout, or another one given with --tree, e.g. a
`git worktree` of an older commit) and a bench model (`bench0` unlimited, `bench0lim` with rpm,
tpm and max_parallel on its allocation and model, see seed.py).

  bench/alternate.py [--tree OTHER] [--rounds 10] [--levels 1,16] [--duration 3]
                     [--models bench0/gpt-4o-mini,bench0lim/gpt-4o-mini,bench0/gpt-4o-mini@group]
                     [--body bench/bodies/codex_functions.json] [--db gw_alt] [--redis 3]

A model written `<model>@group` is called with the key of `benchgrp`, whose member is in a group
with a budget (seed.py): a group budget's cost per call, against `<model>` called by `bench`.

Beside the gateway worker's CPU, the CPU of the PostgreSQL backends serving each target's database
(`pg_cpu_ms_per_call`, from /proc: the server must run on this machine).

The request is the harness's chat completion, or with --body a JSON body from a file (its model
"MODEL"; posted to /v1/responses by bench/body.lua, e.g. a Codex CLI turn). --db and --redis
name the databases used (<db>_0, <db>_1, … and Redis <redis>, <redis>+1, …, or <redis> for every
tree with --same-redis) so that two runs on one machine do not share them.

Each tree gets a fresh database of its own (<db>_0, <db>_1, dropped and made anew: their
migrations may differ) and a Redis database; one fake upstream (0 ms) serves both. Needs wrk
and BENCH_PY as in bench/README.md. Rows are printed and written to
bench/results/raw/alternate-<time>.jsonl.
"""

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import BENCH_PY, HARNESS, RESULTS, ROOT, cpu_s, ensure_database, free_port, stop, wait_http, wait_port, wrk


def worker_of(supervisor: int) -> int:
    """serve's one worker process (the supervisor only hands it the socket)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise SystemExit("serve started no worker")


def fresh_database(url: str) -> None:
    """An empty database per tree and run: one that kept earlier runs' call records makes its
    tree look slower than the other."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    ensure_database(url)


def start_gateway(
    tree: Path, index: int, upstream: str, db: str, redis: int, redis_step: int = 1
) -> tuple[int, dict, subprocess.Popen]:
    python = str(tree / ".venv" / "bin" / "python")
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}_{index}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis + index * redis_step}",
        "DEBUG": "False",
        "SECRET_KEY": "bench-" + secrets.token_hex(16),
        "GATEWAY_ENCRYPTION_KEY": "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E=",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    fresh_database(env["DATABASE_URL"])
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], cwd=tree, env=env, check=True)
    seeded = subprocess.run(
        [python, "bench/seed.py", upstream, upstream], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    lines = seeded.stdout.strip().splitlines()
    key = lines[-1]
    group_key = next((line.split(": ", 1)[1] for line in lines if line.startswith("group-key: ")), "")
    port = free_port()
    command = [python, "-m", "gateway_project.serve", "--workers", "1", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        [*command, "gateway_project.asgi:application"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port)
    return port, {"": key, "group": group_key}, proc


BODY_SCRIPT = ROOT / "bench" / "body.lua"


def pg_backends_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to `database` (the server runs on this
    machine; a backend that ends during a round takes its CPU with it, the gateway keeps its own)."""
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        pids = [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [database])]
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_s(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def sleeps(pid: int) -> int:
    """Voluntary context switches of a process's threads: how often it went to sleep (its event
    loop found nothing to run, or a thread waited), each a wake-up later."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def one_round(
    port: int, key: str, model: str, concurrency: int, duration: float, pid: int, body: str = "", database: str = ""
) -> tuple[float, float, float, float]:
    """(gateway CPU ms per call, calls per second, PostgreSQL CPU ms per call, the gateway's sleeps
    per call) of one wrk run."""
    env = {**os.environ, "BENCH_KEY": key, "BENCH_MODEL": model, "BENCH_BODY_FILE": body}
    script = str(BODY_SCRIPT) if body else "chat.lua"
    pg_before = pg_backends_cpu(database) if database else {}
    before, slept = cpu_s(pid), sleeps(pid)
    out = wrk(port, env, concurrency=concurrency, seconds=duration, script=script)
    spent, slept = cpu_s(pid) - before, sleeps(pid) - slept
    pg_after = pg_backends_cpu(database) if database else {}
    pg_spent = sum(used - pg_before.get(backend, 0.0) for backend, used in pg_after.items())
    summary = json.loads(out.split("BENCHJSON", 1)[1].strip().splitlines()[0])
    calls = summary["requests"] - summary["err_status"]
    return spent * 1000 / max(calls, 1), calls / duration, pg_spent * 1000 / max(calls, 1), slept / max(calls, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="another checkout to compare with this one")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--models", default="bench0/gpt-4o-mini,bench0lim/gpt-4o-mini")
    ap.add_argument("--body", default="", help="a JSON body file posted to /v1/responses instead of a chat call")
    ap.add_argument("--db", default="gw_alt")
    ap.add_argument("--redis", type=int, default=3)
    ap.add_argument(
        "--same-redis", action="store_true", help="every tree on Redis db --redis (their seeded keys and ids differ)"
    )
    args = ap.parse_args()
    body = str(Path(args.body).resolve()) if args.body else ""
    trees = [ROOT, *(Path(t).resolve() for t in args.tree)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"alternate-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    procs: list[subprocess.Popen] = []
    try:
        upstream_port = free_port()
        procs.append(
            subprocess.Popen(
                [BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(upstream_port), "--latency-ms", "0"],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(upstream_port)
        upstream = f"http://127.0.0.1:{upstream_port}"
        targets = []
        for index, tree in enumerate(trees):
            port, keys, proc = start_gateway(tree, index, upstream, args.db, args.redis, 0 if args.same_redis else 1)
            procs.append(proc)
            pid = worker_of(proc.pid)
            for target in args.models.split(","):
                model, _, who = target.partition("@")
                if not keys.get(who):
                    raise SystemExit(f"{tree}: its seed.py makes no key for {target}")
                targets.append((f"{tree.name}:{target}", port, keys[who], model, pid, f"{args.db}_{index}"))
        for level in (int(n) for n in args.levels.split(",")):
            for _, port, key, model, pid, _ in targets:
                one_round(port, key, model, level, 1, pid, body)  # warm-up
            cpu: dict[str, list[float]] = {t[0]: [] for t in targets}
            rate: dict[str, list[float]] = {t[0]: [] for t in targets}
            pg: dict[str, list[float]] = {t[0]: [] for t in targets}
            slept: dict[str, list[float]] = {t[0]: [] for t in targets}
            for n in range(args.rounds):
                for name, port, key, model, pid, database in targets if n % 2 == 0 else targets[::-1]:
                    ms, per_s, pg_ms, sleeps_per_call = one_round(
                        port, key, model, level, args.duration, pid, body, database
                    )
                    slept[name].append(sleeps_per_call)
                    cpu[name].append(ms)
                    rate[name].append(per_s)
                    pg[name].append(pg_ms)
            load = os.getloadavg()[0]
            for name in cpu:
                row = {
                    "target": name,
                    "concurrency": level,
                    "rounds": args.rounds,
                    "cpu_ms_per_call_median": round(statistics.median(cpu[name]), 3),
                    "calls_per_s_median": round(statistics.median(rate[name])),
                    "cpu_ms_per_call": [round(v, 3) for v in cpu[name]],
                    "pg_cpu_ms_per_call_median": round(statistics.median(pg[name]), 3),
                    "pg_cpu_ms_per_call": [round(v, 3) for v in pg[name]],
                    "sleeps_per_call_median": round(statistics.median(slept[name]), 3),
                    "loadavg1": load,
                }
                print(json.dumps(row), flush=True)
                with out.open("a") as sink:
                    sink.write(json.dumps(row) + "\n")
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
