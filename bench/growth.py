#!/usr/bin/env python3
"""A year of call records: every page and report an admin, a member and an operator use, timed over
N call records, and the hot path's PostgreSQL cost per call with that many rows beside it.

Run it against a DEDICATED database (it is migrated, seeded and filled; drop it afterwards):
  createdb gw_growth
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_growth DEBUG=true \
      .venv/bin/python bench/growth.py --rows 1000000
  # the schema before the index diet and partitions, for bytes per row and the hot path only:
  ... bench/growth.py --rows 1000000 --schema quota:0007_model_forbidden_outcome --only storage,hot

The world: 5 providers, 20 models (each priced), 50 members, 200 allocations, 6 groups (two of
them capped, far above what the load spends): 45 members in one group, 15 of those in a second,
5 in none; each record names its allocation's default key and its member's groups (what the
settlement writes), and the groups' counters of this month are filled from the records. The rows are made
with generate_series: 80 % in the current billing month up to now, 20 % spread over the eleven
months before; 90 % success, 3 % upstream errors, 5 % refusals, 2 % unpriced; request ids in the
UUIDv7 layout. The usage counters of this month are filled from the records. After the load:
VACUUM ANALYZE and CHECKPOINT.

Each figure is the median of 3 after one untimed run (warm database), with Django's cache cleared
before every run (cold Django cache): pages through Django's test client as a staff user or the
member (whole request: middleware, queries, template), reports as the functions the commands and
beat call. The hot path is ledger.admit + ledger.settle, the statements every call runs, N times
in a row: wall time per call and the CPU the PostgreSQL backend process used (from
/proc/<backend pid>/stat, so the database must be on this machine), per call.

Results: one JSON line per run to bench/results/raw/growth-<time>.jsonl and printed.
"""

import argparse
import datetime as dt
import html
import json
import os
import re
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from allocations.models import Allocation, Member  # noqa: E402
from lib.ids import uuid7  # noqa: E402
from quota import ledger  # noqa: E402
from quota.periods import billing_tz, period_bounds  # noqa: E402
from quota.pricing import Usage  # noqa: E402

PREFIX = "growth"
TICK = os.sysconf("SC_CLK_TCK")


def seed() -> list[Allocation]:
    from allocations.services import allocation_create, member_create, model_create, provider_create
    from quota.services import price_version_add

    found = list(Allocation.objects.filter(display_name__startswith=PREFIX).order_by("display_name"))
    if found:
        return found
    providers = [provider_create(name=f"{PREFIX}-p{i}", kind="simulated") for i in range(5)]
    models = [
        model_create(slug=f"{PREFIX}/m{i}", provider=providers[i % 5], upstream_name="m", kind="chat")
        for i in range(20)
    ]
    for model in models:
        price_version_add(
            model=model,
            effective_from=timezone.now() - dt.timedelta(days=400),
            input_per_1m=Decimal("1"),
            output_per_1m=Decimal("2"),
        )
    members = [member_create(username=f"{PREFIX}-u{i}", is_staff=(i == 0)) for i in range(50)]
    groups(members)
    allocations = []
    for i in range(200):
        allocation, _, _ = allocation_create(
            member=members[i % 50], model=models[i % 20], quota_cost_usd_per_month=Decimal(10**6 + i)
        )
        Allocation.objects.filter(pk=allocation.pk).update(display_name=f"{PREFIX}-{i:03d}")
        allocations.append(allocation)
    return allocations


def groups(members: list) -> None:
    """Six groups, g0 and g1 capped: member i is in g(i % 5), and in g5 too when i % 3 == 0; the
    members i % 10 == 9 are in none."""
    from allocations.groups import group_create, group_members_change

    made = [
        group_create(
            data={"name": f"{PREFIX} group {n}", "slug": f"{PREFIX}-g{n}"}
            | ({"quota_cost_usd_per_month": str(10**7), "quota_tokens_per_month": 10**13} if n < 2 else {})
        )
        for n in range(6)
    ]
    for i, member in enumerate(members):
        if i % 10 == 9:
            continue
        for group in (made[i % 5], *((made[5],) if i % 3 == 0 else ())):
            group_members_change(group=group, add=[member.username])


