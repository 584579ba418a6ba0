#!/usr/bin/env python3
"""PostgreSQL CPU per call of the ledger's BATCH statements, batch by batch: the admission of
several calls of one counter (`admit_many_statement`) and the settlement of several calls
(`settle_batch_statement`), as the event loop sends them when calls come in waves (c = 16, 64).

On one connection of the loop's pool (a raw cursor per statement text, prepared, as
`quota.ledger.loop` runs them), for each batch size of --sizes: admit `size` calls of one
allocation in one statement, then settle them in one statement; the CPU of the backend is read
from /proc/<pid>/schedstat (nanoseconds) before and after each statement (its commit's flush
included) and divided by the calls. Targets alternate batch by batch (order flipped each round),
so a drift of the machine's load falls on every target alike. The first --warm batches of each
(target, size) are not counted: a prepared statement runs custom plans for its first five
executions, then the generic plan the gateway's warm connections run.

Targets:
- `this`: this tree's statements; `base`: the statements of another checkout (--base, e.g. a
  worktree of main: its quota/ledger/statements.py loaded beside this tree's other modules);
- `<target>:<part>[:<part>…]`, FOR MEASURING ONLY (the rows written are no longer the same):
  `norollups` the settlement without its two rollup upserts, `nohourly` without the hourly one,
  `noids` the records' ids not returned (k's n only), `nofk` the records
  into a copy of the call records' table without foreign keys, `noindex` into a copy with its
  primary key only (the copies made on first use, as bench/statement_cpu.py makes them);
  `limitparam` (a `base` whose settlement has the number of calls as a LIMIT literal) that
  LIMIT a parameter instead (one text for every batch size); `custom` the statements planned at
  each execution (`plan_cache_mode = force_custom_plan`), as a prepared statement's first five
  executions are.
Each call's record is a proxied JSON call's (its key, times, tokens, a price version's cost).

  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch bench/batch_cpu.py \
      [--targets this,base] [--base /work/wt-main] [--sizes 8,32,64] [--rounds 40] [--explain]

`--explain` instead prints `EXPLAIN (ANALYZE, BUFFERS, WAL, VERBOSE)` of each target's warm
prepared statements (generic plan) for each size, the foreign keys checked at once (`SET
CONSTRAINTS ALL IMMEDIATE`) so their triggers' times show. Use a migrated scratch database.
"""

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import os
import re
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import django  # noqa: E402

django.setup()

import group_hold  # noqa: E402
import statement_cpu  # noqa: E402
from django.utils import timezone  # noqa: E402

from allocations.models import ApiKey  # noqa: E402
from quota import ledger  # noqa: E402
from quota.ledger import loop  # noqa: E402
from quota.ledger import statements as st  # noqa: E402
from quota.models import Outcome, PriceVersion  # noqa: E402
from quota.pricing import Usage  # noqa: E402

ESTIMATE = Usage(input_tokens=812, output_tokens=4096, estimated=True)
USAGE = Usage(input_tokens=812, output_tokens=311)


