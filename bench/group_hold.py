#!/usr/bin/env python3
"""What a capped group costs PostgreSQL per call at concurrency, without HTTP in the way.

--concurrency tasks on one event loop admit and settle calls of ONE allocation as the gateway's
warm path does (`quota.ledger.loop.admit` and `settle`: the loop's connection pool, settlements
grouped into batches), in rounds that alternate three targets:
- `none`: the member is in no group;
- `group_lock`: the member is in one capped group, admitted by the statement of any number of
  capped groups (quota.ledger.groups.ADMIT_SQL: `SELECT … FOR UPDATE` of the group's counter, then
  its UPDATE);
- `group`: the same member admitted by the single-group statement (ADMIT_ONE_SQL: one upsert);
- `none_upsert`: the member of `none` admitted with its counter written as ADMIT_ONE_SQL writes
  the allocation's (`INSERT … ON CONFLICT (id) DO UPDATE`, the allocation check and cap guard in
  its `WHERE`: no EvalPlanQual on a row changed under the statement) instead of the guarded
  `UPDATE`, FOR MEASURING ONLY (a counter id whose row is gone would fail on its foreign key).
Per round: the CPU of every PostgreSQL backend of the database (from /proc: the server must run on
this machine), the wall time and the calls per settlement statement (the batches the loop made).
Medians per target, µs per call.
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch bench/group_hold.py [--calls 2000] \
      [--rounds 6] [--concurrency 16] [--targets none,none_upsert] [--epq]
Use a migrated scratch database: it seeds a provider, a model, a group and two members each run.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
# The Django connection is used between rounds only (seeding, /proc and statistics reads).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from allocations.access import GroupBudget  # noqa: E402
from allocations.groups import group_create  # noqa: E402
from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from quota import ledger  # noqa: E402
from quota.billing.caps import guard_sql  # noqa: E402
from quota.ledger import groups as group_sql  # noqa: E402
from quota.ledger import loop, statements  # noqa: E402
from quota.pricing import Usage  # noqa: E402

AS_IS = group_sql.admission_parts


def upsert_parts(groups: tuple, priced: bool) -> tuple:
    """admission_parts without the single-group form: the FOR UPDATE statement for every member."""
    return (*AS_IS(groups, priced)[:4], None)


ADMIT_STATEMENT = statements.admit_statement
# The admission of a member without groups with its counter written by an upsert (`none_upsert`).
_UPSERT_SQL = (
    f"WITH c AS (INSERT INTO {statements.COUNTER_TABLE} AS y (id, allocation_id, period_start, tokens_used,"  # noqa: S608 (constant names)
    " cost_used, calls, tokens_reserved, cost_reserved, updated_at) SELECT %s,"
    " '00000000-0000-0000-0000-000000000000'::uuid, 'infinity'::date, 0, 0, 0, %s, %s, now()"
    " WHERE true{alloc_zero_guard} ON CONFLICT (id) DO UPDATE SET tokens_reserved = y.tokens_reserved"
    " + excluded.tokens_reserved, cost_reserved = y.cost_reserved + excluded.cost_reserved"
    " WHERE y.allocation_id = %s::uuid{alloc_guard} RETURNING id)"
    f" INSERT INTO {statements.RESERVATION_TABLE} (id, counter_id, request_id, tokens, cost, created_at, expires_at,"
    " context) SELECT %s, c.id, %s, %s, %s, %s, %s, {context} FROM c"
)


def upsert_statement(**kw: Any) -> tuple[str, list]:
    """admit_statement with the upsert for a member without groups (calls without a context)."""
    if kw.get("groups"):
        return ADMIT_STATEMENT(**kw)
    r = kw["reservation"]
    assert not r["context"], "none_upsert measures calls without a reservation context"
    condition, caps = guard_sql(token_cap=kw["token_cap"], cost_cap=kw["cost_cap"], priced=kw["priced"])
    params = [kw["counter_id"], r["tokens"], r["cost"], *caps, kw["allocation_id"], *caps]
    params += [r["id"], r["request_id"], r["tokens"], r["cost"], r["created_at"], r["expires_at"]]
    return statements._admit_sql(_UPSERT_SQL, condition, "'{}'"), params


def use(target: str) -> None:
    group_sql.admission_parts = upsert_parts if target == "group_lock" else AS_IS  # type: ignore[assignment]
    loop.admit_statement = upsert_statement if target == "none_upsert" else ADMIT_STATEMENT  # type: ignore[assignment]


_statements = [0]  # settlement statements run (one per batch)
EPQ = [False]  # --epq


def _counted(settlements: list) -> tuple:
    _statements[0] += 1
    return statements.settle_statement(settlements)


loop.settle_statement = _counted  # type: ignore[assignment]


def backends_cpu() -> dict[int, float]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = [r[0] for r in cursor.fetchall()]
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def seed(stamp: str, targets: list[str]) -> dict:
    provider = provider_create(name=f"bench-gh-{stamp}", kind="simulated")
    model = model_create(slug=f"bench-gh-{stamp}/m", provider=provider, upstream_name="m", kind="chat")
    group = group_create(
        data={"name": f"bench-gh-{stamp}", "quota_cost_usd_per_month": "1e9", "quota_tokens_per_month": 10**15}
    )
    alone, grouped = (member_create(username=f"bench-gh-{stamp}-{n}") for n in ("alone", "grouped"))
    group.members.add(grouped)
    budget = GroupBudget(id=str(group.pk), slug=group.slug, name=group.name, token_cap=10**15, cost_cap=Decimal("1e9"))
    worlds = {}
    for target, member, groups in (("none", alone, ()), ("group", grouped, (budget,))):
        allocation = allocation_create(member=member, model=model)[0]
        worlds[target] = (allocation, groups)
    worlds["group_lock"] = worlds["group"]
    worlds["none_upsert"] = worlds["none"]
    return {t: worlds[t] for t in targets}


async def caller(world: tuple, calls: list, tag: str) -> None:
    allocation, groups = world
    usage = Usage(input_tokens=80, output_tokens=20)
    while calls:
        n = calls.pop()
        now = timezone.now()
        rid = f"{tag}-{n}"
        admission = await ledger.admit_async(
            allocation_id=str(allocation.pk), token_cap=None, cost_cap=None, est_tokens=100,
            est_cost=Decimal("0.0001"), request_id=rid, now=now, groups=groups,
        )  # fmt: skip
        assert admission is not None, "a warm admission missed"
        record = {"request_id": rid, "allocation_id": allocation.pk, "member_id": allocation.member_id,
                  "model_id": allocation.model_id, "endpoint": "chat.completions", "started_at": now,
                  "outcome": "success", "status_code": 200}  # fmt: skip
        await loop.settle(admission=admission, record=record, usage=usage, price=None, now=now)


def _epq_counter(pids: Iterable[int]) -> subprocess.Popen | None:
    """`perf stat` of the uprobe on PostgreSQL's EvalPlanQualBegin over these backends (--epq)."""
    if not EPQ[0]:
        return None
    command = ["perf", "stat", "-x,", "-e", "probe_postgres:EvalPlanQualBegin", "-p", ",".join(map(str, pids))]
    counter = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # noqa: S603 - a fixed command
    time.sleep(0.3)  # attached before the round's first statement
    return counter


