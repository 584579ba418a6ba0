#!/usr/bin/env python3
"""PostgreSQL CPU of each ledger statement of one call, one call at a time: where a capped group's
extra CPU goes, statement by statement, without HTTP or concurrency in the way.

Calls are admitted and settled through `quota.ledger.loop` (the gateway's warm path) on one
connection, and the CPU of its backend is read from /proc/<pid>/schedstat (nanoseconds) before and
after each statement. The targets alternate call by call (not round by round), so that a drift of
the machine's load falls on every target alike. Targets:
- `none`: the member is in no group; `group`: the member is in one capped group; `none_upsert`:
  `none` with its counter written by an upsert (bench/group_hold.py), FOR MEASURING ONLY;
- `group:<part>[:<part>…]`: the same member with parts of its statements taken out, FOR MEASURING
  ONLY (the counters stop being exact): `nogu` the settlement's group upsert, `gunosub` that
  upsert's sub-select of the held amounts, `nocount` the settlement's wait for the group upsert
  before the allocations' counters, `nojoins` the group upsert's joins (counters for the period,
  groups for the deleted ones), `noexists` the admission's read of the allocation's row.
- `none:batch`: the member without groups settled by the batch statement (what one call took
  before it had a statement of its own), its record a JSON array of the columns' values;
  `none:batchobj`, FOR MEASURING ONLY, the same with the record as a JSON object by column name
  read by `jsonb_populate_record` (the batch's form before); `none:<part>[:<part>…]`, FOR MEASURING ONLY, the
  statement of one call with parts taken out: `nohourly` the hourly rollup's upsert, `norollups`
  both rollups' upserts, `norecord` the call record's INSERT (and the rollups), `nocounter` the
  allocation counter's upsert, `nofk` the record into a copy of the call records' table with its
  indexes but without foreign keys (so no check of them at commit), `noindex` into a copy with its
  primary key only (both copies, `bench_callrecord_nofk` and `…_noindex`, made in the scratch
  database on first use); `fk_<keys>` into a copy with its indexes and only these of its foreign
  keys (`fk_` none, `fk_all` the five, `fk_allocation+model` two: columns without `_id`, joined by
  `+`), each as the table's (checked at commit), so the copies differ by their keys alone;
  `keyed` the record with an API key and a price version (real rows), as a priced call through
  a key writes it (without it both are NULL, and their keys check nothing); `recjson` the record
  sent as one JSON object read by `jsonb_populate_record` (the statement's form before its columns
  were parameters of their own).
- `<member>:gen`: the admission guarded on the auth generation, as the gateway's warm path sends it
  (`lib.cache.GENERATION_GUARD`); `<member>:ctx`: the reservation with the context a proxied call
  writes (`quota.ledger.lost_context` of its identity, estimate and price; without it the bench
  writes an empty one); both combinable with the parts above. `none:gen:ctx` is what a warm /v1
  call sends.
- `none:<part>`, the admission's reservation table, FOR MEASURING ONLY, a copy of it made in the
  scratch database on first use (the settlement deletes from the same copy): `resmain` with the
  counter and expiry indexes it had before quota 0020 and its foreign key to the counter (checked
  at commit), `resthis` as the table is now (its primary key, its foreign key), `resnofk` the
  counter and expiry indexes without the foreign key, `resnoexp` with the counter index only
  and no foreign key, `resnoidx` with its primary key only and no foreign key. `none:gen:ctx:recjson:resmain`
  and `none:gen:ctx:resthis` are the statements before and after this tree's cuts, in one process
  and on tables equally fresh (the real table's dead rows, between two vacuums, would weigh on one
  side only).
- `floor`: the two one-row statements of `bench/ledger_floor.py` (a hold's INSERT; its DELETE
  and a record's INSERT), on the same connection: what the gateway's statements are compared with.
Medians of µs per call, per statement (and a 95 % trimmed mean):

  DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_scratch bench/statement_cpu.py \
      [--targets none,group,group:nogu] [--calls 600]

Use a migrated scratch database (it seeds as bench/group_hold.py does); the server must run on
this machine.
"""

