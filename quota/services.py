"""Writes of the quota side: admission (reservations), settlement (call record + counters), prices,
the reservation sweeper and reconciliation.

Each accounting step is one short transaction with conditional UPDATEs, so limits hold across any
number of processes sharing PostgreSQL; nothing here is ever called while an upstream call is open.
"""

import datetime as dt
import json
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.models import F, Model, Sum
from django.utils import timezone
from psycopg.types.json import Jsonb

from allocations.audit import audit_record
from allocations.cache import bump_auth_generation
from allocations.exceptions import BadRequest
from allocations.models import Allocation

from .exceptions import CostQuotaExceeded, QuotaBusy, QuotaExceeded
from .models import CallRecord, PriceUnit, PriceVersion, Reservation, UsageCounter
from .periods import period_bounds, period_start_date
from .pricing import ZERO, Usage, cost_for


@dataclass(frozen=True)
class Admission:
    reservation_id: uuid.UUID
    counter_id: int
    tokens: int
    cost: Decimal


def _counter_for(*, allocation_id, period_start) -> UsageCounter:
    UsageCounter.objects.bulk_create(
        [UsageCounter(allocation_id=allocation_id, period_start=period_start)], ignore_conflicts=True
    )
    return UsageCounter.objects.get(allocation_id=allocation_id, period_start=period_start)


# (allocation id, period start) -> counter id. Counters are never deleted while their allocation
# lives; a stale id (e.g. a test database flushed) just misses the fast path and is looked up again.
_counter_ids: dict[tuple[str, dt.date], int] = {}
_COUNTER_TABLE = UsageCounter._meta.db_table
_RESERVATION_TABLE = Reservation._meta.db_table
_CALL_TABLE = CallRecord._meta.db_table