def record_parts(allocations) -> tuple[list, list, list]:
    """Per allocation: its id, its default key's id, and its member's groups as a sorted uuid[]
    literal (as the key snapshot lists them, by id), for the INSERT below."""
    from allocations.models import ApiKey, Group

    keys = {}
    for key in ApiKey.objects.filter(scopes__allocation__in=allocations).values("pk", "scopes__allocation"):
        keys.setdefault(key["scopes__allocation"], key["pk"])
    member_groups: dict = {}
    for member_id, group_id in Group.members.through.objects.values_list("member_id", "group_id"):
        member_groups.setdefault(member_id, []).append(str(group_id))
    literal = {m: "{" + ",".join(sorted(g)) + "}" for m, g in member_groups.items()}
    return (
        [a.pk for a in allocations],
        [keys.get(a.pk) for a in allocations],
        [literal.get(a.member_id, "{}") for a in allocations],
    )


COLUMNS = (
    "request_id, allocation_id, member_id, model_id, endpoint, started_at, finished_at, status_code, outcome,"
    " input_tokens, output_tokens, cached_tokens, reasoning_tokens, audio_input_tokens, audio_output_tokens, unit,"
    " cost_usd, priced, estimated, error_code, error_message, is_stream, service_tier, tool_calls, close_reason,"
    " attempts, api_key_id, group_ids"
)
# One chunk of rows: times uniform in [start, start + span); request ids in the UUIDv7 layout made
# from that time (48-bit milliseconds, then random hex).
INSERT = f"""
    INSERT INTO quota_callrecord ({COLUMNS})
    SELECT
        substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(r, 1, 3) || '-8' || substr(r, 4, 3)
            || '-' || substr(r, 7, 12),
        a.id, a.member_id, a.model_id, CASE WHEN g %% 10 = 0 THEN 'embeddings' ELSE 'chat.completions' END,
        t, t + interval '900 milliseconds', CASE WHEN g %% 100 < 90 THEN 200 ELSE 429 END,
        CASE WHEN g %% 100 < 90 THEN 'success' WHEN g %% 100 < 93 THEN 'upstream_error'
             WHEN g %% 100 < 95 THEN 'rejected_cost_quota_exceeded' WHEN g %% 100 < 96 THEN 'rejected_quota_busy'
             WHEN g %% 100 < 97 THEN 'rejected_paused' WHEN g %% 100 < 98 THEN 'rejected_unauthenticated'
             ELSE 'success' END,
        CASE WHEN g %% 100 >= 93 AND g %% 100 < 98 THEN 0 ELSE 400 END,
        CASE WHEN g %% 100 >= 93 AND g %% 100 < 98 THEN 0 ELSE 100 END, 0, 0, 0, 0, '',
        CASE WHEN g %% 100 < 90 THEN 0.000600000 ELSE NULL END, g %% 100 < 90, false, '', '', g %% 3 = 0, '',
        '{{}}', '', 1, a.key_id, a.group_ids
    FROM generate_series(1, %(rows)s) AS g
    CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + %(span)s::interval * random() AS t,
                               md5(g::text || random()::text) AS r) AS x
    CROSS JOIN LATERAL (SELECT lpad(to_hex((extract(epoch FROM x.t) * 1000)::bigint), 12, '0') AS h) AS y
    JOIN LATERAL (SELECT id, member_id, model_id, (%(keys)s::uuid[])[1 + (g %% %(n)s)] AS key_id,
                         (%(groups)s::text[])[1 + (g %% %(n)s)]::uuid[] AS group_ids
                  FROM allocations_allocation WHERE id = (%(ids)s::uuid[])[1 + (g %% %(n)s)]) AS a ON true
"""
CHUNK = 1_000_000


def months_back(now: dt.datetime, count: int) -> None:
    """The partitions of the months before this one, as a table that has been partitioned for a
    year holds them (the migration makes them for the history it finds; here the history comes
    after it). Nothing before partitioning."""
    from quota import partitions

    if not partitions.is_partitioned():
        return
    have = {p.name for p in partitions.partitions()}
    this_month = now.astimezone(partitions.billing_tz()).date().replace(day=1)
    for n in range(1, count + 1):
        month = partitions.add_months(this_month, -n)
        if partitions.partition_name(month) not in have:
            partitions.create_partition(month)


