#!/usr/bin/env python3
"""Retention under load: `prune_call_records` dropping a month of millions of call records while
the gateway records calls into the current month, against the same run without the prune.

  bench/prune.py prepare [--rows 8000000] [--template gw_prune_tpl]
  bench/prune.py run [--template gw_prune_tpl] [--db gw_prune_run] [--rounds 3] [--duration 16]
                     [--at 6] [--concurrency 16] [--window 0.25] [--archive] [--prune-tree OTHER]
                     [--report-s SECONDS] [--legs control,prune] [--warm] [--tablespace NAME]
                     [--unchecked]

`prepare` makes the TEMPLATE database once (minutes: 8 M rows took about 8 min on an idle machine;
keep it): migrated, bench/growth.py's world (50 members, 200 allocations, 20 priced models) and
bench/seed.py's, and ROWS call records with generate_series (growth.py's rows) spread over ONE
month, the third before the current one, with that month's daily rollups (so the prune accepts
it), then VACUUM ANALYZE and CHECKPOINT. It does nothing when the template already holds the month.

`run` alternates, each round on a fresh copy of the template (`CREATE DATABASE <db> TEMPLATE
<template> STRATEGY FILE_COPY`, the gateway stopped meanwhile): the fake upstream (0 ms), the
gateway (`gateway_project.serve --workers 1`) and a closed-loop client (CONCURRENCY calls in
flight, each call's end time and latency kept) for DURATION seconds; in the `prune` leg
`manage.py prune_call_records --before <the month after the loaded one>` (the real command, in its
own process, `--archive` to a temporary directory with --archive) starts AT seconds in, in the
`control` leg the same process starts, connects and exits without running it. The order of the
legs flips every round. The calls write call records into the current month's partition, as in
production. Each copy is migrated to this checkout
and, unless --unchecked, its closed months are checked as beat does a day after a month closes
(quota.retention.check_month, stored as quota.MonthCheck), so that the prune trusts the stored
check instead of counting the month; --unchecked measures the prune of a month never checked.

Reported per leg: calls/s and p99 latency in WINDOW-second windows before, during and after the
prune (the control leg's windows at the same offsets), the prune's wall time and its steps as the
command prints them (check, archive, detach, drop + audit), and the month's bytes on disk before
the prune. One JSON line per leg to bench/results/raw/prune-<time>.jsonl, and a table printed.
--prune-tree runs another checkout's command (e.g. a `git worktree` of the commit before a change
to quota.retention), with this checkout's gateway. --report-s N runs a report that holds the call
records (ACCESS SHARE) for N seconds from 0.2 s before the prune, in both legs: what a detach that
waits for its lock does to the calls queued behind it. --warm leaves the copied month in the page
cache (by default its files are evicted: a month three months old is cold). --tablespace NAME
copies each round's database into that tablespace (e.g. one on a volume mounted without
`discard`, bench/README.md), so the drop's unlink runs there.

Needs BENCH_PY and the harness as bench/README.md says (the fake upstream); the client itself is
plain asyncio (uvloop when BENCH_PY has it).
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
PG = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432")
GW_PY = str(ROOT / ".venv" / "bin" / "python")


# --- the client (runs under BENCH_PY: standard library, uvloop if present) ----------------------


async def _client(port: int, key: str, model: str, concurrency: int, start: float, duration: float) -> list[tuple]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "word1 word2 word3 word4"}]})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    done: list[tuple] = []
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    stop_at = start + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            began = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            ended = time.monotonic()
            done.append((ended, (ended - began) * 1000, status))
            if re.search(rb"(?i)connection:\s*close", head):
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def client_main(args: argparse.Namespace) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    start = args.start or time.monotonic()
    done = asyncio.run(_client(args.port, args.key, args.model, args.concurrency, start, args.duration))
    Path(args.out).write_text(json.dumps(done))


# --- the database: prepare the template, copy it per round --------------------------------------


def _admin(sql: str, *params) -> list:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


def _exists(name: str) -> bool:
    return bool(_admin("SELECT 1 FROM pg_database WHERE datname = %s", name))


def loaded_month() -> tuple[str, str]:
    """(the loaded month, the month after it) as YYYY-MM: the third month before the current one."""
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date().replace(day=1)
    index = today.year * 12 + today.month - 1 - 3
    month = dt.date(index // 12, index % 12 + 1, 1)
    following = dt.date((index + 1) // 12, (index + 1) % 12 + 1, 1)
    return f"{month:%Y-%m}", f"{following:%Y-%m}"


def template_month(template: str) -> tuple[str, str]:
    """(the loaded month, the month after it) as the template holds them: its largest month
    partition (the template keeps working after the calendar has moved on)."""
    import psycopg

    with psycopg.connect(f"{PG}/{template}", autocommit=True) as conn:
        row = conn.execute(
            "SELECT relname FROM pg_class WHERE relname ~ '^quota_callrecord_p[0-9]{4}_[0-9]{2}$'"
            " ORDER BY reltuples DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise SystemExit(f"{template} holds no month: run `bench/prune.py prepare` again")
    year, number = int(row[0][-7:-3]), int(row[0][-2:])
    following = (year * 12 + number) % 12 + 1, year + (number // 12)
    return f"{year:04d}-{number:02d}", f"{following[1]:04d}-{following[0]:02d}"


def load_main(args: argparse.Namespace) -> None:
    """In the template (DATABASE_URL): migrate, seed, load ROWS into the month, its rollups."""
    import datetime as dt

    import growth  # django.setup() on the DATABASE_URL given
    from django.core.management import call_command
    from django.db import connection

    from quota import partitions
    from quota.rollups import rollups_rebuild_range

    call_command("migrate", verbosity=0)
    allocations = growth.seed()
    month = partitions.parse_month(args.month)
    name = partitions.partition_name(month)
    if name not in {p.name for p in partitions.partitions()}:
        partitions.create_partition(month)
    start, end = partitions.month_bounds(month)
    began = time.perf_counter()
    # In time order, as calls arrive: slice k of the month gets its share of the rows (random
    # times within the slice), so every index is appended to, not written all over.
    slices = 32
    step = (end - start) / slices
    ids, keys, groups = growth.record_parts(allocations)
    for k in range(slices):
        share = args.rows * (k + 1) // slices - args.rows * k // slices
        first = start + step * k
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT count(*) FROM "{name}" WHERE started_at >= %s AND started_at < %s', [first, first + step]
            )  # noqa: S608
            share -= cursor.fetchone()[0]
            if share > 0:
                params = {"rows": share, "start": first, "span": step, "ids": ids, "keys": keys, "groups": groups}
                cursor.execute(growth.INSERT, {**params, "n": len(ids)})
        if k % 4 == 3:
            print(
                f"  loaded {args.rows * (k + 1) // slices:,} / {args.rows:,} ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    rollups_rebuild_range(first_day=month, last_day=(end - dt.timedelta(days=1)).date())
    print(f"  rollups of {args.month} ({time.perf_counter() - began:.0f} s)", flush=True)
    growth.settle_db()
    print(f"  vacuum analyze + checkpoint ({time.perf_counter() - began:.0f} s)", flush=True)


def prepare(args: argparse.Namespace) -> None:
    month, _ = loaded_month()
    if not _exists(args.template):
        _admin(f'CREATE DATABASE "{args.template}"')
    env = {**os.environ, "DATABASE_URL": f"{PG}/{args.template}", "DEBUG": "true"}
    began = time.perf_counter()
    subprocess.run(
        [GW_PY, str(HERE / "prune.py"), "_load", "--rows", str(args.rows), "--month", month],
        env=env,
        check=True,
    )
    print(f"template {args.template}: {args.rows:,} rows in {month} ({time.perf_counter() - began:.0f} s)")


def copy_template(template: str, db: str, tablespace: str = "") -> float:
    """A fresh copy of the template; in TABLESPACE when given (every file of the copy lives there:
    the prune's unlink runs on that tablespace's volume)."""
    _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    began = time.perf_counter()
    where = f' TABLESPACE "{tablespace}"' if tablespace else ""
    _admin(f'CREATE DATABASE "{db}" TEMPLATE "{template}" STRATEGY FILE_COPY{where}')
    return time.perf_counter() - began


def evict_month(db: str, month: str) -> int:
    """Writes the copy out and drops the month's files from the OS page cache (the server runs
    on this machine, as root): a month three months old is cold, not just written by a copy.
    Returns the bytes evicted."""
    import glob

    import psycopg

    os.sync()
    name = "quota_callrecord_p" + month.replace("-", "_")
    with psycopg.connect(f"{PG}/{db}", autocommit=True) as conn:
        data = conn.execute("SHOW data_directory").fetchone()[0]
        paths = [
            row[0]
            for row in conn.execute(
                "WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = to_regclass(%s))"
                " SELECT pg_relation_filepath(c.oid) FROM pg_class c, t WHERE c.oid IN (t.oid, t.reltoastrelid)"
                " OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (t.oid, t.reltoastrelid))",
                [name],
            )
            if row[0]
        ]
    evicted = 0
    for path in paths:
        for file in glob.glob(os.path.join(data, path)) + glob.glob(os.path.join(data, path) + "[._]*"):
            fd = os.open(file, os.O_RDONLY)
            try:
                evicted += os.fstat(fd).st_size
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return evicted


def month_bytes(db: str, month: str) -> int:
    import psycopg

    name = "quota_callrecord_p" + month.replace("-", "_")
    with psycopg.connect(f"{PG}/{db}", autocommit=True) as conn:
        row = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", [name]).fetchone()
    return int(row[0] or 0)


# --- the prune, in its own process --------------------------------------------------------------


def check_main(args: argparse.Namespace) -> None:
    """Beat's month check (quota.tasks.call_record_months_check) on the run database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.utils import timezone

    from quota import retention

    for partition in retention.months_to_check(timezone.now()):
        result = retention.check_month(partition)
        print(f"month check {result.month:%Y-%m}: {result.records:,} records, ok={result.ok} ({result.ms} ms)")


