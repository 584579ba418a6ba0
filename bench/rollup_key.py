#!/usr/bin/env python3
"""What a part of the settlement's rollups costs PostgreSQL per settlement, without HTTP in the
way: the statement as it is against the same statement without that part.

`--against narrow_key` (the default): the daily rollup's CTE grouped and upserted by the key
without `api_key_id` and `group_ids` (the rows it writes get the defaults: the constraint still
finds them). `--against daily_only`: the statement without the hourly rollup's upsert.

Like bench/rollup_upsert.py: admission + settlement (`quota.ledger.admit` and `settle`, the
one-statement settlement with a reservation) for --calls calls in rounds, alternating the two
statements, over 1 allocation and over 200 (round-robin). The members are in one uncapped group
and each call names its allocation's key, so the wider key carries real values. Reads the CPU of
this connection's PostgreSQL backend from /proc (the server must run on this machine).
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch bench/rollup_key.py [--calls 2000] \
      [--rounds 6] [--against daily_only]
Use a migrated scratch database: it seeds a provider, a model, a group and 200 allocations each run.
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

from django.utils import timezone  # noqa: E402
from rollup_upsert import backend_cpu_s  # noqa: E402

from allocations.access import GroupBudget  # noqa: E402
from allocations.groups import group_create  # noqa: E402
from allocations.models import ApiKey  # noqa: E402
from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from quota import ledger, rollups  # noqa: E402
from quota.ledger import statements, sync  # noqa: E402
from quota.pricing import Usage  # noqa: E402

WIDE = statements.settle_statement
NARROW_KEY = tuple(k for k in rollups.KEY if k not in ("api_key_id", "group_ids"))
NARROW_ROLLUP = (
    f"INSERT INTO {rollups.ROLLUP_TABLE} AS d ({', '.join(NARROW_KEY)}, {', '.join(rollups.SUMS)}) "
    + rollups._GROUPED.replace(" api_key_id, group_ids,", "")
    .replace("GROUP BY 1, 2, 3, 4, 5, 6, 7", "GROUP BY 1, 2, 3, 4, 5")
    .format(tz="%s", source="i")
    + " ORDER BY 1, 2, 3, 4, 5 ON CONFLICT ON CONSTRAINT daily_rollup_once_per_key DO UPDATE SET "
    + ", ".join(f"{c} = d.{c} + EXCLUDED.{c}" for c in rollups.SUMS)
)


def narrow(settlements):
    """The settlement statement with the rollup keyed as before the API key and groups."""
    sql, params = WIDE(settlements)
    return sql.replace(rollups.upsert_sql("i"), NARROW_ROLLUP), params


HOURLY_CTE = ", h AS (" + rollups.upsert_sql("i", rollup=rollups.HOURLY) + ")"


def daily_only(settlements):
    """The settlement statement without the hourly rollup's upsert (and its timezone parameter)."""
    sql, params = WIDE(settlements)
    assert HOURLY_CTE in sql
    return sql.replace(HOURLY_CTE, ""), params[:-1]


def seed(stamp: str) -> tuple[list, dict, tuple]:
    provider = provider_create(name=f"bench-rk-{stamp}", kind="simulated")
    model = model_create(slug=f"bench-rk-{stamp}/m", provider=provider, upstream_name="m", kind="chat")
    group = group_create(data={"name": f"bench-rk-{stamp}", "slug": f"bench-rk-{stamp}"})
    members = [member_create(username=f"bench-rk-{stamp}-u{i}") for i in range(50)]
    group.members.add(*members)
    allocations = [allocation_create(member=members[i % 50], model=model)[0] for i in range(200)]
    keys = {
        k["scopes__allocation"]: k["pk"]
        for k in ApiKey.objects.filter(scopes__allocation__in=allocations).values("pk", "scopes__allocation")
    }
    budget = GroupBudget(id=str(group.pk), slug=group.slug, name=group.name, token_cap=None, cost_cap=None)
    return allocations, keys, (budget,)


def one_round(allocations: list, keys: dict, groups: tuple, calls: int, n: int) -> tuple[float, float]:
    cpu, began = backend_cpu_s(), time.perf_counter()
    for i in range(calls):
        allocation = allocations[i % len(allocations)]
        now = timezone.now()
        rid = f"bench-rk-{n}-{i}"
        admission = ledger.admit(
            allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=100,
            est_cost=Decimal("0.0001"), request_id=rid, now=now, groups=groups,
        )  # fmt: skip
        record = {"request_id": rid, "allocation_id": allocation.pk, "member_id": allocation.member_id,
                  "model_id": allocation.model_id, "api_key_id": keys[allocation.pk], "endpoint": "chat.completions",
                  "started_at": now, "outcome": "success", "status_code": 200}  # fmt: skip
        ledger.settle(admission=admission, record=record, usage=Usage(input_tokens=80, output_tokens=20), price=None)
    wall = time.perf_counter() - began
    return (backend_cpu_s() - cpu) * 1e6 / calls, wall * 1e6 / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--against", choices=("narrow_key", "daily_only"), default="narrow_key")
    args = ap.parse_args()
    allocations, keys, groups = seed(timezone.now().strftime("%H%M%S"))
    variants = {"as_is": WIDE, args.against: {"narrow_key": narrow, "daily_only": daily_only}[args.against]}
    spreads = {"1_allocation": allocations[:1], "200_allocations": allocations}
    samples: dict = {(v, s): ([], []) for v in variants for s in spreads}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(__file__).resolve().parent / "results" / "raw" / f"rollup_key-{args.against}-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for variant in order:
            sync.settle_statement = variants[variant]  # the synchronous path's statement
            for spread, chosen in spreads.items():
                n += 1
                cpu, wall = one_round(chosen, keys, groups, args.calls, n)
                samples[variant, spread][0].append(cpu)
                samples[variant, spread][1].append(wall)
    sync.settle_statement = WIDE
    for (variant, spread), (cpu, wall) in samples.items():
        row = {"target": variant, "case": f"postgres_cpu {spread}", "concurrency": 1, "rounds": args.rounds,
               "calls": args.calls, "pg_cpu_us_per_call_median": round(statistics.median(cpu), 1),
               "wall_us_per_call_median": round(statistics.median(wall), 1),
               "pg_cpu_us_per_call": [round(v, 1) for v in cpu], "loadavg1": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