def _epq_count(counter: subprocess.Popen | None) -> float:
    if counter is None:
        return float("nan")
    counter.send_signal(signal.SIGINT)
    _, err = counter.communicate(timeout=10)
    line = next((x for x in err.splitlines() if "EvalPlanQualBegin" in x), "")
    return float(line.split(",")[0]) if line[:1].isdigit() else float("nan")


async def one_round(world: tuple, calls: int, concurrency: int, tag: str) -> tuple[float, float, float, float]:
    """(PostgreSQL CPU µs per call, wall µs per call, calls per settlement statement, EvalPlanQual
    re-checks per call: NaN without --epq)."""
    pending = list(range(calls))
    before = backends_cpu()
    counter = _epq_counter(before)
    batches, began = _statements[0], time.perf_counter()
    await asyncio.gather(*(caller(world, pending, tag) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    after = backends_cpu()
    epq = _epq_count(counter)
    cpu = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    return cpu * 1e6 / calls, wall * 1e6 / calls, calls / max(1, _statements[0] - batches), epq / calls


def warm(worlds: Iterable) -> None:
    """One admission released per (allocation, groups): the thread path creates the counters and
    caches their ids, so the calls measured after it take the warm path."""
    for allocation, groups in worlds:
        first = ledger.admit(
            allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=1,
            est_cost=Decimal(0), request_id=f"warm-{allocation.pk}", now=timezone.now(), groups=groups,
        )  # fmt: skip
        ledger.release(admission=first)


async def run(args: argparse.Namespace, worlds: dict) -> dict:
    warm(worlds.values())
    samples: dict = {t: ([], [], [], []) for t in worlds}
    n = 0
    for r in range(args.rounds):
        order = list(worlds) if r % 2 == 0 else list(worlds)[::-1]
        for target in order:
            use(target)
            n += 1
            for sink, value in zip(
                samples[target], await one_round(worlds[target], args.calls, args.concurrency, f"gh{n}"), strict=True
            ):
                sink.append(value)
    use("group")
    await loop.pool_close()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--targets", default="none,group,group_lock")
    ap.add_argument(
        "--epq",
        action="store_true",
        help="count EvalPlanQual re-checks per call (perf stat of the uprobe made once, as root, by"
        " `perf probe -x $(pg_config --bindir)/postgres EvalPlanQualBegin`; it costs each re-check a trap)",
    )
    args = ap.parse_args()
    EPQ[0] = args.epq
    worlds = seed(timezone.now().strftime("%H%M%S%f"), args.targets.split(","))
    samples = asyncio.run(run(args, worlds))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(__file__).resolve().parent / "results" / "raw" / f"group_hold-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for target, (cpu, wall, batched, epq) in samples.items():
        row = {"target": target, "case": "postgres_cpu one allocation", "concurrency": args.concurrency,
               "rounds": args.rounds, "calls": args.calls,
               "pg_cpu_us_per_call_median": round(statistics.median(cpu), 1),
               "wall_us_per_call_median": round(statistics.median(wall), 1),
               "calls_per_settlement_statement": round(statistics.median(batched), 2),
               **({"evalplanqual_per_call_median": round(statistics.median(epq), 3)} if args.epq else {}),
               "pg_cpu_us_per_call": [round(v, 1) for v in cpu], "loadavg1": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