def load(allocations, rows: int, now: dt.datetime) -> float:
    start, _ = period_bounds(now)
    year_ago = start.replace(year=start.year - 1) + dt.timedelta(days=31)
    plan = [(rows * 8 // 10, start, now - start), (rows - rows * 8 // 10, year_ago, start - year_ago)]
    ids, keys, groups = record_parts(allocations)
    began = time.perf_counter()
    done = 0
    for total, first, span in plan:
        left = total
        while left > 0:
            chunk = min(CHUNK, left)
            with connection.cursor() as cursor:
                cursor.execute(
                    INSERT,
                    {
                        "rows": chunk,
                        "start": first,
                        "span": span,
                        "ids": ids,
                        "keys": keys,
                        "groups": groups,
                        "n": len(ids),
                    },
                )
            left -= chunk
            done += chunk
            print(f"  loaded {done:,} / {rows:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO quota_usagecounter (allocation_id, period_start, tokens_used, cost_used, tokens_reserved,"
            " cost_reserved, calls, updated_at)"
            " SELECT allocation_id, %s, sum(input_tokens + output_tokens), coalesce(sum(cost_usd), 0), 0, 0,"
            " count(*), now() FROM quota_callrecord WHERE started_at >= %s AND allocation_id IS NOT NULL"
            " GROUP BY allocation_id"
            " ON CONFLICT (allocation_id, period_start) DO UPDATE SET tokens_used = EXCLUDED.tokens_used,"
            " cost_used = EXCLUDED.cost_used, calls = EXCLUDED.calls",
            [start.date(), start],
        )
        cursor.execute(
            "INSERT INTO quota_groupusagecounter (group_id, period_start, tokens_used, cost_used, tokens_reserved,"
            " cost_reserved, calls, updated_at)"
            " SELECT g, %s, sum(input_tokens + output_tokens), coalesce(sum(cost_usd) FILTER (WHERE priced), 0), 0, 0,"
            " count(*), now() FROM quota_callrecord CROSS JOIN LATERAL unnest(group_ids) AS g"
            " WHERE started_at >= %s AND allocation_id IS NOT NULL GROUP BY g"
            " ON CONFLICT (group_id, period_start) DO UPDATE SET tokens_used = EXCLUDED.tokens_used,"
            " cost_used = EXCLUDED.cost_used, calls = EXCLUDED.calls",
            [start.date(), start],
        )
    if "quota_dailyrollup" in connection.introspection.table_names():  # the reports read the daily rollups
        from quota.rollups import rollups_rebuild_range

        rollups_rebuild_range()
    if "quota_hourlyrollup" in connection.introspection.table_names():  # and the reads by hour the hourly ones
        from quota.rollups import hourly_rollups_rebuild_window

        hourly_rollups_rebuild_window()
    return time.perf_counter() - began


def settle_db() -> None:
    old = connection.connection.autocommit
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    connection.connection.autocommit = old


def storage() -> dict:
    """Heap and index bytes of call records (every partition), per row."""
    with connection.cursor() as cursor:
        # Every partition (pg_partition_tree), or the table itself before partitioning.
        cursor.execute(
            "SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint, coalesce(sum(pg_indexes_size(relid)), 0)::bigint"
            " FROM (SELECT relid FROM pg_partition_tree('quota_callrecord') WHERE isleaf"
            " UNION SELECT oid FROM pg_class WHERE relname = 'quota_callrecord' AND relkind = 'r') AS leaves"
        )
        heap, index = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM quota_callrecord")
        rows = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'quota_callrecord'::regclass")
        indexes = cursor.fetchone()[0]
    per = (lambda v: round(v / rows)) if rows else (lambda v: None)
    return {
        "rows": rows,
        "heap_bytes": heap,
        "index_bytes": index,
        "bytes_per_row": per(heap + index),
        "heap_per_row": per(heap),
        "index_per_row": per(index),
        "indexes": indexes,
    }


def timed(fn, runs: int = 3) -> dict:
    cache.clear()
    fn()  # warm the database; this run is not counted
    samples = []
    for _ in range(runs):
        cache.clear()
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1)}


def fetch(client: Client, url: str, params=None, status=200):
    def go():
        response = client.get(url, params or {})
        if response.status_code != status:
            raise SystemExit(f"{url} {params} answered {response.status_code}")
        return response

    return go