import argparse
import asyncio
import functools
import json
import os
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
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from lib.cache import auth_generation  # noqa: E402
from quota import ledger  # noqa: E402
from quota.ledger import loop  # noqa: E402
from quota.ledger import statements as st  # noqa: E402
from quota.periods import period_start_date  # noqa: E402
from quota.pricing import Usage  # noqa: E402

AS_IS = (st._ADMIT_ONE_GROUP_SQL, st._SETTLE_GROUPS_SQL)
ONE = st._SETTLE_ONE_SQL
# The estimate a proxied call's reservation context holds (`ctx`).
ESTIMATE = Usage(input_tokens=120, output_tokens=800, estimated=True)
SETTLE = loop.settle_statement  # as bench/group_hold.py sets it (counting the statements)


def _cut(text: str, start: str, end: str, instead: str) -> str:
    i = text.index(start)
    return text[:i] + instead + text[text.index(end, i) :]


def without(parts: list[str]) -> tuple[str, str]:
    """The one-group admission and the grouped settlement with `parts` taken out (measuring only)."""
    admit, settle = AS_IS
    period = period_start_date(timezone.now())
    for part in parts:
        if part == "nogu":
            settle = _cut(settle, " gu AS (", "RETURNING 1),", "").replace(" WHERE (SELECT count(*) FROM gu) >= 0", "")
        elif part == "gunosub":
            settle = _cut(
                settle,
                "DO UPDATE SET (tokens_used",
                "RETURNING 1)",
                "DO UPDATE SET tokens_used = x.tokens_used + excluded.tokens_used, cost_used = x.cost_used"
                " + excluded.cost_used, calls = x.calls + excluded.calls, updated_at = now() ",
            )
        elif part == "nocount":
            settle = settle.replace(" WHERE (SELECT count(*) FROM gu) >= 0", "")
        elif part == "nojoins":
            settle = _cut(
                settle,
                "FROM k JOIN ",
                " GROUP BY 1, 2",
                f"FROM k CROSS JOIN (SELECT '{period}'::date AS period_start) c, unnest(k.groups) g",
            )
        elif part == "noexists":
            read = f" AND EXISTS (SELECT 1 FROM {st.COUNTER_TABLE} WHERE id = %s AND allocation_id = %s{{guard}})"
            admit = admit.replace(read, " AND %s::bigint IS NOT NULL AND %s::uuid IS NOT NULL")
        else:
            raise SystemExit(f"unknown part: {part}")
    if parts and (admit, settle) == AS_IS:
        raise SystemExit(f"nothing taken out by {parts}: the statements changed")
    return admit, settle


def _has_key(cursor, table: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", [table])
    return cursor.fetchone() is not None


@functools.cache
def _copy(part: str) -> str:
    """A copy of the call records' table (not partitioned): without foreign keys, or (`noindex`)
    without any index but its primary key."""
    name = f"bench_callrecord_{part}"
    like = "INCLUDING ALL" if part == "nofk" else "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} (LIKE {st.CALL_TABLE} {like})")
        if part == "noindex" and not _has_key(cursor, name):
            cursor.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id, started_at)")
    return name


RECORD_KEYS = {
    "allocation": "allocations_allocation",
    "api_key": "allocations_apikey",
    "member": "allocations_member",
    "model": "allocations_catalogmodel",
    "price_version": "quota_priceversion",
}


@functools.cache
def _keyed_copy(part: str) -> str:
    """A copy of the call records' table (not partitioned) with its indexes and only the foreign
    keys named in `part` (`fk_allocation+model`, `fk_all`, `fk_` for none), deferred as the
    table's."""
    names = part.removeprefix("fk_")
    keys = list(RECORD_KEYS) if names == "all" else [k for k in names.split("+") if k]
    unknown = set(keys) - set(RECORD_KEYS)
    if unknown:
        raise SystemExit(f"unknown keys: {sorted(unknown)}")
    name = "bench_callrecord_fk_" + ("_".join(keys) or "none")
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is None:
            cursor.execute(f"CREATE TABLE {name} (LIKE {st.CALL_TABLE} INCLUDING ALL)")
            for key in keys:
                cursor.execute(
                    f"ALTER TABLE {name} ADD FOREIGN KEY ({key}_id) REFERENCES {RECORD_KEYS[key]} (id)"
                    " DEFERRABLE INITIALLY DEFERRED"
                )
    return name


