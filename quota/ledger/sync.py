"""The ledger's synchronous steps, on Django's connection: admission (reservation), settlement
(call record + counters + release), and the smaller moves of a reservation.

Each step is one short transaction with conditional UPDATEs, so limits hold across any number of
processes sharing PostgreSQL; nothing here is ever called while an upstream call is open. Each
step is one statement of ledger.statements on a prepared cursor; a settlement without a
reservation (a refusal after admission, a call of no allocation) writes its rows one by one in
one transaction.

Plain SQL rather than the ORM for those rows too: they run on every call that takes that path, and
compiling the ORM's queries costs several times the database round trip.
"""

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from decimal import Decimal
from typing import Any, Self

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper
from django.db.models import F, Model
from django.utils import timezone

from allocations.models import Allocation
from lib.bounded import BoundedCache

from .. import rollups
from ..billing import caps
from ..billing.bill import Bill
from ..exceptions import CostQuotaExceeded, QuotaBusy, QuotaExceeded
from ..models import CallRecord, PriceVersion, Reservation, UsageCounter
from ..periods import period_start_date
from ..pricing import ZERO, Usage
from . import groups as group_ledger
from .statements import (
    COUNTER_TABLE,
    Admission,
    Settlement,
    admit_statement,
    reservation_row,
    settle_statement,
    settle_values,
)

# (allocation id, period start) -> counter id. Counters are never deleted while their allocation
# lives; a stale id (e.g. a test database flushed) just misses the fast path and is looked up again.
_counter_ids: BoundedCache = BoundedCache(100_000)


class _PreparedCursor(ServerBindingCursor):
    """psycopg's server-side binding cursor, preparing every statement it runs (once per connection:
    psycopg keeps the prepared statements by query text and parameter types), unless
    GATEWAY_PGBOUNCER says the server connection may change between transactions."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Self:
        # psycopg's cursor (the stubs do not follow Django's PostgreSQL cursors down to it)
        return super().execute(query, params, prepare=not settings.GATEWAY_PGBOUNCER, binary=binary)  # type: ignore[misc]


def _prepared_cursor() -> CursorWrapper:
    """PostgreSQL: the cursor of the two statements every call runs (admission, settlement).

    Django's default cursor binds client-side: psycopg quotes each of the ~30 parameters into the
    SQL text in Python (~8 % of the gateway's CPU per call, measured) and the server parses and
    plans the statement every time. Here the values travel apart and the plan is reused. The rest of
    the project keeps Django's cursor. Wrapped by Django all the same (error translation, and the
    query log the tests count)."""
    connection.ensure_connection()
    return connection._prepare_cursor(_PreparedCursor(connection.connection))  # type: ignore[attr-defined,call-arg]


def counter_for(*, allocation_id: uuid.UUID | str, period_start: dt.date) -> UsageCounter:
    UsageCounter.objects.bulk_create(
        [UsageCounter(allocation_id=allocation_id, period_start=period_start)], ignore_conflicts=True
    )
    return UsageCounter.objects.get(allocation_id=allocation_id, period_start=period_start)


def _cap_error(
    *, counter: UsageCounter, token_cap: int | None, cost_cap: Decimal | None, priced: bool
) -> Exception | None:
    """A cap the used amount alone has reached (403); headroom held by calls in flight is 429."""
    hit = caps.caps_hit(
        tokens_used=counter.tokens_used,
        token_cap=token_cap,
        cost_used=counter.cost_used,
        cost_cap=cost_cap,
        priced=priced,
    )
    if hit == caps.TOKENS:
        return QuotaExceeded(f"monthly token quota reached: {counter.tokens_used} / {token_cap} tokens")
    if hit == caps.COST:
        return CostQuotaExceeded(
            f"monthly cost cap reached: ${counter.cost_used.normalize():f} / ${cost_cap.normalize():f}"  # type: ignore[union-attr]
        )
    return None


def _hold(counter_id: int, row: dict, caps: dict) -> tuple[int, ...] | None:
    """The guarded reservation on `counter_id` (and the capped groups' counters) and its row: the
    group counter ids held, or None when a cap's guard did not match (or the statement was undone
    whole, or its cached counter id is stale: group_ledger.admission_missed). Its own savepoint
    inside a transaction, so that an undone statement leaves the caller's transaction usable."""
    try:
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), _prepared_cursor() as cursor:
            cursor.execute(*admit_statement(counter_id=counter_id, reservation=row, **caps))
            if cursor.rowcount <= 0:
                return None
            if not cursor.description:
                return ()
            held = cursor.fetchone()[0]
    except DatabaseError as error:
        if group_ledger.admission_missed(error):
            return None
        raise
    return None if held is None else tuple(held)