def pages(allocations, now: dt.datetime) -> dict:
    from quota.anomaly import anomalies_detect
    from quota.group_budgets import group_usage_reconcile
    from quota.services import usage_reconcile

    settings.ALLOWED_HOSTS = ["*"]
    staff = Member.objects.get(username=f"{PREFIX}-u0")
    admin = Client()
    admin.force_login(staff)
    member = Client()
    member.force_login(Member.objects.get(username=f"{PREFIX}-u7"))
    busy = Member.objects.get(username=f"{PREFIX}-u3")  # in two groups, four allocations
    local_today = now.astimezone(billing_tz()).date()
    hourly = {"period": "custom", "from": str(local_today), "to": str(local_today), "step": "hour"}
    start, _ = period_bounds(now)
    today = now.date()
    with connection.cursor() as cursor:
        cursor.execute("SELECT request_id FROM quota_callrecord WHERE started_at >= %s LIMIT 1", [start])
        row = cursor.fetchone()
    request_id = row[0] if row else str(uuid7())
    calls = "/admin/quota/callrecord/"

    def twenty_pages_down():
        url, params = calls, {}
        for _ in range(20):
            response = admin.get(url, params)
            older = re.search(r'href="([^"]+)" class="older"', response.content.decode())
            if not older:
                raise SystemExit(f"no older page after {url}")
            url, params = calls + html.unescape(older.group(1)), {}

    results = {
        "call list, first page": timed(fetch(admin, calls)),
        "call list, search (a request id)": timed(fetch(admin, calls, {"q": request_id})),
        "call list, filter with 0 matches (member)": timed(fetch(admin, calls, {"member_name": "nobody"})),
        "call list, filter with 0 matches (model)": timed(fetch(admin, calls, {"model_slug": "no/such"})),
        "call list, endpoint filter": timed(fetch(admin, calls, {"endpoint": "embeddings"})),
        "call list, a member's calls": timed(fetch(admin, calls, {"member_name": f"{PREFIX}-u7"})),
        "call list, outcome with 0 matches": timed(fetch(admin, calls, {"outcome__exact": "rejected_model_kind"})),
        "call list, 20 pages down (keyset)": timed(twenty_pages_down),
        "audit list": timed(fetch(admin, "/admin/allocations/auditevent/")),
        "/admin/overview/ (cold)": timed(fetch(admin, "/admin/overview/")),
        "admin usage CSV by allocation, 90 days": timed(
            fetch(
                admin,
                "/api/admin/usage",
                {
                    "group_by": "allocation",
                    "from": str(today - dt.timedelta(days=90)),
                    "to": str(today),
                    "format": "csv",
                },
            )
        ),
        "admin usage API by member, month": timed(
            fetch(admin, "/api/admin/usage", {"group_by": "member", "from": str(start.date()), "to": str(today)})
        ),
        "admin usage API by model, month": timed(
            fetch(admin, "/api/admin/usage", {"group_by": "model", "from": str(start.date()), "to": str(today)})
        ),
        "portal usage, this month": timed(fetch(member, "/portal/usage/")),
        "/api/me/usage by day": timed(fetch(member, "/api/me/usage", {"group_by": "day"})),
        "detect_anomalies": timed(lambda: anomalies_detect(now=now)),
        "reconcile_usage": timed(lambda: usage_reconcile(now=now, fix=False)),
        # The group reports: the usage API by group, the overview's chart and table stacked by
        # group (this month by day), the group half of reconcile_usage; and a member's page (their
        # allocations, keys with this month's spend, recent calls).
        "admin usage API by group, month": timed(
            fetch(admin, "/api/admin/usage", {"group_by": "group", "from": str(start.date()), "to": str(today)})
        ),
        "/admin/overview/ by group (cold)": timed(fetch(admin, "/admin/overview/", {"by": "group"})),
        "reconcile_usage, groups": timed(lambda: group_usage_reconcile(now=now, fix=False)),
        "member page (admin)": timed(fetch(admin, f"/admin/members/{busy.pk}/")),
        # By hour the picker reads the records of at most two days (docs/DECISIONS.md): today's.
        "/admin/overview/ by group, today by hour": timed(fetch(admin, "/admin/overview/", hourly | {"by": "group"})),
        "/admin/overview/ by model, today by hour": timed(fetch(admin, "/admin/overview/", hourly | {"by": "model"})),
    }
    return results


