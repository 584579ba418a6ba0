#!/usr/bin/env python3
"""The ledger's per-call Python on the JSON path, counted without HTTP or a database: building the
admission's statement (with the reservation's context) and the settlement's, and psycopg dumping
their parameters with a new Transformer each (as a cursor that runs a statement for the first
time does). Deterministic work: a loaded machine changes the µs figures, not which tree is
cheaper; run the trees in turn, alternating, and compare the best of each:
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch .venv/bin/python bench/ledger_python.py \
      [--tree OTHER] [--number 2000] [--repeat 9]
No database is opened (Django's settings and model metadata only). `--step admit|settle` runs one
step --number times untimed, for a profiler or an instruction counter.
"""

import argparse
import datetime as dt
import os
import sys
import timeit
import uuid
from decimal import Decimal
from pathlib import Path

# The tree whose code is counted: this checkout, or another one (--tree, e.g. a worktree of main).
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE.resolve()))
os.chdir(TREE)  # django.setup() puts the working directory first on sys.path: the tree's own
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from psycopg.adapt import PyFormat, Transformer  # noqa: E402

from quota import ledger  # noqa: E402
from quota.ledger import statements  # noqa: E402
from quota.models import Outcome, PriceVersion  # noqa: E402
from quota.pricing import Usage  # noqa: E402


def _dump(params: list) -> None:
    transformer = Transformer(psycopg.adapters)
    transformer.dump_sequence(params, [PyFormat.AUTO] * len(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", help="count another checkout's code (read before Django starts)")
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--step", choices=("admit", "settle"), help="only run this step --number times, untimed")
    args = parser.parse_args()

    now = dt.datetime.now(dt.UTC)
    price = PriceVersion(pk=7, input_per_1m=Decimal("2.5"), output_per_1m=Decimal("10"))
    record = {
        "request_id": "req_" + uuid.uuid4().hex,
        "endpoint": "chat",
        "started_at": now,
        "is_stream": False,
        "api_key_id": str(uuid.uuid4()),
        "member_id": str(uuid.uuid4()),
        "allocation_id": str(uuid.uuid4()),
        "model_id": str(uuid.uuid4()),
        "deployment_id": None,
        "attempts": 1,
    }
    estimate = Usage(input_tokens=812, output_tokens=4096, estimated=True)
    usage = Usage(input_tokens=812, output_tokens=311, cached_tokens=0)

    def admit() -> None:
        context = ledger.lost_context(record=record, usage=estimate, price=price)
        reservation = statements.reservation_row(
            request_id=record["request_id"], tokens=4908, cost=Decimal("0.04299"), now=now, context=context
        )
        _, params = statements.admit_statement(
            allocation_id=record["allocation_id"],
            counter_id=12,
            token_cap=1_000_000,
            cost_cap=Decimal(100),
            priced=True,
            reservation=reservation,
        )
        _dump(params)

    admission = statements.Admission(uuid.uuid4(), 12, 4908, Decimal("0.04299"))
    full = {
        **record,
        "outcome": Outcome.SUCCESS,
        "status_code": 200,
        "error_code": "",
        "error_message": "",
        "ttft_ms": None,
    }

    def settle() -> None:
        values, cost = statements.settle_values(record=full, usage=usage, price=price, now=now)
        settlement = statements.Settlement(values, admission, usage.total_tokens, cost or Decimal(0))
        _, params = statements.settle_statement([settlement])
        _dump(params)

    admit()
    settle()
    if args.step:
        step = admit if args.step == "admit" else settle
        for _ in range(args.number):
            step()
        return
    for name, step in (
        ("admission (context, statement, parameters dumped)", admit),
        ("settlement (values, statement, parameters dumped)", settle),
    ):
        best = min(timeit.repeat(step, number=args.number, repeat=args.repeat)) / args.number
        print(f"{name}: {best * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
