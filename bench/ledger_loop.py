#!/usr/bin/env python3
"""The client side of the ledger's event-loop machinery (quota.ledger.loop) per call, at a
concurrency, without HTTP: --concurrency tasks on one event loop admit and settle calls of ONE
allocation as the gateway's warm path does (`ledger.admit_async`, then `loop.settle`; one call at a
time with `alone`, as the gateway settles a call alone in its process), against the real database.

Per level: this process's CPU per call (user + system, from the kernel), and how the machinery
worked: statements per call, admissions that waited for a batch, tasks started per call (writers),
settlement batch sizes. Under callgrind (`--callgrind`) also the user-space instructions per call of
this process (the database's are not counted), zeroed and dumped around each level's calls by
`callgrind_control`: a count a loaded machine does not move.

  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch .venv/bin/python bench/ledger_loop.py \
      [--tree OTHER] [--levels 1,16,64] [--calls 3000]
  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg/cg-%p.out .venv/bin/python bench/ledger_loop.py \
      --callgrind /tmp/cg --calls 400 [--tree OTHER]

Use a migrated database (bench/run.py's): it seeds a provider, a model, a member and an allocation.
"""

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

TREE = Path(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE.resolve()))
os.chdir(TREE)  # django.setup() puts the working directory first on sys.path: the tree's own
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the Django connection seeds, between levels
ENV = {
    "DEBUG": "False",
    "SECRET_KEY": "bench-ledger-loop-0123456789abcdef",
    "LOG_LEVEL": "WARNING",
    "GATEWAY_ENCRYPTION_KEY": "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E=",
}
for _name, _value in ENV.items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402

import django  # noqa: E402
import uvloop  # noqa: E402

django.setup()

from django.utils import timezone  # noqa: E402

from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from quota import ledger  # noqa: E402
from quota.ledger import loop  # noqa: E402
from quota.pricing import Usage  # noqa: E402

COUNTS: collections.Counter = collections.Counter()


def _counting(cls: type, name: str, key: str) -> None:
    original = getattr(cls, name)

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        COUNTS[key] += 1
        return original(*args, **kwargs)

    setattr(cls, name, counted)


_counting(
    loop.LoopConnection, "run_statement" if hasattr(loop.LoopConnection, "run_statement") else "wait", "statements"
)
_counting(loop.Pool, "connection", "leases")
for _cls in (loop._Settlements, loop._Admissions):
    _counting(_cls, "_start", f"{_cls.__name__[1:].lower()}_writers")
_counting(loop._Admissions, "add", "admissions_waited")
_counting(loop._Settlements, "add", "settlements_waited")


def seed() -> tuple:
    stamp = timezone.now().strftime("%H%M%S%f")
    provider = provider_create(name=f"bench-ll-{stamp}", kind="simulated")
    model = model_create(slug=f"bench-ll-{stamp}/m", provider=provider, upstream_name="m", kind="chat")
    member = member_create(username=f"bench-ll-{stamp}")
    allocation = allocation_create(member=member, model=model)[0]
    first = ledger.admit(
        allocation_id=allocation.pk, token_cap=None, cost_cap=None, est_tokens=1,
        est_cost=Decimal(0), request_id=f"warm-{allocation.pk}", now=timezone.now(),
    )  # fmt: skip
    ledger.release(admission=first)
    return allocation


async def caller(allocation: object, calls: list, tag: str, alone: bool) -> None:
    usage = Usage(input_tokens=80, output_tokens=20)
    while calls:
        n = calls.pop()
        now = timezone.now()
        rid = f"{tag}-{n}"
        admission = await ledger.admit_async(
            allocation_id=str(allocation.pk), token_cap=None, cost_cap=None, est_tokens=100,
            est_cost=Decimal("0.0001"), request_id=rid, now=now,
        )  # fmt: skip
        assert admission is not None and admission.counter_id, "a warm admission missed"
        record = {"request_id": rid, "allocation_id": allocation.pk, "member_id": allocation.member_id,
                  "model_id": allocation.model_id, "endpoint": "chat.completions", "started_at": now,
                  "outcome": "success", "status_code": 200}  # fmt: skip
        await loop.settle(admission=admission, record=record, usage=usage, price=None, now=now, alone=alone)


def _callgrind(out: Path | None, command: str) -> int:
    """`callgrind_control -z` (0) or `-d` (the instructions since the last zero) of this process."""
    if out is None:
        return 0
    before = set(out.glob(f"cg-{os.getpid()}.out*"))
    subprocess.run(["callgrind_control", command, str(os.getpid())], capture_output=True, check=True)  # noqa: S603, S607
    if command == "-z":
        return 0
    total = 0
    for dump in set(out.glob(f"cg-{os.getpid()}.out*")) - before:
        for line in dump.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
                break
        dump.unlink()
    return total


async def level(allocation: object, concurrency: int, calls: int, tag: str, out: Path | None) -> dict:
    # a burst first: connections opened, cursors made, statements prepared
    await asyncio.gather(*(caller(allocation, list(range(2 * concurrency)), f"{tag}w", concurrency == 1)
                           for _ in range(concurrency)))  # fmt: skip
    pending = list(range(calls))
    COUNTS.clear()
    await asyncio.to_thread(_callgrind, out, "-z")
    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(allocation, pending, tag, concurrency == 1) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - began
    instructions = await asyncio.to_thread(_callgrind, out, "-d")
    row = {"tree": str(Path(loop.__file__).parents[2]), "concurrency": concurrency, "calls": calls,
           "cpu_us_per_call": round(cpu * 1e6 / calls, 1),
           "wall_us_per_call": round(wall * 1e6 / calls, 1)}  # fmt: skip
    if out is not None:
        row["minstr_per_call"] = round(instructions / calls / 1e6, 5)
    row |= {key: round(value / calls, 3) for key, value in sorted(COUNTS.items())}
    row["loadavg1"] = os.getloadavg()[0]
    return row


async def run(args: argparse.Namespace) -> None:
    allocation = await asyncio.to_thread(seed)
    out = Path(args.callgrind) if args.callgrind else None
    for index, concurrency in enumerate(int(c) for c in args.levels.split(",")):
        print(json.dumps(await level(allocation, concurrency, args.calls, f"ll{index}", out)), flush=True)
    await loop.pool_close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", help="another checkout whose quota.ledger is counted")
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--callgrind", default="", help="callgrind's output directory: this runs under callgrind")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the serve worker's loop
        runner.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