def admit(
    *,
    allocation_id: uuid.UUID | str,
    token_cap: int | None,
    cost_cap: Decimal | None,
    est_tokens: int,
    est_cost: Decimal | None,
    request_id: str,
    now: dt.datetime,
    ttl_s: float | None = None,
    context: dict | None = None,
    reservation_id: uuid.UUID | None = None,
    groups: Sequence[group_ledger.Budget] = (),
) -> Admission:
    """Checks both caps and holds a reservation, in one transaction; with the member's `groups`
    (allocations.access.GroupBudget), on the capped ones too (quota.ledger.groups).

    Admitted only while used + reserved < cap (SPEC 5). `est_cost=None` means the model is unpriced:
    such calls are held only by a cap of exactly 0. Only when the guarded write on the cached
    counter matches nothing is the counter read, to tell "cap reached" (403) from "headroom held
    in flight" (429). A caller that may retry names the reservation (`reservation_id`), so that
    `reservation_admission` can tell whether an attempt committed."""
    priced = est_cost is not None
    est_cost = est_cost or ZERO
    key = (str(allocation_id), period_start_date(now))
    cached_counter_id = _counter_ids.get(key)
    row = reservation_row(
        request_id=request_id,
        tokens=est_tokens,
        cost=est_cost,
        now=now,
        ttl_s=ttl_s,
        context=context,
        reservation_id=reservation_id,
    )
    caps = {
        "allocation_id": allocation_id,
        "token_cap": token_cap,
        "cost_cap": cost_cap,
        "priced": priced,
        "groups": tuple(groups),
        "period": key[1],
    }
    counted = tuple(g.id for g in groups)
    if cached_counter_id is not None:
        held = _hold(cached_counter_id, row, caps)
        if held is not None:
            return Admission(row["id"], cached_counter_id, est_tokens, est_cost, counted, held)
    group_caps = group_ledger.capped(groups, priced=priced)
    with transaction.atomic():
        counter = counter_for(allocation_id=allocation_id, period_start=key[1])
        _counter_ids[key] = counter.pk
        group_ledger.counters_ensure(group_ids=[g.id for g, _, _ in group_caps], period_start=key[1])
        error = _cap_error(counter=counter, token_cap=token_cap, cost_cap=cost_cap, priced=priced)
        group_tokens, group_cost = group_ledger.cap_errors(held=group_caps, period_start=key[1])
        # The contract's order: the token quotas (the allocation's, its groups'), then the cost caps.
        for found in (error if isinstance(error, QuotaExceeded) else None, group_tokens, error, group_cost):
            if found is not None:
                raise found
        held = _hold(counter.pk, row, caps)
        if held is None:
            raise QuotaBusy("the remaining quota is held by calls in flight; retry shortly")
    return Admission(row["id"], counter.pk, est_tokens, est_cost, counted, held)


def reservation_admission(*, reservation_id: uuid.UUID) -> Admission | None:
    """The admission an earlier attempt made under this reservation id, if it committed (an attempt
    whose connection failed cannot tell; its retry asks here before admitting again)."""
    row = (
        Reservation.objects.filter(pk=reservation_id)
        .values("counter_id", "tokens", "cost", "group_ids", "group_counter_ids")
        .first()
    )
    if row is None:
        return None
    return Admission(
        reservation_id,
        row["counter_id"],
        row["tokens"],
        row["cost"],
        tuple(str(g) for g in row["group_ids"]),
        tuple(row["group_counter_ids"]),
    )