class _PreparedCursor(ServerBindingCursor):
    """psycopg's server-side binding cursor, preparing every statement it runs (once per connection:
    psycopg keeps the prepared statements by query text and parameter types)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _prepared_cursor():
    """PostgreSQL: the cursor of the two statements every proxied call runs (admission, settlement).

    Django's default cursor binds client-side: psycopg quotes each of the ~30 parameters into the
    SQL text in Python (~8 % of the gateway's CPU per call, measured) and the server parses and
    plans the statement every time. Here the values travel apart and the plan is reused. The rest of
    the project keeps Django's cursor. Wrapped by Django all the same (error translation, and the
    query log the tests count)."""
    connection.ensure_connection()
    return connection._prepare_cursor(_PreparedCursor(connection.connection))


def _guard(*, token_cap, cost_cap, priced: bool) -> tuple[str, list]:
    """The admission condition (used + reserved < cap for each cap that applies) as SQL."""
    sql, params = "", []
    if token_cap is not None:
        sql += " AND tokens_used < %s - tokens_reserved"
        params.append(token_cap)
    if cost_cap is not None and (priced or cost_cap == 0):
        sql += " AND cost_used < %s - cost_reserved"
        params.append(cost_cap)
    return sql, params


def _reserve(counter_id, *, allocation_id, token_cap, cost_cap, priced: bool, tokens: int, cost: Decimal) -> bool:
    """Adds to the reservations only while used + reserved < cap, in one conditional UPDATE.
    Plain SQL: this and _counter_add run on every proxied call, and building them through the ORM
    costs several times the database round trip. The allocation is checked too, so a stale cached
    counter id can never reserve against another allocation's counter."""
    guard, guard_params = _guard(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    sql = (
        f"UPDATE {_COUNTER_TABLE} SET tokens_reserved = tokens_reserved + %s, cost_reserved = cost_reserved + %s"  # noqa: S608 (constant table name)
        f" WHERE id = %s AND allocation_id = %s{guard}"
    )
    # Raw SQL gets no field conversion: SQLite stores UUIDs as 32 hex digits without dashes.
    allocation_db = Allocation._meta.pk.get_db_prep_value(uuid.UUID(str(allocation_id)), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [tokens, cost, counter_id, allocation_db, *guard_params])
        return cursor.rowcount > 0


# --- the two statements of every proxied call on PostgreSQL -------------------------------------
# Built here once and run either by the accounting threads (below) or from the event loop
# (quota.aio). Column lists are explicit and the values plain Python: psycopg adapts them and
# PostgreSQL types each parameter from its target column, so no Model instance or field
# preparation is needed per call.

_ADMIT_SQL = (
    f"WITH c AS (UPDATE {_COUNTER_TABLE} SET tokens_reserved = tokens_reserved + %s,"  # noqa: S608 (constant names)
    " cost_reserved = cost_reserved + %s WHERE id = %s AND allocation_id = %s{guard} RETURNING id)"
    f" INSERT INTO {_RESERVATION_TABLE} (id, counter_id, request_id, tokens, cost, created_at, expires_at, context)"
    " SELECT %s, c.id, %s, %s, %s, %s, %s, {context} FROM c"
)
_CALL_FIELDS = tuple(f for f in CallRecord._meta.concrete_fields if f is not CallRecord._meta.auto_field)
_CALL_COLUMNS = ", ".join(str(f.column) for f in _CALL_FIELDS)
_SETTLE_SQL = (
    "WITH s AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS s(reservation uuid, counter bigint,"  # noqa: S608 (constant names)
    " tokens bigint, cost numeric, held_tokens bigint, held_cost numeric) LIMIT {calls}),"
    f" r AS (DELETE FROM {_RESERVATION_TABLE} WHERE id IN (SELECT reservation FROM s) RETURNING id),"
    " t AS (SELECT s.counter, sum(s.tokens) AS tokens, sum(s.cost) AS cost, count(*) AS calls,"
    " sum(CASE WHEN r.id IS NULL THEN 0 ELSE s.held_tokens END) AS held_tokens,"
    " sum(CASE WHEN r.id IS NULL THEN 0 ELSE s.held_cost END) AS held_cost"
    " FROM s LEFT JOIN r ON r.id = s.reservation GROUP BY s.counter),"
    f" u AS (UPDATE {_COUNTER_TABLE} c SET tokens_used = c.tokens_used + t.tokens, cost_used = c.cost_used + t.cost,"
    " calls = c.calls + t.calls, tokens_reserved = c.tokens_reserved - t.held_tokens,"
    " cost_reserved = c.cost_reserved - t.held_cost FROM t WHERE c.id = t.counter)"
    f" INSERT INTO {_CALL_TABLE} ({_CALL_COLUMNS})"
    f" SELECT {_CALL_COLUMNS} FROM jsonb_populate_recordset(NULL::{_CALL_TABLE}, %s::jsonb) RETURNING id"
)


def admit_statement(
    *, allocation_id, counter_id: int, token_cap, cost_cap, priced: bool, reservation: dict
) -> tuple[str, list]:
    """The admission in ONE statement (data-modifying CTE): the guarded UPDATE of the counter
    (used + reserved < cap for each cap that applies; the allocation is checked too, so a stale
    cached counter id never reserves against another allocation's counter), then the INSERT of the
    reservation row only if that UPDATE matched. One statement is atomic on its own: no BEGIN/COMMIT
    round trips. `reservation` holds id, request_id, tokens, cost, created_at, expires_at, context."""
    guard, guard_params = _guard(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    r = reservation
    # An empty context (every HTTP call) is a literal: one parameter fewer to adapt per call.
    context, context_params = ("'{}'", []) if not r["context"] else ("%s", [Jsonb(r["context"])])
    return _ADMIT_SQL.format(guard=guard, context=context), [
        r["tokens"],
        r["cost"],
        counter_id,
        allocation_id,
        *guard_params,
        r["id"],
        r["request_id"],
        r["tokens"],
        r["cost"],
        r["created_at"],
        r["expires_at"],
        *context_params,
    ]


def settle_values(*, record: dict, usage: Usage, price, now: dt.datetime) -> tuple[dict, Decimal | None]:
    """The call record's field values (by field name) and its cost."""
    cost = cost_for(price, usage)
    values = {
        **record,
        "finished_at": record.get("finished_at") or now,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "audio_input_tokens": usage.audio_input_tokens,
        "audio_output_tokens": usage.audio_output_tokens,
        "quantity": usage.quantity,
        "unit": usage.unit,
        "estimated": usage.estimated,
        "cost_usd": cost,
        "priced": cost is not None,
        "price_version": price if cost is not None else None,
    }
    return values, cost


def _column_value(field, values: dict):
    value = values[field.attname] if field.attname in values else values.get(field.name, _MISSING)
    if value is _MISSING:
        return field.get_default()
    return value.pk if isinstance(value, Model) else value


_MISSING = object()


@dataclass(frozen=True)
class Settlement:
    """One call's settlement: its record's field values (settle_values), what it used and its
    admission's reservation."""

    values: dict
    admission: "Admission"
    tokens: int
    cost: Decimal


def _json_value(value):
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)  # a JSON string: PostgreSQL reads it as the column's type, digits intact
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON form here")


def settle_statement(settlements: "list[Settlement]") -> tuple[str, list]:
    """call_settle's three writes for any number of calls in ONE statement (data-modifying CTEs):
    DELETE the reservations (what makes each release happen exactly once), move the usage into
    the counters and take out of them only the reservations that DELETE took, INSERT the call
    records (RETURNING their ids, in order). Two parameters whatever the number of calls or
    fields: the settlements and the records as JSON arrays, which PostgreSQL expands itself
    (psycopg adapting ~30 parameters per call in Python cost more than the statement's round trip)."""
    moves = [
        {
            "reservation": s.admission.reservation_id,
            "counter": s.admission.counter_id,
            "tokens": s.tokens,
            "cost": s.cost,
            "held_tokens": s.admission.tokens,
            "held_cost": s.admission.cost,
        }
        for s in settlements
    ]
    records = [{f.column: _column_value(f, s.values) for f in _CALL_FIELDS} for s in settlements]
    encode = json.JSONEncoder(default=_json_value, separators=(",", ":")).encode
    # The LIMIT (the number of calls, as a literal) is the planner's row estimate: without it a
    # JSON function counts as 100 rows, and the reservations and counters would be scanned whole.
    return _SETTLE_SQL.format(calls=len(moves)), [encode(moves), encode(records)]


def _reserve_and_insert(**statement) -> bool:
    with _prepared_cursor() as cursor:
        cursor.execute(*admit_statement(**statement))
        return cursor.rowcount > 0


def _counter_add(counter_id, *, tokens: int, cost: Decimal, calls: int, release: "Admission | None") -> None:
    """Moves usage into a counter and, in the same UPDATE, takes a released reservation out."""
    sql = f"UPDATE {_COUNTER_TABLE} SET tokens_used = tokens_used + %s, cost_used = cost_used + %s, calls = calls + %s"  # noqa: S608
    params: list = [tokens, cost, calls]
    if release is not None:
        sql += ", tokens_reserved = tokens_reserved - %s, cost_reserved = cost_reserved - %s"
        params += [release.tokens, release.cost]
    with connection.cursor() as cursor:
        cursor.execute(sql + " WHERE id = %s", [*params, counter_id])


_insert_plans: dict = {}


def _insert_parts(obj) -> tuple[tuple[str, ...], tuple[str, ...], list]:
    """(quoted columns, placeholders, parameters) of an INSERT of `obj`: each field's pre_save and
    database preparation, as Model.save(force_insert=True) does. The auto primary key is left out.
    The field list and quoted names are built once per model; the fields get the real connection,
    not the `connection` proxy (a context-local lookup on every attribute access they make)."""
    conn = connections[DEFAULT_DB_ALIAS]
    meta = obj._meta
    plan = _insert_plans.get((meta.label, conn.vendor))
    if plan is None:
        fields = tuple(f for f in meta.concrete_fields if f is not meta.auto_field)
        columns = tuple(conn.ops.quote_name(f.column) for f in fields)
        plan = _insert_plans[(meta.label, conn.vendor)] = (fields, columns, ("%s",) * len(fields))
    fields, columns, values = plan
    return columns, values, [f.get_db_prep_save(f.pre_save(obj, True), conn) for f in fields]


def _insert(obj) -> None:
    """INSERT of one new row without the ORM's per-call query compilation (the two rows every
    proxied call writes). Same values as Model.save(force_insert=True); the auto primary key comes
    back with RETURNING."""
    meta = obj._meta
    auto = meta.auto_field
    columns, values, params = _insert_parts(obj)
    sql = f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({', '.join(columns)}) VALUES ({', '.join(values)})"  # noqa: S608
    returning = auto is not None and connection.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {connection.ops.quote_name(auto.column)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if auto is not None:
            setattr(obj, auto.attname, cursor.fetchone()[0] if returning else cursor.lastrowid)
    obj._state.adding = False
    obj._state.db = connection.alias


def _settle_one_statement(values: dict, admission: "Admission", *, tokens: int, cost: Decimal) -> int:
    with _prepared_cursor() as cursor:
        cursor.execute(*settle_statement([Settlement(values, admission, tokens, cost)]))
        return cursor.fetchone()[0]


def _cap_error(*, counter: UsageCounter, token_cap, cost_cap, priced: bool) -> Exception | None:
    if token_cap is not None and counter.tokens_used >= token_cap:
        return QuotaExceeded(f"monthly token quota reached: {counter.tokens_used} / {token_cap} tokens")
    if cost_cap is not None and (cost_cap == 0 or priced) and counter.cost_used >= cost_cap:
        return CostQuotaExceeded(
            f"monthly cost cap reached: ${counter.cost_used.normalize():f} / ${cost_cap.normalize():f}"
        )
    return None


def reservation_row(*, request_id: str, tokens: int, cost: Decimal, now: dt.datetime, ttl_s=None, context=None) -> dict:
    """A new reservation's values: it expires after the upstream timeout (+ 60 s) unless told."""
    ttl = ttl_s if ttl_s is not None else settings.GATEWAY_UPSTREAM_TIMEOUT_S + 60
    return {
        "id": uuid.uuid4(),
        "request_id": request_id,
        "tokens": tokens,
        "cost": cost,
        "created_at": now,
        "expires_at": now + dt.timedelta(seconds=ttl),
        "context": context or {},
    }


def call_admit(
    *,
    allocation_id,
    token_cap: int | None,
    cost_cap: Decimal | None,
    est_tokens: int,
    est_cost: Decimal | None,
    request_id: str,
    now: dt.datetime,
    ttl_s: float | None = None,
    context: dict | None = None,
) -> Admission:
    """Checks both caps and holds a reservation, in one transaction.

    Admitted only while used + reserved < cap (SPEC 5). `est_cost=None` means the model is unpriced:
    such calls are held only by a cap of exactly 0.
    """
    priced = est_cost is not None
    est_cost = est_cost or ZERO
    period = period_start_date(now)
    key = (str(allocation_id), period)
    cached_counter_id = _counter_ids.get(key)
    row = reservation_row(
        request_id=request_id, tokens=est_tokens, cost=est_cost, now=now, ttl_s=ttl_s, context=context
    )
    caps = {"allocation_id": allocation_id, "token_cap": token_cap, "cost_cap": cost_cap, "priced": priced}
    if cached_counter_id is not None and connection.vendor == "postgresql":
        # Fast path, one round trip: guarded UPDATE of the cached counter + INSERT of the reservation.
        with transaction.atomic() if connection.in_atomic_block else nullcontext():  # savepoint only when nested
            if _reserve_and_insert(counter_id=cached_counter_id, reservation=row, **caps):
                return Admission(row["id"], cached_counter_id, est_tokens, est_cost)
    with transaction.atomic():
        # Other databases: one guarded UPDATE on the (cached) counter id first. Only when it (or the
        # one-statement path above) matches nothing is the counter read, to tell "cap reached" (403)
        # from "headroom held in flight" (429).
        counter_id = cached_counter_id
        if (
            counter_id is None
            or connection.vendor == "postgresql"  # there it was tried above
            or not _reserve(counter_id, tokens=est_tokens, cost=est_cost, **caps)
        ):
            counter = _counter_for(allocation_id=allocation_id, period_start=period)
            _counter_ids[key] = counter_id = counter.pk
            error = _cap_error(counter=counter, token_cap=token_cap, cost_cap=cost_cap, priced=priced)
            if error:
                raise error
            if not _reserve(counter_id, tokens=est_tokens, cost=est_cost, **caps):
                raise QuotaBusy("the allocation's remaining quota is held by calls in flight; retry shortly")
        _insert(Reservation(**row, counter_id=counter_id))
    return Admission(reservation_id=row["id"], counter_id=counter_id, tokens=est_tokens, cost=est_cost)


def reservation_adjust(
    *, admission: Admission, tokens: int, cost: Decimal, context: dict | None = None, expires_at=None
) -> Admission:
    """Moves a live reservation to new totals (realtime sessions grow theirs as usage accrues).

    `context` replaces what the sweeper would bill if the holder died; `expires_at` extends the lease."""
    extra = {k: v for k, v in (("context", context), ("expires_at", expires_at)) if v is not None}
    with transaction.atomic():
        moved = Reservation.objects.filter(pk=admission.reservation_id).update(tokens=tokens, cost=cost, **extra)
        if moved:
            UsageCounter.objects.filter(pk=admission.counter_id).update(
                tokens_reserved=F("tokens_reserved") + (tokens - admission.tokens),
                cost_reserved=F("cost_reserved") + (cost - admission.cost),
            )
    return Admission(admission.reservation_id, admission.counter_id, tokens, cost)


def reservation_release(*, admission: Admission | None) -> None:
    """Releases a reservation without settling a call (a call refused after admission)."""
    _release(admission)


def _release(admission: Admission | None) -> None:
    if admission is None:
        return
    # Deleting the row is what makes release happen exactly once: the sweeper may have taken it.
    deleted, _ = Reservation.objects.filter(pk=admission.reservation_id).delete()
    if deleted:
        UsageCounter.objects.filter(pk=admission.counter_id).update(
            tokens_reserved=F("tokens_reserved") - admission.tokens,
            cost_reserved=F("cost_reserved") - admission.cost,
        )


def price_in_force(*, model_id, at: dt.datetime) -> PriceVersion | None:
    return PriceVersion.objects.in_force(model=model_id, at=at)


_price_cache: dict = {}
_PRICE_CACHE_MAX = 10_000


def price_in_force_cached(*, model_id, at: dt.datetime, generation: int) -> PriceVersion | None:
    """price_in_force from a per-process cache keyed by the auth generation, which every price
    change bumps (price_version_add). Versions are append-only, so the newest 50 cover `at`≈now."""
    entry = _price_cache.get(model_id)
    if entry is None or entry[0] != generation:
        if len(_price_cache) > _PRICE_CACHE_MAX:
            _price_cache.clear()
        versions = list(PriceVersion.objects.filter(model=model_id).order_by("-effective_from", "-id")[:50])
        entry = _price_cache[model_id] = (generation, versions)
    return _in_force(entry[1], at)


def _in_force(versions: list[PriceVersion], at: dt.datetime) -> PriceVersion | None:
    return next((v for v in versions if v.effective_from <= at), None)  # newest first


def price_cached(*, model_id, at: dt.datetime, generation: int) -> tuple[bool, PriceVersion | None]:
    """(found, price) from price_in_force_cached's cache only, without a query (the event loop)."""
    entry = _price_cache.get(model_id)
    if entry is None or entry[0] != generation:
        return False, None
    return True, _in_force(entry[1], at)


def counter_id_cached(*, allocation_id, now: dt.datetime) -> int | None:
    """The counter id call_admit last used for this allocation and period, if any (no query)."""
    return _counter_ids.get((str(allocation_id), period_start_date(now)))


def call_settle(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: dt.datetime | None = None,
) -> CallRecord:
    """Writes the call record, moves the usage into the counters and releases the reservation,
    all in one transaction. `record` holds the CallRecord's identifying fields."""
    values, cost = settle_values(record=record, usage=usage, price=price, now=now or timezone.now())
    row = CallRecord(**values)
    carries_usage = usage.has_tokens or cost
    if admission is not None and row.allocation_id and connection.vendor == "postgresql":
        with transaction.atomic() if connection.in_atomic_block else nullcontext():  # savepoint only when nested
            row.pk = _settle_one_statement(values, admission, tokens=usage.total_tokens, cost=cost or ZERO)
        row._state.adding, row._state.db = False, connection.alias
        return row
    with transaction.atomic():
        _insert(row)
        # Deleting the reservation row is what makes its release happen exactly once.
        released = admission is not None and Reservation.objects.filter(pk=admission.reservation_id).delete()[0]
        if row.allocation_id and (carries_usage or admission is not None):
            counter_id = (
                admission.counter_id
                if admission is not None
                else _counter_for(allocation_id=row.allocation_id, period_start=period_start_date(row.started_at)).pk
            )
            _counter_add(
                counter_id,
                tokens=usage.total_tokens,
                cost=cost or ZERO,
                calls=1,
                release=admission if released else None,  # release and usage in one UPDATE of the row
            )
        elif released and admission is not None:
            _counter_add(admission.counter_id, tokens=0, cost=ZERO, calls=0, release=admission)
    return row


def call_record_reject(*, record: dict, now: dt.datetime | None = None) -> CallRecord:
    """A rejected call: recorded, carries no usage, touches no counter."""
    now = now or timezone.now()
    return CallRecord.objects.create(**record, finished_at=record.get("finished_at") or now)


# --- prices --------------------------------------------------------------------------------------

PRICE_FIELDS = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")


def _price_decimal(name: str, value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise BadRequest(f"{name} is not a number", fields={name: ["Enter a decimal number ≥ 0."]}) from None
    if isinstance(value, bool) or not amount.is_finite() or amount < 0 or amount >= Decimal("1e15"):
        raise BadRequest(f"{name} is out of range", fields={name: ["Enter a decimal number ≥ 0."]})
    return amount


def price_version_clean(*, unit: str = "", price_per_unit=None, **rates) -> tuple[str, Decimal | None, dict]:
    """Validates a price row without writing: returns (unit, price_per_unit, token rates) or raises BadRequest."""
    unknown = set(rates) - set(PRICE_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown fields: {', '.join(sorted(unknown))}", fields={n: ["Unknown field."] for n in sorted(unknown)}
        )
    clean = {name: _price_decimal(name, rates.get(name)) for name in PRICE_FIELDS}
    per_unit = _price_decimal("price_per_unit", price_per_unit)
    unit = unit or ""
    if unit and unit not in PriceUnit.values:
        raise BadRequest("unknown unit", fields={"unit": [f"One of: {', '.join(PriceUnit.values)}."]})
    if unit and (per_unit is None or any(v is not None for v in clean.values())):
        raise BadRequest(
            "a unit price needs price_per_unit and no token rates",
            fields={"price_per_unit": ["Required with unit; token rates must be empty."]},
        )
    if not unit and (per_unit is not None or all(v is None for v in clean.values())):
        raise BadRequest(
            "give token rates per 1M, or a unit with price_per_unit", fields={"unit": ["Required with price_per_unit."]}
        )
    return unit, per_unit, clean


def price_version_add(*, model, effective_from=None, unit: str = "", price_per_unit=None, actor=None, **rates):
    """Appends a price version. Either token rates per 1M or a unit price, never both."""
    unit, per_unit, clean = price_version_clean(unit=unit, price_per_unit=price_per_unit, **rates)
    with transaction.atomic():
        version = PriceVersion.objects.create(
            model=model, effective_from=effective_from or timezone.now(), unit=unit, price_per_unit=per_unit, **clean
        )
        after = {
            "model": model.slug,
            "effective_from": version.effective_from.isoformat(),
            "unit": unit,
            "price_per_unit": None if per_unit is None else str(per_unit),
            **{k: None if v is None else str(v) for k, v in clean.items()},
        }
        audit_record(actor=actor, action="price_version_added", target=version, after=after)
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return version


# --- housekeeping --------------------------------------------------------------------------------


def reservations_sweep(*, now: dt.datetime | None = None) -> int:
    """Releases reservations whose call never settled (its worker died). Safe to run concurrently."""
    now = now or timezone.now()
    released = 0
    for reservation in Reservation.objects.filter(expires_at__lt=now).only("pk")[:1000]:
        with transaction.atomic():
            row = Reservation.objects.select_for_update(skip_locked=True).filter(pk=reservation.pk).first()
            if row is None:
                continue
            admission = Admission(row.pk, row.counter_id, row.tokens, row.cost)
            if row.context.get("record"):
                # A realtime session whose worker died: bill what it had accrued, exactly once
                # (the row lock excludes the session's own settlement, which checks the row too).
                _settle_from_context(admission=admission, context=row.context, now=now)
            else:
                _release(admission)
            released += 1
    return released


def settlement_from_json(*, record: dict, usage: dict | None, price_id) -> tuple[dict, Usage, PriceVersion | None]:
    """The call_settle arguments back from their JSON form (a spooled settlement, a reservation's
    context): aware datetimes, Decimal quantity, the price version by id."""
    record = dict(record)
    for name in ("started_at", "finished_at"):
        if record.get(name):
            record[name] = dt.datetime.fromisoformat(record[name])
    fields = dict(usage or {})
    if fields.get("quantity") is not None:
        fields["quantity"] = Decimal(fields["quantity"])
    price = PriceVersion.objects.filter(pk=price_id).first() if price_id else None
    return record, Usage(**fields), price


def _settle_from_context(*, admission: Admission, context: dict, now: dt.datetime) -> CallRecord:
    record, usage, price = settlement_from_json(
        record=context["record"], usage=context.get("usage"), price_id=context.get("price_id")
    )
    record.update(outcome="gateway_error", close_reason="shutdown", error_code="worker_lost")
    return call_settle(admission=admission, record=record, usage=usage, price=price, now=now)


@dataclass(frozen=True)
class Drift:
    allocation_id: object
    period_start: dt.date
    counter_tokens: int
    record_tokens: int
    counter_cost: Decimal
    record_cost: Decimal


def usage_reconcile(*, now: dt.datetime | None = None, fix: bool = False, actor=None) -> list[Drift]:
    """Compares this period's counters with the sum of the call records; optionally rewrites them."""
    now = now or timezone.now()
    start, end = period_bounds(now)
    period = period_start_date(now)
    sums = {
        row["allocation_id"]: row
        for row in CallRecord.objects.in_period(start, end)
        .filter(allocation__isnull=False)
        .values("allocation_id")
        .annotate(tokens=Sum(F("input_tokens") + F("output_tokens")), cost=Sum("cost_usd"))
    }
    counters = {c.allocation_id: c for c in UsageCounter.objects.filter(period_start=period)}
    drifts = []
    for allocation_id in set(sums) | set(counters):
        counter = counters.get(allocation_id)
        rec = sums.get(allocation_id, {})
        rec_tokens, rec_cost = rec.get("tokens") or 0, rec.get("cost") or ZERO
        c_tokens = counter.tokens_used if counter else 0
        c_cost = counter.cost_used if counter else ZERO
        if (c_tokens, c_cost) != (rec_tokens, rec_cost):
            drifts.append(Drift(allocation_id, period, c_tokens, rec_tokens, c_cost, rec_cost))
    if fix:
        for d in drifts:
            with transaction.atomic():
                counter = _counter_for(allocation_id=d.allocation_id, period_start=period)
                UsageCounter.objects.filter(pk=counter.pk).update(tokens_used=d.record_tokens, cost_used=d.record_cost)
                audit_record(
                    actor=actor,
                    action="usage_reconciled",
                    target=counter,
                    target_type="allocation",
                    target_id=str(d.allocation_id),
                    before={"tokens": d.counter_tokens, "cost": str(d.counter_cost)},
                    after={"tokens": d.record_tokens, "cost": str(d.record_cost)},
                )
    return drifts
