"""The ledger's adapter for databases without the one-statement forms (SQLite, the laptop default),
also taken on PostgreSQL by a settlement without a reservation: the same writes as
ledger.statements as separate statements in one transaction (conditional UPDATE, INSERT, DELETE).

Plain SQL rather than the ORM: these run on every call there, and compiling the ORM's queries
costs several times the database round trip.
"""

import uuid
from decimal import Decimal

from django.db import DEFAULT_DB_ALIAS, connection, connections

from allocations.models import Allocation

from ..models import Reservation
from .statements import COUNTER_TABLE, Admission, guard


def reserve(counter_id, *, allocation_id, token_cap, cost_cap, priced: bool, tokens: int, cost: Decimal) -> bool:
    """Adds to the reservations only while used + reserved < cap, in one conditional UPDATE. The
    allocation is checked too, so a stale cached counter id can never reserve against another
    allocation's counter."""
    condition, condition_params = guard(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    sql = (
        f"UPDATE {COUNTER_TABLE} SET tokens_reserved = tokens_reserved + %s, cost_reserved = cost_reserved + %s"  # noqa: S608 (constant table name)
        f" WHERE id = %s AND allocation_id = %s{condition}"
    )
    # Raw SQL gets no field conversion: SQLite stores UUIDs as 32 hex digits without dashes.
    allocation_db = Allocation._meta.pk.get_db_prep_value(uuid.UUID(str(allocation_id)), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [tokens, cost, counter_id, allocation_db, *condition_params])
        return cursor.rowcount > 0


def counter_add(counter_id, *, tokens: int, cost: Decimal, calls: int, release: Admission | None) -> None:
    """Moves usage into a counter and, in the same UPDATE, takes a released reservation out."""
    sql = f"UPDATE {COUNTER_TABLE} SET tokens_used = tokens_used + %s, cost_used = cost_used + %s, calls = calls + %s"  # noqa: S608
    params: list = [tokens, cost, calls]
    if release is not None:
        sql += ", tokens_reserved = tokens_reserved - %s, cost_reserved = cost_reserved - %s"
        params += [release.tokens, release.cost]
    with connection.cursor() as cursor:
        cursor.execute(sql + " WHERE id = %s", [*params, counter_id])


def reservation_delete(admission: Admission) -> bool:
    """Deleting the row is what makes a release happen exactly once: the sweeper may have taken it."""
    return Reservation.objects.filter(pk=admission.reservation_id).delete()[0] > 0


_insert_plans: dict = {}  # one entry per (model, vendor): bounded by the models that use insert()


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


def insert(obj) -> None:
    """INSERT of one new row without the ORM's per-call query compilation (the two rows every
    call writes). Same values as Model.save(force_insert=True); the auto primary key comes back
    with RETURNING."""
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