def prune_main(args: argparse.Namespace) -> None:
    """Waits until CLOCK_MONOTONIC reaches --at, runs the command, prints each output line with
    the monotonic time it was written (the client's clock: both are CLOCK_MONOTONIC)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    sys.path.insert(0, args.root or str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    class Stamped:
        def write(self, text: str) -> None:
            for line in text.splitlines():
                if line.strip():
                    print(json.dumps({"t": time.monotonic(), "line": line}), flush=True)

        def flush(self) -> None:
            pass

    from django.db import connection

    import quota

    print(json.dumps({"tree": str(Path(quota.__file__).parents[1])}), flush=True)
    connection.ensure_connection()
    time.sleep(max(0.0, args.at - time.monotonic()))
    began = time.monotonic()
    extra = ["--archive", args.archive] if args.archive else []
    if not args.idle:
        call_command("prune_call_records", "--before", args.before, *extra, stdout=Stamped())
    print(json.dumps({"began": began, "ended": time.monotonic()}), flush=True)


# --- one leg, the rounds ------------------------------------------------------------------------


def windows(done: list, start: float, width: float, end: float) -> list[dict]:
    buckets: list[list[float]] = [[] for _ in range(int((end - start) / width))]
    for ended, latency, _ in done:
        index = int((ended - start) / width)
        if 0 <= index < len(buckets):
            buckets[index].append(latency)
    rows = []
    for index, latencies in enumerate(buckets):
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
        rows.append({"t": round(index * width, 3), "calls_per_s": round(len(latencies) / width), "p99_ms": p99})
    return rows


def leg(kind: str, world: dict, args: argparse.Namespace, before: str, month: str, env: dict, archive: str) -> dict:
    from run import BENCH_PY

    handle, out = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    t0 = time.monotonic() + 3.0  # the client (and the prune's process) are up by then
    client = subprocess.Popen(
        [BENCH_PY, str(HERE / "prune.py"), "_client", "--port", str(world["port"]), "--key", world["key"]]
        + ["--model", "bench0/gpt-4o-mini", "--concurrency", str(args.concurrency)]
        + ["--duration", str(args.duration), "--start", str(t0), "--out", out]
    )
    prune_out: list[dict] = []
    size = month_bytes(args.db, month) if kind == "prune" else None
    report_thread = None
    if args.report_s:  # a report reading call records, running when the prune starts
        report_thread = threading.Thread(target=_report, args=(args.db, t0 + args.at - 0.2, args.report_s))
        report_thread.start()
    # The control leg runs the same process, which does all but the command (Django's start, a
    # connection, its exit): what is left between the legs is the prune's own.
    if kind in ("prune", "control"):
        command = [GW_PY, str(HERE / "prune.py"), "_prune", "--before", before, "--at", str(t0 + args.at)]
        if kind == "control":
            command.append("--idle")
        if archive:
            command += ["--archive", archive]
        if args.prune_tree:
            command += ["--root", str(Path(args.prune_tree).resolve())]
        # Its own directory too: Celery's Django set-up puts the working directory on sys.path.
        tree = Path(args.prune_tree).resolve() if args.prune_tree else ROOT
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit("the prune failed")
        prune_out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    client.wait()
    if report_thread is not None:
        report_thread.join()
    done = json.loads(Path(out).read_text())
    os.unlink(out)
    errors = sum(1 for _, _, status in done if status != 200)
    began = next((p["began"] for p in prune_out if "began" in p), t0 + args.at)
    ended = next((p["ended"] for p in prune_out if "ended" in p), t0 + args.at)
    rows = windows(done, t0, args.window, t0 + args.duration)
    at, until = began - t0, ended - t0

    def phase(lo: float, hi: float) -> list[dict]:
        return [w for w in rows if w["t"] + args.window > lo and w["t"] < hi]

    before_w = phase(0, at)
    during_w = phase(at, until + 1e-9) if kind == "prune" else phase(at, at + 1.0)  # control: the second from AT
    after_w = phase(until + args.window, args.duration)

    def summary(ws: list[dict]) -> dict:
        rates = [w["calls_per_s"] for w in ws]
        p99s = [w["p99_ms"] for w in ws if w["p99_ms"] is not None]
        return {
            "windows": len(ws),
            "calls_per_s_median": round(statistics.median(rates)) if rates else None,
            "calls_per_s_min": min(rates) if rates else None,
            "p99_ms_max": round(max(p99s), 1) if p99s else None,
            "p99_ms_median": round(statistics.median(p99s), 1) if p99s else None,
        }

    steps = [{"t_ms": round((p["t"] - began) * 1000, 1), "line": p["line"]} for p in prune_out if "line" in p]
    return {
        "leg": kind,
        "archive": bool(archive),
        "prune_wall_ms": round((ended - began) * 1000, 1) if kind == "prune" else None,
        "prune_at_s": round(at, 3),
        "month_bytes": size,
        "steps": steps,
        "calls": len(done),
        "errors": errors,
        "before": summary(before_w),
        "during": summary(during_w),
        "after": summary(after_w),
        "windows": rows,
        "loadavg1": os.getloadavg()[0],
    }


def _report(db: str, at: float, seconds: float) -> None:
    """A report on this month's call records that holds the table (ACCESS SHARE) for `seconds`."""
    import psycopg

    with psycopg.connect(f"{PG}/{db}", autocommit=True) as conn:
        time.sleep(max(0.0, at - time.monotonic()))
        conn.execute(
            "SELECT count(*), pg_sleep(%s) FROM (SELECT 1 FROM quota_callrecord"
            " WHERE started_at >= date_trunc('month', now()) LIMIT 1000) AS recent",
            [seconds],
        )


