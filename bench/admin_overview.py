#!/usr/bin/env python3
"""Times the staff spend overview (/admin/overview/) over 1,000,000 call records, and the other
reports that read the daily rollups (admin usage API by model and by allocation, a member's usage
by day, reconcile_usage) and detect_anomalies' figures (24 hours of records).

Seeds 5 providers, 20 models, 50 members and 200 allocations, then inserts --rows call records
with generate_series (80 % this month up to now, 20 % last month; 90 % success, 3 % upstream
errors, 5 % refusals of four kinds, 2 % unpriced), fills the usage counters from them, runs
builds their daily rollups with `quota.rollups.rollups_rebuild_range` (timed: the rebuild of a
bulk load), runs CHECKPOINT + VACUUM ANALYZE, and times the page through Django's test client as a staff user
(whole request: middleware, queries, template) with the cache of whole days empty (cold) and
filled (warm), and the selectors alone, cold.
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_bench bench/admin_overview.py [--rows 1000000]
Use a migrated scratch database: the seeded members and allocations stay, the records go.
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

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from allocations.models import Allocation, Member  # noqa: E402
from allocations.services import allocation_create, member_create, model_create, provider_create  # noqa: E402
from backoffice.admin.overview import overview_context  # noqa: E402
from backoffice.admin.spend import period_from  # noqa: E402
from backoffice.api.selectors import usage_report  # noqa: E402
from portal.selectors import period_current, usage_grouped  # noqa: E402
from quota.anomaly import anomaly_figures  # noqa: E402
from quota.models import CallRecord, UsageCounter  # noqa: E402
from quota.periods import period_bounds, previous_period_start  # noqa: E402
from quota.services import usage_reconcile  # noqa: E402

try:  # a tree before the daily rollups (the A/B's other side) reads the records alone
    from quota.models import DailyRollup
    from quota.rollups import rollups_rebuild_range
except ImportError:
    DailyRollup = rollups_rebuild_range = None

PREFIX = "bench-ov"


def seed(stamp: str) -> list[Allocation]:
    providers = [provider_create(name=f"{PREFIX}-{stamp}-p{i}", kind="simulated") for i in range(5)]
    models = [
        model_create(slug=f"{PREFIX}-{stamp}/m{i}", provider=providers[i % 5], upstream_name="m", kind="chat")
        for i in range(20)
    ]
    members = [member_create(username=f"{PREFIX}-{stamp}-u{i}") for i in range(50)]
    return [
        allocation_create(member=members[i % 50], model=models[i % 20], quota_cost_usd_per_month=Decimal(50 + i))[0]
        for i in range(200)
    ]


INSERT = """
    INSERT INTO quota_callrecord (request_id, allocation_id, member_id, model_id, endpoint, started_at,
        finished_at, status_code, outcome, input_tokens, output_tokens, cached_tokens, reasoning_tokens,
        audio_input_tokens, audio_output_tokens, unit, cost_usd, priced, estimated, error_code,
        error_message, is_stream, close_reason, service_tier, tool_calls, attempts)
    SELECT %(prefix)s || g, a.id, a.member_id, a.model_id, 'chat.completions',
        %(start)s + (%(span)s * random()), now(), 200,
        CASE WHEN g %% 100 < 90 THEN 'success' WHEN g %% 100 < 93 THEN 'upstream_error'
             WHEN g %% 100 < 95 THEN 'rejected_cost_quota_exceeded' WHEN g %% 100 < 96 THEN 'rejected_quota_busy'
             WHEN g %% 100 < 97 THEN 'rejected_paused' WHEN g %% 100 < 98 THEN 'rejected_unauthenticated'
             ELSE 'success' END,
        CASE WHEN g %% 100 >= 93 AND g %% 100 < 98 THEN 0 ELSE 400 END, 100, 0, 0, 0, 0, '',
        CASE WHEN g %% 100 < 90 THEN 0.000600000 ELSE NULL END, g %% 100 < 90, false, '', '', false, '',
        '', '{}', 1
    FROM generate_series(1, %(rows)s) AS g
    JOIN LATERAL (SELECT id, member_id, model_id FROM allocations_allocation
                  WHERE id = (%(ids)s)[1 + (g %% %(n)s)]) AS a ON true