def load_base(tree: str) -> object:
    """Another checkout's quota/ledger/statements.py as a module of this tree's quota.ledger."""
    path = Path(tree) / "quota" / "ledger" / "statements.py"
    spec = importlib.util.spec_from_file_location("quota.ledger._base_statements", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _cut(text: str, start: str, end: str, instead: str) -> str:
    i = text.index(start)
    return text[:i] + instead + text[text.index(end, i) :]


def settle_text(sql: str, parts: list[str]) -> str:
    """The settlement batch's text with `parts` taken out (measuring only). Each rollup CTE taken
    out still reads its parameter, so the parameters stay the statement's."""
    for part in parts:
        if part == "norollups":
            end = sql.rindex(" SELECT ")
            sql = sql[: sql.index(" g AS (INSERT")] + " g AS (SELECT %s::text), h AS (SELECT %s::text)" + sql[end:]
        elif part == "nohourly":
            end = sql.rindex(" SELECT ")
            sql = sql[: sql.index(" h AS (INSERT")] + " h AS (SELECT %s::text)" + sql[end:]
        elif part == "noids":
            sql = sql[: sql.rindex(" SELECT ")] + " SELECT k.n, 0::bigint FROM k, (SELECT count(*) FROM i) i"
        elif part in ("nofk", "noindex"):
            sql = sql.replace(f"INSERT INTO {st.CALL_TABLE} (", f"INSERT INTO {statement_cpu._copy(part)} (")
        else:
            raise SystemExit(f"unknown part: {part}")
    return sql


class Target:
    def __init__(self, name: str, base: object | None) -> None:
        self.name = name
        kind, *self.parts = name.split(":")
        self.custom = "custom" in self.parts  # every execution planned for its parameters
        self.parts = [p for p in self.parts if p != "custom"]
        self.cuts = [p for p in self.parts if p != "limitparam"]
        self.module = base if kind == "base" else st
        if self.module is None:
            raise SystemExit("`base` needs --base")

    def admit(self, **kw: object) -> tuple[str, list]:
        return self.module.admit_many_statement(**kw)  # type: ignore[attr-defined]

    def settle(self, settlements: list) -> tuple[str, list]:
        sql, params = self.module.settle_batch_statement(settlements)  # type: ignore[attr-defined]
        if "limitparam" in self.parts:
            limited = re.sub(r" LIMIT \d+\),", " LIMIT %s::bigint),", sql, count=1)
            if limited == sql:
                raise SystemExit("limitparam: no LIMIT literal in the settlement")
            return limited, [params[0], len(settlements), *params[1:]]
        if self.cuts:
            cut = settle_text(sql, self.cuts)
            if cut == sql:
                raise SystemExit(f"nothing taken out by {self.cuts}")
            sql = cut
        return sql, params


def seed(stamp: str) -> tuple:
    allocation, groups = group_hold.seed(stamp, ["none"])["none"]
    group_hold.warm([(allocation, groups)])
    key = ApiKey.objects.filter(allocations=allocation).first()
    price = PriceVersion.objects.create(
        model_id=allocation.model_id, input_per_1m=Decimal("2.5"), output_per_1m=Decimal("10"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )  # fmt: skip
    counter = ledger.admit(
        allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=1, est_cost=Decimal(0),
        request_id=f"warm2-{stamp}", now=timezone.now(),
    )  # fmt: skip
    ledger.release(admission=counter)
    return allocation, key, price, counter.counter_id


def records(world: tuple, size: int, tag: str) -> tuple[list[dict], list[dict]]:
    """`size` calls' identities and reservations, as a proxied JSON call makes them."""
    allocation, key, price, _ = world
    now = timezone.now()
    identities, rows = [], []
    for n in range(size):
        rid = f"req_{tag}_{n}_{uuid.uuid4().hex[:12]}"
        identity = {"request_id": rid, "endpoint": "chat.completions", "started_at": now, "is_stream": False,
                    "api_key_id": str(key.pk), "member_id": str(allocation.member_id),
                    "allocation_id": str(allocation.pk), "model_id": str(allocation.model_id),
                    "deployment_id": None, "attempts": 1}  # fmt: skip
        context = ledger.lost_context(record=identity, usage=ESTIMATE, price=price)
        identities.append(identity)
        rows.append(st.reservation_row(request_id=rid, tokens=4908, cost=Decimal("0.04299"), now=now, context=context))
    return identities, rows


def settlements(world: tuple, identities: list[dict], rows: list[dict]) -> list:
    _, _, price, counter_id = world
    out = []
    now = timezone.now()
    for identity, r in zip(identities, rows, strict=True):
        record = {**identity, "outcome": Outcome.SUCCESS, "status_code": 200, "error_code": "", "error_message": "",
                  "ttft_ms": None}  # fmt: skip
        values, cost = st.settle_values(record=record, usage=USAGE, price=price, now=now)
        admission = st.Admission(r["id"], counter_id, r["tokens"], r["cost"])
        out.append(st.Settlement(values, admission, USAGE.total_tokens, cost or Decimal(0)))
    return out


async def execute(conn: loop.LoopConnection, sql: str, params: list, pid: int) -> tuple[float, list]:
    query = loop.native(sql)
    cursor = conn.statement_cursor(query)
    before = statement_cpu.cpu_ns(pid)
    await cursor.execute(query, params, prepare=True)
    rows = await cursor.fetchall() if cursor.description else []
    return (statement_cpu.cpu_ns(pid) - before) / 1000, rows


async def batch(conn: loop.LoopConnection, pid: int, world: tuple, target: Target, size: int, tag: str) -> tuple:
    """(admission µs, settlement µs) of the backend's CPU for one batch of `size` calls."""
    allocation, _, _, counter_id = world
    identities, rows = records(world, size, tag)
    await conn.cursor().execute(f"SET plan_cache_mode = {'force_custom_plan' if target.custom else 'auto'}")
    sql, params = target.admit(
        allocation_id=str(allocation.pk), counter_id=counter_id, token_cap=None, cost_cap=None, priced=True,
        reservations=rows,
    )  # fmt: skip
    admitted, _ = await execute(conn, sql, params, pid)
    sql, params = target.settle(settlements(world, identities, rows))
    settled, ids = await execute(conn, sql, params, pid)
    assert len(ids) == size, f"{target.name}: {len(ids)} of {size} settled"
    return admitted, settled


async def explain(conn: loop.LoopConnection, world: tuple, targets: list[Target], sizes: list[int]) -> None:
    """EXPLAIN of each target's prepared statements, generic plan, after warm executions."""
    allocation, _, _, counter_id = world
    cursor = conn.cursor()
    for size in sizes:
        for target in targets:
            await cursor.execute("SET plan_cache_mode = force_generic_plan")
            for n in range(7):
                identities, rows = records(world, size, f"x{n}")
                sql_a, params_a = target.admit(
                    allocation_id=str(allocation.pk), counter_id=counter_id, token_cap=None, cost_cap=None,
                    priced=True, reservations=rows,
                )  # fmt: skip
                sql_s, params_s = target.settle(settlements(world, identities, rows))
                if n < 6:
                    await execute(conn, sql_a, params_a, PID[0])
                    await execute(conn, sql_s, params_s, PID[0])
            for kind, sql, params in (("admission", sql_a, params_a), ("settlement", sql_s, params_s)):
                await cursor.execute("BEGIN")
                await cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                await cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, WAL, VERBOSE) {sql}", params, binary=False)
                plan = [r[0] for r in await cursor.fetchall()]
                await cursor.execute("COMMIT")
                print(f"=== {target.name} {kind} size {size}")
                print("\n".join(plan))
            await cursor.execute("RESET plan_cache_mode")


PID = [0]


async def run(args: argparse.Namespace) -> dict:
    base = load_base(args.base) if args.base else None
    targets = [Target(t, base) for t in args.targets.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    world = seed(timezone.now().strftime("%H%M%S%f"))
    samples: dict = {(t.name, s): ([], []) for t in targets for s in sizes}
    async with loop.pool().connection() as conn:
        cursor = conn.cursor()
        await cursor.execute("SELECT pg_backend_pid()")
        PID[0] = pid = (await cursor.fetchone())[0]  # type: ignore[index]
        if args.explain:
            await explain(conn, world, targets, sizes)
            return {}
        for r in range(args.rounds + args.warm):
            for size in sizes:
                for target in targets if r % 2 == 0 else targets[::-1]:
                    admitted, settled = await batch(conn, pid, world, target, size, f"b{r}")
                    if r >= args.warm:
                        samples[(target.name, size)][0].append(admitted / size)
                        samples[(target.name, size)][1].append(settled / size)
        await cursor.execute(
            "SELECT generic_plans, custom_plans, left(statement, 60) FROM pg_prepared_statements ORDER BY 3"
        )
        plans = await cursor.fetchall()
    await loop.pool_close()
    for generic, custom, text in plans:
        print(f"# plans: generic {generic} custom {custom}: {text}", file=sys.stderr)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="this")
    ap.add_argument("--base", help="another checkout whose statements are the `base` target")
    ap.add_argument("--sizes", default="8,32,64")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warm", type=int, default=6)
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()
    samples = asyncio.run(run(args))
    if not samples:
        return
    out = Path(__file__).resolve().parent / "results" / "raw" / f"batch_cpu-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for (target, size), (admit, settle) in samples.items():
        # `concurrency` is the batch's size (bench/summarize.py reads rows that have one).
        row = {"target": target, "case": "postgres_cpu per call of a batch statement", "concurrency": size,
               "batch": size,
               "batches": len(admit), "admission_us_median": round(statistics.median(admit), 1),
               "settlement_us_median": round(statistics.median(settle), 1),
               "settlement_us_min": round(min(settle), 1), "loadavg1": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