def start_world(args: argparse.Namespace, upstream: str, env: dict):
    from alternate import worker_of
    from run import free_port, wait_http

    seeded = subprocess.run(
        [GW_PY, "bench/seed.py", upstream, upstream], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    key = seeded.stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen(
        [GW_PY, "-m", "gateway_project.serve", "--workers", "1", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
        + ["gateway_project.asgi:application"],
        cwd=ROOT,
        env={**env, "DEBUG": "False"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port)
    worker_of(proc.pid)
    return {"port": port, "key": key}, proc


def run(args: argparse.Namespace) -> None:
    import secrets

    from run import BENCH_PY, HARNESS, RESULTS, free_port, stop, wait_port

    if not _exists(args.template):
        raise SystemExit(f"no template database {args.template}: run `bench/prune.py prepare` first")
    month, before = template_month(args.template)
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{args.db}",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/4"),
        "DEBUG": "true",
        "SECRET_KEY": "bench-" + secrets.token_hex(16),
        "GATEWAY_ENCRYPTION_KEY": "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E=",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"prune-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    procs: list = []
    try:
        upstream_port = free_port()
        procs.append(
            subprocess.Popen(
                [BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(upstream_port), "--latency-ms", "0"],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(upstream_port)
        for number in range(args.rounds):
            copy_s = copy_template(args.template, args.db, args.tablespace)
            # The copy follows this checkout's migrations (the template is left as it is).
            subprocess.run([GW_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
            if not args.unchecked:  # the month was closed and checked by beat, as in production
                checked = subprocess.run(
                    [GW_PY, str(HERE / "prune.py"), "_check"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                print(f"   {checked.stdout.strip()}", flush=True)
            if not args.warm:
                evict_month(args.db, month)
            world, gateway = start_world(args, f"http://127.0.0.1:{upstream_port}", env)
            try:
                legs = [name for name in ("control", "prune") if name in args.legs.split(",")]
                legs = legs if number % 2 == 0 else legs[::-1]
                subprocess.run(
                    [BENCH_PY, str(HERE / "prune.py"), "_client", "--port", str(world["port"]), "--key"]
                    + [world["key"], "--model", "bench0/gpt-4o-mini", "--concurrency", str(args.concurrency)]
                    + ["--duration", "3", "--out", "/dev/null"],
                    check=True,
                )  # warm-up
                for kind in legs:
                    with tempfile.TemporaryDirectory() as archive:
                        row = leg(kind, world, args, before, month, env, archive if args.archive else "")
                    row.update(
                        {"round": number, "copy_s": round(copy_s, 1), "month": month, "tablespace": args.tablespace}
                    )
                    with out.open("a") as sink:
                        sink.write(json.dumps(row) + "\n")
                    report(row)
            finally:
                stop([gateway])
    finally:
        stop(procs)
        if not args.keep:
            _admin(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    print(f"rows in {out}")


def report(row: dict) -> None:
    def fmt(s: dict) -> str:
        return (
            f"{s['calls_per_s_median']} calls/s (min {s['calls_per_s_min']}), "
            f"p99 {s['p99_ms_median']} ms (max {s['p99_ms_max']})"
        )

    print(
        f"== round {row['round']} {row['leg']}: {row['calls']} calls, {row['errors']} errors, load {row['loadavg1']}",
        flush=True,
    )
    if row["leg"] == "prune":
        print(f"   prune {row['prune_wall_ms']} ms at {row['prune_at_s']} s; month {row['month_bytes']:,} bytes")
        for step in row["steps"]:
            print(f"     +{step['t_ms']:>8} ms  {step['line']}")
    print(f"   before: {fmt(row['before'])}\n   during: {fmt(row['during'])}\n   after:  {fmt(row['after'])}")
    print(
        "   windows (t s: calls/s p99 ms): "
        + "  ".join(f"{w['t']}:{w['calls_per_s']}/{w['p99_ms'] and round(w['p99_ms'], 1)}" for w in row["windows"]),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--rows", type=int, default=8_000_000)
    p.add_argument("--template", default="gw_prune_tpl")
    r = sub.add_parser("run")
    r.add_argument("--template", default="gw_prune_tpl")
    r.add_argument("--db", default="gw_prune_run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--duration", type=float, default=16)
    r.add_argument("--at", type=float, default=6, help="seconds into the leg the prune starts")
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument("--window", type=float, default=0.25)
    r.add_argument("--archive", action="store_true", help="prune with --archive to a temporary directory")
    r.add_argument("--keep", action="store_true", help="keep the last round's database")
    r.add_argument("--report-s", type=float, default=0, help="a report holding call records this long, from AT")
    r.add_argument("--legs", default="control,prune", help="the legs of each round (e.g. prune alone)")
    r.add_argument("--warm", action="store_true", help="leave the copied month in the page cache")
    r.add_argument("--unchecked", action="store_true", help="no stored month check: the prune counts the month itself")
    r.add_argument(
        "--tablespace", default="", help="copy the run database into this tablespace (a volume without discard)"
    )
    r.add_argument("--prune-tree", default="", help="run the prune command of another checkout (same migrations)")
    c = sub.add_parser("_client")
    for name in ("--port", "--concurrency"):
        c.add_argument(name, type=int, required=True)
    for name in ("--key", "--model", "--out"):
        c.add_argument(name, required=True)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--start", type=float, default=0.0, help="CLOCK_MONOTONIC time to start at")
    ld = sub.add_parser("_load")
    ld.add_argument("--rows", type=int, required=True)
    ld.add_argument("--month", required=True)
    sub.add_parser("_check")
    pr = sub.add_parser("_prune")
    pr.add_argument("--before", required=True)
    pr.add_argument("--at", type=float, required=True)
    pr.add_argument("--archive", default="")
    pr.add_argument("--idle", action="store_true", help="everything but the command (the control leg)")
    pr.add_argument("--root", default="", help="the checkout whose command runs (default: this one)")
    args = ap.parse_args()
    commands = {"prepare": prepare, "run": run, "_client": client_main, "_load": load_main, "_check": check_main}
    {**commands, "_prune": prune_main}[args.command](args)


if __name__ == "__main__":
    main()