def prune_oldest() -> dict:
    """Detach + drop of the oldest month (what prune_call_records does after its checks)."""
    from quota import partitions

    held = [p for p in partitions.partitions() if partitions.count_rows(p)]
    if not held:
        return {}
    oldest = held[0]
    rows = partitions.count_rows(oldest)
    began = time.perf_counter()
    partitions.drop_partition(oldest)
    return {"month": f"{oldest.month:%Y-%m}", "rows": rows, "ms": round((time.perf_counter() - began) * 1000, 1)}


def backend_cpu_s() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def hot_path(allocations, calls: int) -> dict:
    """ledger.admit + ledger.settle per call, as the proxy runs them; wall and backend CPU."""
    from quota.services import price_in_force

    allocation = allocations[3]
    price = price_in_force(model_id=allocation.model_id, at=timezone.now())

    def one():
        now = timezone.now()
        rid = str(uuid7())
        admission = ledger.admit(
            allocation_id=allocation.pk,
            token_cap=None,
            cost_cap=allocation.quota_cost_usd_per_month,
            est_tokens=500,
            est_cost=Decimal("0.001"),
            request_id=rid,
            now=now,
        )
        record = {
            "request_id": rid,
            "allocation": allocation,
            "member": allocation.member,
            "model": allocation.model,
            "endpoint": "chat.completions",
            "started_at": now,
            "status_code": 200,
            "outcome": "success",
        }
        ledger.settle(admission=admission, record=record, usage=Usage(input_tokens=400, output_tokens=100), price=price)

    for _ in range(200):
        one()  # warm
    cpu0, wall0 = backend_cpu_s(), time.perf_counter()
    for _ in range(calls):
        one()
    cpu, wall = backend_cpu_s() - cpu0, time.perf_counter() - wall0
    return {
        "calls": calls,
        "wall_us_per_call": round(wall / calls * 1e6),
        "pg_cpu_us_per_call": round(cpu / calls * 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=3000, help="hot-path calls measured")
    ap.add_argument("--schema", help="migrate to app:migration first (e.g. quota:0007_model_forbidden_outcome)")
    ap.add_argument("--only", default="storage,pages,hot", help="comma list of storage, pages, hot, prune")
    args = ap.parse_args()
    only = set(args.only.split(","))
    name = connection.settings_dict["NAME"]
    if name in {"gateway", "postgres"} or not name:
        raise SystemExit("use a dedicated database (DATABASE_URL=.../gw_growth); this one is filled")
    if args.schema:  # straight there: a round trip through later migrations would rebuild the table
        from django.apps import apps

        app, migration = args.schema.split(":")
        call_command("migrate", app, migration, verbosity=0)
        for other in apps.get_app_configs():
            if other.label != app and other.models_module is not None:
                call_command("migrate", other.label, verbosity=0)
    else:
        call_command("migrate", verbosity=0)
    now = timezone.now()
    months_back(now, 12)
    allocations = seed()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM quota_callrecord")
        have = cursor.fetchone()[0]
    load_s = None
    if have < args.rows:
        print(f"loading {args.rows - have:,} rows into {name} …", flush=True)
        load_s = round(load(allocations, args.rows - have, now), 1)
    settle_db()
    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    result = {
        "run": time.strftime("%Y%m%d-%H%M%S"),
        "target": "growth",
        "rows": args.rows,
        "schema": args.schema or "head",
        "load_s": load_s,
        "loadavg1": os.getloadavg()[0],
        "shared_buffers": shared_buffers,
        "uuid": str(uuid.uuid4())[:8],
    }
    if "storage" in only:
        result["storage"] = storage()
        print(json.dumps({"storage": result["storage"]}), flush=True)
    if "hot" in only:
        result["hot_path"] = hot_path(allocations, args.calls)
        print(json.dumps({"hot_path": result["hot_path"]}), flush=True)
    if "pages" in only:
        result["pages"] = pages(allocations, now)
        for page, figure in result["pages"].items():
            print(f"  {page:<45} {figure['median_ms']:>9} ms (max {figure['max_ms']})", flush=True)
    if "prune" in only:
        result["prune"] = prune_oldest()
        print(json.dumps({"prune": result["prune"]}), flush=True)
    result["loadavg1_after"] = os.getloadavg()[0]
    out = ROOT / "bench" / "results" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"growth-{result['run']}.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