"""


def insert(allocations, *, rows: int, start, end) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT,
            {
                "prefix": f"{PREFIX}-{start:%m}-",
                "start": start,
                "span": end - start,
                "rows": rows,
                "ids": [a.pk for a in allocations],
                "n": len(allocations),
            },
        )


def fill_counters(allocations, period_start) -> None:
    start, end = period_bounds(timezone.now())
    for row in (
        CallRecord.objects.in_period(start, end)
        .filter(allocation__in=allocations)
        .values("allocation_id")
        .annotate(cost=django.db.models.Sum("cost_usd"), tokens=django.db.models.Sum("input_tokens"))
    ):
        UsageCounter.objects.update_or_create(
            allocation_id=row["allocation_id"],
            period_start=period_start,
            defaults={"cost_used": row["cost"] or 0, "tokens_used": row["tokens"] or 0},
        )


def timed(fn, n: int) -> dict:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return {"median_ms": round(statistics.median(samples)), "max_ms": round(max(samples))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("-n", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the call records (to EXPLAIN the queries)")
    args = ap.parse_args()
    settings.ALLOWED_HOSTS = ["*"]
    stamp = timezone.now().strftime("%H%M%S")
    now = timezone.now()
    start, _ = period_bounds(now)
    began = time.perf_counter()
    if args.rows:  # --rows 0 measures the records a --keep run left
        allocations = seed(stamp)
        insert(allocations, rows=args.rows * 8 // 10, start=start, end=now)
        insert(allocations, rows=args.rows * 2 // 10, start=previous_period_start(now), end=start)
        fill_counters(allocations, start.date())
    print({"inserted": CallRecord.objects.filter(request_id__startswith=PREFIX).count(),
           "insert_s": round(time.perf_counter() - began, 1)}, flush=True)  # fmt: skip
    if rollups_rebuild_range is not None:
        began = time.perf_counter()
        rebuilt = rollups_rebuild_range()
        print({"rollups_rebuild_s": round(time.perf_counter() - began, 1), **(rebuilt or {})}, flush=True)
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
        cursor.execute("VACUUM ANALYZE")
    staff = Member.objects.create_superuser(username=f"{PREFIX}-{stamp}-staff", password="x" * 12)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/overview/").status_code == 200
    page = lambda: client.get("/admin/overview/")  # noqa: E731
    print({"page_cold": timed(lambda: (cache.clear(), page()), args.n)}, flush=True)
    print({"page_warm": timed(page, args.n)}, flush=True)
    overview = lambda: overview_context(now=timezone.now(), by="model", period=period_from({}, now=timezone.now()))  # noqa: E731
    cold = lambda: (cache.clear(), overview())  # noqa: E731
    print({"selectors_cold": timed(cold, args.n)}, flush=True)
    month = period_bounds(timezone.now())
    for group in ("model", "allocation"):
        report = lambda g=group: usage_report(group_by=g, start=month[0], end=month[1])  # noqa: E731
        print({f"usage_api_by_{group}": timed(report, args.n)}, flush=True)
    member = Allocation.objects.filter(member__username__startswith=PREFIX).first().member
    by_day = lambda: usage_grouped(member=member, period=period_current(), group_by="day")  # noqa: E731
    print({"member_usage_by_day": timed(by_day, args.n)}, flush=True)
    print({"reconcile_usage": timed(lambda: usage_reconcile(), args.n)}, flush=True)
    print({"anomaly_figures": timed(lambda: anomaly_figures(now=timezone.now()), args.n)}, flush=True)
    # The members, allocations and audit events stay (audit events are append-only): use a scratch
    # database. The call records go, so that a second run measures the same number of them.
    if not args.keep:
        CallRecord.objects.filter(request_id__startswith=PREFIX)._raw_delete(CallRecord.objects.db)
        if DailyRollup is not None:
            DailyRollup.objects.filter(allocation__member__username__startswith=PREFIX).delete()


if __name__ == "__main__":
    main()