def one_without(parts: list[str]) -> str:
    """The statement of one call (member without groups) with `parts` taken out (measuring only):
    each CTE taken out still reads its parameter, so the parameters stay those of the statement."""
    settle, end = ONE, " SELECT 1, id FROM i"
    for part in parts:
        if part == "nocounter":
            settle = _cut(settle, " u AS (", " i AS (", " u AS (SELECT 1),")
        elif part == "norecord":
            settle = _cut(
                settle,
                " i AS (",
                end,
                " i AS (SELECT 1 AS id, ARRAY[" + ", ".join(["%s::text"] * len(st.CALL_FIELDS)) + "]),"
                " g AS (SELECT %s::text), h AS (SELECT %s::text)",
            )
        elif part == "norollups":
            settle = _cut(settle, " g AS (", end, " g AS (SELECT %s::text), h AS (SELECT %s::text)")
        elif part == "nohourly":
            settle = _cut(settle, " h AS (", end, " h AS (SELECT %s::text)")
        elif part in ("nofk", "noindex"):
            settle = settle.replace(f"INSERT INTO {st.CALL_TABLE} (", f"INSERT INTO {_copy(part)} (")
        elif part.startswith("fk_"):
            settle = settle.replace(f"INSERT INTO {st.CALL_TABLE} (", f"INSERT INTO {_keyed_copy(part)} (")
        elif part in RESERVATION_COPIES:
            settle = settle.replace(f"DELETE FROM {st.RESERVATION_TABLE} ", f"DELETE FROM {_reservations(part)} ")
        elif part == "recjson":
            settle = settle.replace(
                f"SELECT {st._RECORD_PARAMETERS} WHERE",
                f"SELECT {st._CALL_COLUMNS} FROM jsonb_populate_record(NULL::{st.CALL_TABLE}, %s::jsonb) AS p WHERE",
            )
        elif part not in ("batch", "batchobj", "ctx", "keyed"):
            raise SystemExit(f"unknown part: {part}")
    if parts and set(parts) - {"batch", "batchobj", "ctx", "keyed"} and settle == ONE:
        raise SystemExit(f"nothing taken out by {parts}: the statement changed")
    return settle


# Copies of the reservations' table: (secondary indexes, its foreign key to the counter or not).
RESERVATION_COPIES = {
    "resmain": (("counter_id", "expires_at"), True),
    "resthis": ((), True),
    "resnofk": (("counter_id", "expires_at"), False),
    "resnoexp": (("counter_id",), False),
    "resnoidx": ((), False),
}


@functools.cache
def _reservations(part: str) -> str:
    """A copy of the reservations' table with its primary key, these secondary indexes and, or
    not, its foreign key to the counter (checked at commit, as the table's)."""
    name = f"bench_reservation_{part}"
    indexed, keyed = RESERVATION_COPIES[part]
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} (LIKE {st.RESERVATION_TABLE} INCLUDING DEFAULTS)")
        if not _has_key(cursor, name):
            cursor.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
            for column in indexed:
                cursor.execute(f"CREATE INDEX ON {name} ({column})")
            if keyed:
                cursor.execute(
                    f"ALTER TABLE {name} ADD FOREIGN KEY (counter_id) REFERENCES {st.COUNTER_TABLE} (id)"
                    " DEFERRABLE INITIALLY DEFERRED"
                )
    return name


ADMIT = st._ADMIT_SQL


def admit_without(parts: list[str]) -> str:
    """The admission of a member without groups with its reservation written into a copy of the
    table (measuring only)."""
    for part in parts:
        if part in RESERVATION_COPIES:
            return ADMIT.replace(f"INSERT INTO {st.RESERVATION_TABLE} ", f"INSERT INTO {_reservations(part)} ")
    return ADMIT


# The floor's statements (bench/ledger_floor.py), on the same connection as the gateway's.
FLOOR_SETUP = (
    "CREATE TABLE IF NOT EXISTS bench_floor_hold (id uuid PRIMARY KEY, created_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_floor_record (id bigserial PRIMARY KEY, request uuid NOT NULL,"
    " started_at timestamptz NOT NULL, settled_at timestamptz NOT NULL)",
)
FLOOR_ADMIT = loop.native("INSERT INTO bench_floor_hold (id, created_at) VALUES (%s, now())")
FLOOR_SETTLE = loop.native(
    "WITH d AS (DELETE FROM bench_floor_hold WHERE id = %s RETURNING id, created_at)"
    " INSERT INTO bench_floor_record (request, started_at, settled_at) SELECT id, created_at, now() FROM d"
)


