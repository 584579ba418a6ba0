#!/usr/bin/env python3
"""What the daily rollup's upsert costs PostgreSQL per settlement, without HTTP in the way.

Runs admission + settlement (`quota.ledger.admit` and `settle`: the one-statement settlement with
a reservation) for --calls calls in rounds, alternating the settlement statement as it is (with
the rollup CTE) and the same statement without it, over 1 allocation and over 200 (round-robin);
reads the CPU of this connection's PostgreSQL backend from /proc (the server must run on this
machine) and the wall time. Medians per variant, µs per call.
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch bench/rollup_upsert.py [--calls 2000] [--rounds 6]
Use a migrated scratch database: it seeds a provider, a model and 200 allocations each run.
"""

import argparse
import json
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from quota import ledger  # noqa: E402
from quota.ledger import statements, sync  # noqa: E402
from quota.pricing import Usage  # noqa: E402

WITH_ROLLUP = statements.settle_statement


def without_rollup(settlements):
    """The settlement statement with its rollup CTE replaced by a constant one (not executed)."""
    sql, params = WITH_ROLLUP(settlements)
    return sql.replace(statements._ROLLUP, "SELECT 1"), params[:2]


def backend_cpu_s() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed(stamp: str) -> list:
    provider = provider_create(name=f"bench-ru-{stamp}", kind="simulated")
    model = model_create(slug=f"bench-ru-{stamp}/m", provider=provider, upstream_name="m", kind="chat")
    members = [member_create(username=f"bench-ru-{stamp}-u{i}") for i in range(50)]
    return [allocation_create(member=members[i % 50], model=model)[0] for i in range(200)]


def one_round(allocations: list, calls: int, n: int) -> tuple[float, float]:
    """(PostgreSQL CPU µs per call, wall µs per call) of `calls` admissions and settlements."""
    cpu, began = backend_cpu_s(), time.perf_counter()
    for i in range(calls):
        allocation = allocations[i % len(allocations)]
        now = timezone.now()
        rid = f"bench-ru-{n}-{i}"
        admission = ledger.admit(
            allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=100,
            est_cost=Decimal("0.0001"), request_id=rid, now=now,
        )  # fmt: skip
        record = {"request_id": rid, "allocation_id": allocation.pk, "member_id": allocation.member_id,
                  "model_id": allocation.model_id, "endpoint": "chat.completions", "started_at": now,
                  "outcome": "success", "status_code": 200}  # fmt: skip
        ledger.settle(admission=admission, record=record, usage=Usage(input_tokens=80, output_tokens=20), price=None)
    wall = time.perf_counter() - began
    return (backend_cpu_s() - cpu) * 1e6 / calls, wall * 1e6 / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    allocations = seed(timezone.now().strftime("%H%M%S"))
    variants = {"rollup": WITH_ROLLUP, "no_rollup": without_rollup}
    spreads = {"1_allocation": allocations[:1], "200_allocations": allocations}
    samples: dict = {(v, s): ([], []) for v in variants for s in spreads}
    out = Path(__file__).resolve().parent / "results" / "raw" / f"rollup_upsert-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for variant in order:
            sync.settle_statement = variants[variant]  # the synchronous path's statement
            for spread, chosen in spreads.items():
                n += 1
                cpu, wall = one_round(chosen, args.calls, n)
                samples[variant, spread][0].append(cpu)
                samples[variant, spread][1].append(wall)
    sync.settle_statement = WITH_ROLLUP
    for (variant, spread), (cpu, wall) in samples.items():
        row = {"target": variant, "case": f"postgres_cpu {spread}", "concurrency": 1, "rounds": args.rounds,
               "calls": args.calls, "cpu_ms_per_call_median": round(statistics.median(cpu) / 1000, 4),
               "pg_cpu_us_per_call_median": round(statistics.median(cpu), 1),
               "wall_us_per_call_median": round(statistics.median(wall), 1),
               "pg_cpu_us_per_call": [round(v, 1) for v in cpu], "loadavg1": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