def counter_id_cached(*, allocation_id: uuid.UUID | str, now: dt.datetime) -> int | None:
    """The counter id admit last used for this allocation and period, if any (no query)."""
    return _counter_ids.get((str(allocation_id), period_start_date(now)))


def adjust(
    *,
    admission: Admission,
    tokens: int,
    cost: Decimal,
    context: dict | None = None,
    expires_at: dt.datetime | None = None,
) -> Admission:
    """Moves a live reservation to new totals (realtime sessions grow theirs as usage accrues).

    `context` replaces what the sweeper would bill if the holder died; `expires_at` extends the lease."""
    extra = {k: v for k, v in (("context", context), ("expires_at", expires_at)) if v is not None}
    with transaction.atomic():
        moved = Reservation.objects.filter(pk=admission.reservation_id).update(tokens=tokens, cost=cost, **extra)
        if moved:
            group_ledger.reserved_move(
                counter_ids=admission.held, tokens=tokens - admission.tokens, cost=cost - admission.cost
            )
            UsageCounter.objects.filter(pk=admission.counter_id).update(
                tokens_reserved=F("tokens_reserved") + (tokens - admission.tokens),
                cost_reserved=F("cost_reserved") + (cost - admission.cost),
            )
    return dataclasses.replace(admission, tokens=tokens, cost=cost)


def release(*, admission: Admission | None) -> None:
    """Releases a reservation without settling a call (a call refused after admission)."""
    if admission is None:
        return
    with transaction.atomic() if admission.held else nullcontext():
        if not _reservation_delete(admission):
            return
        group_ledger.reserved_move(counter_ids=admission.held, tokens=-admission.tokens, cost=-admission.cost)
        UsageCounter.objects.filter(pk=admission.counter_id).update(
            tokens_reserved=F("tokens_reserved") - admission.tokens,
            cost_reserved=F("cost_reserved") - admission.cost,
        )