async def floor_call(pid: int) -> tuple[float, float]:
    """(admission, settlement) of the floor: µs of the backend's CPU."""
    hold = uuid.uuid4()
    async with loop.pool().connection() as conn:
        before = cpu_ns(pid)
        await conn.run_statement(FLOOR_ADMIT, (hold,), prepare=True)
        admitted = cpu_ns(pid)
    async with loop.pool().connection() as conn:
        await conn.run_statement(FLOOR_SETTLE, (hold,), prepare=True)
    return (admitted - before) / 1000, (cpu_ns(pid) - admitted) / 1000


_context: list = []  # `ctx`: write the reservation's context a proxied call writes


def json_statement(settlements: list) -> tuple:
    """The statement of one call with its record as one JSON object (`recjson`), as it was sent
    before its columns were parameters of their own: measuring only."""
    sql, params = SETTLE(settlements)
    moves, columns = 6, len(st.CALL_FIELDS)
    record = st._encode(_record_object(settlements[0].values))
    return sql, [*params[:moves], record, *params[moves + columns :]]


_COLUMNS = [str(f.column) for f in st.CALL_FIELDS]


def _record_object(values: dict) -> dict:
    """A call record as one JSON object by column name, as the records were sent before they were
    rows of their columns' values."""
    record = dict(zip(_COLUMNS, st._record_row(values), strict=True))
    record["group_ids"] = list(values.get("group_ids", ()))
    return record


def object_batch_statement(settlements: list) -> tuple:
    """The batch statement with its records as JSON objects read by `jsonb_populate_record`
    (`batchobj`), as it was sent before its records were rows of values: measuring only."""
    sql, params = st.settle_batch_statement(settlements)
    rows = f"SELECT {st._RECORD_ELEMENTS} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(doc_, n_)"
    objects = rows.replace(st._RECORD_ELEMENTS, st._CALL_COLUMNS) + (
        f" CROSS JOIN LATERAL jsonb_populate_record(NULL::{st.CALL_TABLE}, e.doc_) AS p"
    )
    if rows not in sql:
        raise SystemExit("batchobj: the batch statement changed")
    records = st._encode([_record_object(s.values) for s in settlements])
    return sql.replace(rows, objects), [*params[:3], records, *params[4:]]  # after the moves and their number


_form: list = [""]


_keyed: list = []  # `keyed`: (API key id, price version) the records carry, else empty
_keys: dict = {}  # allocation id -> (API key id, price version), made on first use


def keys_for(allocation) -> tuple:
    """An API key of the allocation's member and a price version of its model (real rows)."""
    found = _keys.get(allocation.pk)
    if found is None:
        from allocations.models import ApiKey
        from quota.models import PriceVersion

        key = ApiKey.objects.create(
            member_id=allocation.member_id, name="bench", prefix="sk-gw-bench", key_hash=uuid.uuid4().hex * 2
        )
        price = PriceVersion.objects.create(
            model_id=allocation.model_id,
            effective_from=timezone.now(),
            input_per_1m=Decimal(1),
            output_per_1m=Decimal(2),
        )
        found = _keys[allocation.pk] = (key.pk, price)
    return found


_guarded: list = []  # the auth generation the admission is guarded on (a `gen` part), or empty


def use(target: str) -> None:
    member, *parts = target.split(":")
    _guarded[:] = [_generation[0]] if "gen" in parts else []
    _context[:] = [True] if "ctx" in parts else []
    _keyed[:] = [True] if "keyed" in parts else []
    parts = [p for p in parts if p not in ("gen", "ctx", "keyed")]
    if member == "floor":
        return
    group_hold.use(member)
    one = member == "none"
    st._SETTLE_ONE_SQL = one_without(parts if one else [])  # type: ignore[misc]
    st._ADMIT_SQL = admit_without(parts if one else [])  # type: ignore[misc]
    st._admit_sql.cache_clear()
    loop.settle_statement = st.settle_batch_statement if one and "batch" in parts else SETTLE  # type: ignore[attr-defined]
    if one and "batchobj" in parts:
        loop.settle_statement = object_batch_statement  # type: ignore[attr-defined]
    _form[0] = "recjson" if "recjson" in parts else ""
    if _form[0]:
        loop.settle_statement = json_statement  # type: ignore[attr-defined]
    st._ADMIT_ONE_GROUP_SQL, st._SETTLE_GROUPS_SQL = without([] if one else parts)  # type: ignore[misc]
    st._settle_sql.cache_clear()


