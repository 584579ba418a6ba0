#!/usr/bin/env python3
"""Shows the quota check's cost does not grow with the call records (SPEC 5: O(1) counters).

Times ledger.admit + its release (the whole admission step of a proxied call) for one allocation,
first with no call records of it, then after inserting 1,000,000 of them with generate_series
(after a CHECKPOINT and VACUUM ANALYZE), then again after deleting them.
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_bench bench/quota_flat.py [--rows 1000000]
"""

import argparse
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

from allocations.models import Member  # noqa: E402
from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from quota import ledger  # noqa: E402
from quota.models import CallRecord  # noqa: E402


def timed(allocation, n: int) -> dict:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        admission = ledger.admit(
            allocation_id=allocation.pk,
            token_cap=10**15,
            cost_cap=Decimal("1e9"),
            est_tokens=1000,
            est_cost=Decimal("0.001"),
            request_id=f"flat-{i}",
            now=timezone.now(),
        )
        ledger.release(admission=admission)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"median_us": round(statistics.median(samples)), "p99_us": round(samples[int(n * 0.99) - 1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("-n", type=int, default=500)
    args = ap.parse_args()
    stamp = timezone.now().strftime("%H%M%S%f")
    member = Member.objects.filter(username="bench-flat").first() or member_create(username="bench-flat")
    provider = provider_create(name=f"flat-{stamp}", kind="simulated")
    model = model_create(slug=f"flat-{stamp}/m", provider=provider, upstream_name="m", kind="chat")
    allocation, _, _ = allocation_create(
        member=member, model=model, quota_tokens_per_month=10**15, quota_cost_usd_per_month=Decimal("1e9")
    )
    timed(allocation, 50)  # warm up
    before = timed(allocation, args.n)
    print({"records_of_allocation": 0, **before}, flush=True)
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO quota_callrecord (request_id, allocation_id, member_id, model_id, endpoint, started_at,
                finished_at, status_code, outcome, input_tokens, output_tokens, cached_tokens, reasoning_tokens,
                audio_input_tokens, audio_output_tokens, unit, cost_usd, priced, estimated, error_code,
                error_message, is_stream, close_reason)
            SELECT 'flat-' || g, %s, %s, %s, 'chat.completions', now() - g * interval '1 second',
                now() - g * interval '1 second', 200, 'success', 10, 5, 0, 0, 0, 0, '', 0.000001, true, false,
                '', '', false, ''
            FROM generate_series(1, %s) AS g
            """,
            [allocation.pk, member.pk, model.pk, args.rows],
        )
    inserted = time.perf_counter() - start
    count = CallRecord.objects.filter(allocation=allocation).count()
    settle()
    after = timed(allocation, args.n)
    print({"records_of_allocation": count, "insert_s": round(inserted, 1), **after}, flush=True)
    CallRecord.objects.filter(allocation=allocation)._raw_delete(CallRecord.objects.db)
    settle()
    # Measured again without the rows: if this matches the 1M figure, any difference is the
    # machine's drift (checkpoints, other load), not the number of records.
    print({"records_of_allocation": 0, "again": True, **timed(allocation, args.n)}, flush=True)


def settle() -> None:
    """Let the bulk write's aftermath (checkpoint, autovacuum) pass before timing."""
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
        cursor.execute("VACUUM ANALYZE quota_callrecord")
    time.sleep(5)


if __name__ == "__main__":
    main()