def settle(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: dt.datetime | None = None,
    billed: Bill | None = None,
) -> CallRecord | None:
    """Writes the call record, moves the usage into the counters and releases the reservation,
    all in one transaction. `record` holds the CallRecord's identifying fields. A call admitted
    with a reservation settles only while that reservation exists: None (nothing written) when it
    was settled already, e.g. by the sweeper after its process was thought lost. `billed`: the
    call's bill when its caller made it (statements.settle_values)."""
    groups = admission.groups if admission is not None else ()
    values, cost = settle_values(
        record=record, usage=usage, price=price, now=now or timezone.now(), groups=groups, billed=billed
    )
    row = CallRecord(**values)
    if admission is not None and row.allocation_id:
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), _prepared_cursor() as cursor:
            cursor.execute(*settle_statement([Settlement(values, admission, usage.total_tokens, cost or ZERO)]))
            written = cursor.fetchone()
        if written is None:
            return None
        row.pk = written[1]
        row._state.adding, row._state.db = False, connection.alias
        return row
    with transaction.atomic():
        # Deleting the reservation row is what makes its settlement happen exactly once.
        released = admission is not None and _reservation_delete(admission)
        if admission is not None and not released:
            return None
        if admission is not None:  # a reservation without an allocation's record: held groups released
            group_ledger.reserved_move(counter_ids=admission.held, tokens=-admission.tokens, cost=-admission.cost)
        _insert(row, rollup=True)
        if row.allocation_id and (usage.has_tokens or cost or admission is not None):
            counter_id = (
                admission.counter_id
                if admission is not None
                else counter_for(allocation_id=row.allocation_id, period_start=period_start_date(row.started_at)).pk
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


def record_reject(*, record: dict, now: dt.datetime | None = None) -> CallRecord:
    """A rejected call: recorded (with its daily rollup), carries no usage, touches no counter."""
    now = now or timezone.now()
    row = CallRecord(**{**record, "finished_at": record.get("finished_at") or now})
    _insert(row, rollup=True)
    return row


def _counter_add(counter_id: int, *, tokens: int, cost: Decimal, calls: int, release: Admission | None) -> None:
    """Moves usage into a counter and, in the same UPDATE, takes a released reservation out."""
    sql = f"UPDATE {COUNTER_TABLE} SET tokens_used = tokens_used + %s, cost_used = cost_used + %s, calls = calls + %s"  # noqa: S608
    params: list = [tokens, cost, calls]
    if release is not None:
        sql += ", tokens_reserved = tokens_reserved - %s, cost_reserved = cost_reserved - %s"
        params += [release.tokens, release.cost]
    with connection.cursor() as cursor:
        cursor.execute(sql + " WHERE id = %s", [*params, counter_id])


def _reservation_delete(admission: Admission) -> bool:
    """Deleting the row is what makes a release happen exactly once: the sweeper may have taken it."""
    return Reservation.objects.filter(pk=admission.reservation_id).delete()[0] > 0


_insert_plans: dict = {}  # one entry per model: bounded by the models that use _insert()


def _insert_parts(obj: Model) -> tuple[tuple[str, ...], tuple[str, ...], list]:
    """(quoted columns, placeholders, parameters) of an INSERT of `obj`: each field's pre_save and
    database preparation, as Model.save(force_insert=True) does. The auto primary key is left out.
    The field list and quoted names are built once per model; the fields get the real connection,
    not the `connection` proxy (a context-local lookup on every attribute access they make)."""
    conn = connections[DEFAULT_DB_ALIAS]
    meta = obj._meta
    plan = _insert_plans.get(meta.label)
    if plan is None:
        fields = tuple(f for f in meta.concrete_fields if f is not meta.auto_field)
        columns = tuple(conn.ops.quote_name(f.column) for f in fields)  # type: ignore[arg-type]  # concrete: a column
        plan = _insert_plans[meta.label] = (fields, columns, ("%s",) * len(fields))
    fields, columns, values = plan
    return columns, values, [f.get_db_prep_save(f.pre_save(obj, True), conn) for f in fields]


# A record written without a reservation (a refusal, a call of no admission) locks its allocation's
# row as a foreign key's check would, in its own statement: a deletion of the allocation waits for
# it and then finds the record, or deleted the row first and the statement fails (quota 0023; a
# record settled with a reservation is ordered by that reservation's row instead).
_ALLOCATION_HELD = f"a AS (SELECT 1 FROM {Allocation._meta.db_table} WHERE id = %s FOR KEY SHARE)"  # noqa: S608
_HELD_CHECK = " WHERE quota_record_allocation_held(%s, (SELECT count(*) FROM a))"


def _insert(obj: Model, *, rollup: bool = False) -> None:
    """INSERT of one new row without the ORM's per-call query compilation. Same values as
    Model.save(force_insert=True); the auto primary key comes back with RETURNING. `rollup`
    (call records): the record's rollups are upserted by the same statement, which holds the
    record's allocation (`_ALLOCATION_HELD`)."""
    meta = obj._meta
    auto = meta.auto_field
    columns, values, params = _insert_parts(obj)
    sql = f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({', '.join(columns)}) VALUES ({', '.join(values)})"  # noqa: S608
    if rollup:
        returning = ", ".join(rollups.SOURCE_COLUMNS)
        allocation_id = obj.allocation_id  # type: ignore[attr-defined]  # a call record
        upserts = rollups.upserts_sql("i")
        sql = (
            f"WITH {_ALLOCATION_HELD}, i AS ({sql} RETURNING id, {returning}), {upserts} SELECT id FROM i{_HELD_CHECK}"  # noqa: S608
        )
        params = [allocation_id, *params, *rollups.upserts_params(), allocation_id]
    elif auto is not None:
        sql += f" RETURNING {connection.ops.quote_name(auto.column)}"  # type: ignore[arg-type]  # concrete: a column
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if auto is not None:
            setattr(obj, auto.attname, cursor.fetchone()[0])
    obj._state.adding = False
    obj._state.db = connection.alias