_generation: list = []  # the current auth generation, read once


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def one_call(world: tuple, request_id: str, pid: int) -> tuple[float, float]:
    """(admission, settlement): µs of the backend's CPU."""
    if world is None:
        return await floor_call(pid)
    allocation, groups = world
    now = timezone.now()
    context = None
    if _context:
        identity = {"request_id": request_id, "endpoint": "chat.completions", "started_at": now, "is_stream": False,
                    "api_key_id": str(uuid.uuid4()), "member_id": str(allocation.member_id),
                    "allocation_id": str(allocation.pk), "model_id": str(allocation.model_id),
                    "deployment_id": None, "attempts": 0}  # fmt: skip
        context = ledger.lost_context(record=identity, usage=ESTIMATE, price=None)
    before = cpu_ns(pid)
    admission = await ledger.admit_async(
        allocation_id=str(allocation.pk), token_cap=None, cost_cap=None, est_tokens=100,
        est_cost=Decimal("0.0001"), request_id=request_id, now=now, groups=groups,
        generation=_guarded[0] if _guarded else None, context=context,
    )  # fmt: skip
    admitted = cpu_ns(pid)
    assert admission is not None, "a warm admission missed"
    record = {"request_id": request_id, "allocation_id": allocation.pk, "member_id": allocation.member_id,
              "model_id": allocation.model_id, "endpoint": "chat.completions", "started_at": now,
              "outcome": "success", "status_code": 200}  # fmt: skip
    price = None
    if _keyed:
        record["api_key_id"], price = keys_for(allocation)
    await loop.settle(
        admission=admission, record=record, usage=Usage(input_tokens=80, output_tokens=20), price=price, now=now
    )
    return (admitted - before) / 1000, (cpu_ns(pid) - admitted) / 1000


async def run(args: argparse.Namespace) -> dict:
    targets = args.targets.split(",")
    members = sorted({t.split(":")[0] for t in targets} - {"floor"})
    seeded: dict = {**group_hold.seed(timezone.now().strftime("%H%M%S%f"), members), "floor": None}
    group_hold.warm(w for m, w in seeded.items() if m != "floor")
    _generation[:] = [auth_generation()]
    async with loop.pool().connection() as conn:  # one call at a time: the pool's one connection
        cursor = conn.cursor()
        await cursor.execute("SELECT pg_backend_pid()")
        pid = (await cursor.fetchone())[0]  # type: ignore[index]
        for sql in FLOOR_SETUP:
            await cursor.execute(sql)
    samples: dict = {t: ([], []) for t in targets}
    for n in range(args.calls):
        for target in targets if n % 2 == 0 else targets[::-1]:
            use(target)
            admit, settle = await one_call(seeded[target.split(":")[0]], f"sc{n}-{target}", pid)
            samples[target][0].append(admit)
            samples[target][1].append(settle)
    use("group")
    await loop.pool_close()
    return samples


def _trimmed(values: list[float]) -> float:
    return statistics.mean(sorted(values)[: max(1, int(len(values) * 0.95))])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="none,group")
    ap.add_argument("--calls", type=int, default=600)
    args = ap.parse_args()
    samples = asyncio.run(run(args))
    out = Path(__file__).resolve().parent / "results" / "raw" / f"statement_cpu-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for target, (admit, settle) in samples.items():
        row = {"target": target, "case": "postgres_cpu per statement, c = 1", "concurrency": 1, "calls": args.calls,
               "admission_us_median": round(statistics.median(admit)), "admission_us_trimmed": round(_trimmed(admit)),
               "settlement_us_median": round(statistics.median(settle)),
               "settlement_us_trimmed": round(_trimmed(settle)),
               "call_us_median": round(statistics.median([a + s for a, s in zip(admit, settle, strict=True)])),
               "loadavg1": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
