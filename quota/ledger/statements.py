"""The ledger's two statements, each written once: the admission (a guarded counter UPDATE and the
reservation INSERT) and the settlement (reservation DELETE, the counters' usage written by an upsert
on their ids, call record INSERT, the records' daily and hourly rollups upserted).

Every PostgreSQL caller runs this SQL: the accounting threads through a prepared Django cursor
(ledger.sync) and the event loop through its own async connections (ledger.loop). Column lists are
explicit and the values plain Python: psycopg adapts them and PostgreSQL types each parameter from
its target column, so no Model instance or field preparation is needed per call.
"""

import datetime as dt
import functools
import operator
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from allocations.models import Group
from lib.bounded import BoundedCache
from lib.cache import GENERATION_GUARD
from lib.conf import setting
from lib.frozen import quick_init
from lib.isotime import iso_text
from lib.jsontext import jsonb_text, text_encoder

from ..billing.bill import Bill, bill
from ..billing.caps import guard_sql as guard
from ..models import CallRecord, PriceVersion, Reservation, UsageCounter
from ..pricing import Usage
from ..rollups import SOURCE_COLUMNS, upserts_params, upserts_sql
from . import groups as group_sql

COUNTER_TABLE = UsageCounter._meta.db_table
GROUP_TABLE = Group._meta.db_table
RESERVATION_TABLE = Reservation._meta.db_table
CALL_TABLE = CallRecord._meta.db_table


# What a counter holds, for a check of the caps without an admission (the realtime gate).
COUNTER_READ = f"SELECT tokens_used, tokens_reserved, cost_used, cost_reserved FROM {COUNTER_TABLE} WHERE id = %s"  # noqa: S608 - a model table name
# The same with the period's counters of some groups (by their unique (group, period) index): the
# allocation's row first, its group id NULL.
COUNTERS_READ = (
    f"SELECT NULL::uuid, id, tokens_used, tokens_reserved, cost_used, cost_reserved FROM {COUNTER_TABLE} WHERE id = %s"  # noqa: S608 - model table names
    " UNION ALL SELECT group_id, id, tokens_used, tokens_reserved, cost_used, cost_reserved"
    f" FROM {group_sql.GROUP_COUNTER_TABLE} WHERE group_id = ANY(%s::uuid[]) AND period_start = %s"
)


@quick_init
@dataclass(frozen=True)
class Admission:
    reservation_id: uuid.UUID
    counter_id: int
    tokens: int
    cost: Decimal
    # The member's groups the call counts toward (allocations.Group ids), and the counters of the
    # capped ones that hold the same tokens and cost (quota.ledger.groups).
    groups: tuple[str, ...] = ()
    held: tuple[int, ...] = ()


@quick_init
@dataclass(frozen=True)
class Settlement:
    """One call's settlement: its record's field values (settle_values), what it used and its
    admission's reservation."""

    values: dict
    admission: Admission
    tokens: int
    cost: Decimal


def reservation_row(
    *,
    request_id: str,
    tokens: int,
    cost: Decimal,
    now: dt.datetime,
    ttl_s: float | None = None,
    context: dict | None = None,
    reservation_id: uuid.UUID | None = None,
) -> dict:
    """A new reservation's values: it expires after the upstream timeout (+ 60 s) unless told."""
    ttl = ttl_s if ttl_s is not None else setting("GATEWAY_UPSTREAM_TIMEOUT_S") + 60
    return {
        "id": reservation_id or uuid.uuid4(),
        "request_id": request_id,
        "tokens": tokens,
        "cost": cost,
        "created_at": now,
        "expires_at": now + dt.timedelta(seconds=ttl),
        "context": context or {},
    }


_ADMIT_SQL = (
    f"WITH c AS (UPDATE {COUNTER_TABLE} SET tokens_reserved = tokens_reserved + %s,"  # noqa: S608 (constant names)
    " cost_reserved = cost_reserved + %s WHERE id = %s AND allocation_id = %s{guard} RETURNING id)"
    f" INSERT INTO {RESERVATION_TABLE} (id, counter_id, request_id, tokens, cost, created_at, expires_at, context)"
    " SELECT %s, c.id, %s, %s, %s, %s, %s, {context} FROM c"
)
# A member in groups none of which caps the call: the reservation only names the groups.
_ADMIT_COUNTED_SQL = _ADMIT_SQL.replace(", context)", ", context, group_ids)").replace(
    "{context} FROM c", "{context}, %s::uuid[] FROM c"
)
CALL_FIELDS = tuple(f for f in CallRecord._meta.concrete_fields if f is not CallRecord._meta.auto_field)
_CALL_COLUMNS = ", ".join(str(f.column) for f in CALL_FIELDS)
_ADMIT_GROUPS_SQL = group_sql.ADMIT_SQL.replace("{counters}", COUNTER_TABLE).replace(
    "{reservations}", RESERVATION_TABLE
)
_ADMIT_ONE_GROUP_SQL = group_sql.ADMIT_ONE_SQL.replace("{counters}", COUNTER_TABLE).replace(
    "{reservations}", RESERVATION_TABLE
)
# The moves, limited to their number twice over: the planner's row estimate (settle_batch_statement).
_SETTLE_HEAD = (
    "WITH s AS (SELECT * FROM (SELECT * FROM jsonb_to_recordset(%s::jsonb)"  # noqa: S608 (constant names)
    " AS s(n bigint, reservation uuid, counter bigint, tokens bigint, cost numeric, held_tokens bigint,"
    " held_cost numeric{group_columns}) LIMIT %s::bigint) s LIMIT %s::bigint),"
    # The moves of the reservations deleted, returned by the DELETE itself: a reservation named twice
    # is deleted, and settled, once.
    f" k AS (DELETE FROM {RESERVATION_TABLE} USING s WHERE id = s.reservation RETURNING s.*),"
    " t AS (SELECT counter, sum(tokens) AS tokens, sum(cost) AS cost, count(*) AS calls,"
    " sum(held_tokens) AS held_tokens, sum(held_cost) AS held_cost FROM k GROUP BY counter),"
)
# The allocations' counters: an upsert on the counter's id, never an insert. Each counter of `t`
# exists: it is the counter of a reservation this statement deleted (a counter's reservations go
# with it), so every row conflicts and takes the DO UPDATE. Written as an upsert rather than an
# UPDATE because an UPDATE whose row was changed after the statement's snapshot (a concurrent
# admission or settlement of the allocation, or one that held a group's row this statement waited
# for) re-checks it with EvalPlanQual, which sets up every CTE of this statement again;
# `INSERT ... ON CONFLICT DO UPDATE` waits for the row and updates the version that committed
# (docs/PERFORMANCE.md). The values of the insert are never written: an allocation id that
# matches none (its foreign key would refuse the row at commit) and sums of the calls.
_NO_ALLOCATION = "'00000000-0000-0000-0000-000000000000'::uuid"
_COUNTER_UPSERT = (
    f" u AS (INSERT INTO {COUNTER_TABLE} AS c (id, allocation_id, period_start, tokens_used, cost_used, calls,"  # noqa: S608 (constant names)
    " tokens_reserved, cost_reserved, updated_at) SELECT <rows> ON CONFLICT (id) DO UPDATE"
    " SET tokens_used = c.tokens_used + excluded.tokens_used, cost_used = c.cost_used + excluded.cost_used,"
    " calls = c.calls + excluded.calls, tokens_reserved = c.tokens_reserved - excluded.tokens_reserved,"
    " cost_reserved = c.cost_reserved - excluded.cost_reserved),"
)
_SETTLE_COUNTERS = _COUNTER_UPSERT.replace(
    "<rows>",
    f"t.counter, {_NO_ALLOCATION}, 'infinity'::date, t.tokens, t.cost, t.calls, t.held_tokens, t.held_cost, now()"
    " FROM t{after} ORDER BY t.counter",
)


def _read_as(field: Any) -> str:
    """The SQL type a record column's parameter is read as: the column's type without its length or
    precision (`varchar`, `numeric`), so the INSERT's assignment applies them as it does to any
    value (a string too long for its column is an error, not cut)."""
    return re.sub(r"\(.*?\)", "", field.db_type(connection)).strip()


# Each record of a batch is a JSON array of its columns' values in _CALL_COLUMNS' order
# (`_record_row`), each element read as its column's type: no column names to write per record,
# nor for PostgreSQL to parse and look up (jsonb_populate_record did, by name).
_RECORD_ELEMENTS = ", ".join(f"(e.doc_->>{i})::{_read_as(f)}" for i, f in enumerate(CALL_FIELDS))
_SETTLE_RECORDS = (
    f" i AS (INSERT INTO {CALL_TABLE} ({_CALL_COLUMNS}) SELECT {_RECORD_ELEMENTS}"  # noqa: S608 (constant names)
    " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(doc_, n_)"
    " WHERE e.n_ IN (SELECT n FROM k) ORDER BY e.n_ RETURNING id, {returning}),"
    # The records' daily and hourly rollups, in the same statement (quota.rollups).
    " {rollup}"
    # The records' ids come from their sequence in the order the rows were inserted (by n): the
    # calls' n in order beside the ids in order, two arrays read in step (no join to plan).
    " SELECT unnest(ARRAY(SELECT n FROM k ORDER BY n)), unnest(ARRAY(SELECT id FROM i ORDER BY id))"
)
# Calls of members without groups: the statement as it was before groups existed (nothing added).
_SETTLE_SQL = _SETTLE_HEAD.replace("{group_columns}", "") + _SETTLE_COUNTERS.replace("{after}", "") + _SETTLE_RECORDS
# A batch with at least one call counted toward a group: the groups' upsert, then the allocations.
_SETTLE_GROUPS_SQL = (
    _SETTLE_HEAD.replace("{group_columns}", ", groups uuid[], held bigint[]")
    + group_sql.SETTLE_CTE.replace("{counters}", COUNTER_TABLE).replace("{groups}", GROUP_TABLE)
    + _SETTLE_COUNTERS.replace("{after}", group_sql.SETTLE_AFTER_GROUPS)
    + _SETTLE_RECORDS
)

_RETURNING = ", ".join(SOURCE_COLUMNS)
_ROLLUP = upserts_sql("i")


# The record's columns as parameters of their own, in _CALL_COLUMNS' order, each read as its type.
_RECORD_PARAMETERS = ", ".join(f"%s::{_read_as(f)}" for f in CALL_FIELDS)
# One call of a member without groups (every call while calls do not meet): the same writes as
# _SETTLE_SQL without what only a batch needs. Each table gets at most one row, so nothing is
# summed (no GROUP BY) nor sorted for the lock order; the reservation's DELETE returns the call's
# move itself (no join of the moves with the ids deleted), the record's columns are parameters of
# their own (no JSON object to parse and take apart by column name: ~20 µs of PostgreSQL's CPU per
# call, docs/PERFORMANCE.md), and its id is returned as the one call's (n = 1). Parameters, all
# text: the move (`_move_parameters`: the reservation, then what the DELETE returns of it when it
# takes it), the record's columns (`_record_parameters`), then the rollups'.
_SETTLE_ONE_SQL = (
    f"WITH k AS (DELETE FROM {RESERVATION_TABLE} WHERE id = %s::uuid RETURNING %s::bigint AS counter,"  # noqa: S608 (constant names)
    " %s::bigint AS tokens, %s::numeric AS cost, %s::bigint AS held_tokens, %s::numeric AS held_cost),"
    + _COUNTER_UPSERT.replace(
        "<rows>",
        f"k.counter, {_NO_ALLOCATION}, 'infinity'::date, k.tokens, k.cost, 1, k.held_tokens, k.held_cost, now() FROM k",
    )
    + f" i AS (INSERT INTO {CALL_TABLE} ({_CALL_COLUMNS}) SELECT {_RECORD_PARAMETERS}"  # noqa: S608 (constant names)
    f" WHERE EXISTS (SELECT FROM k) RETURNING id, {_RETURNING}), " + upserts_sql("i", one=True) + " SELECT 1, id FROM i"
)


# The texts are made once per variant: the same str object each call (its hash kept), and no
# formatting of a few kilobytes per call. Bounded by the variants: the cap guards and contexts
# (a handful) and the settlement's two forms of a batch (with groups or without).
@functools.lru_cache(maxsize=128)
def _admit_sql(template: str, guard: str, context: str, zero_guard: str = "", group_guard: str = "") -> str:
    return template.format(
        guard=guard,
        context=context,
        zero_guard=zero_guard,
        group_guard=group_guard,
        alloc_zero_guard=group_sql.on_empty(guard),
        alloc_guard=group_sql.on_row(guard, "y"),
    )


@functools.cache
def _settle_sql(grouped: bool) -> str:
    sql = _SETTLE_GROUPS_SQL if grouped else _SETTLE_SQL
    return sql.format(returning=_RETURNING, rollup=_ROLLUP)


def admit_statement(
    *,
    allocation_id: uuid.UUID | str,
    counter_id: int,
    token_cap: int | None,
    cost_cap: Decimal | None,
    priced: bool,
    reservation: dict,
    groups: Sequence[group_sql.Budget] = (),
    period: dt.date | None = None,
    generation: int | None = None,
) -> tuple[str, list]:
    """The admission in ONE statement (data-modifying CTE): the guarded UPDATE of the counter
    (used + reserved < cap for each cap that applies; the allocation is checked too, so a stale
    cached counter id never reserves against another allocation's counter), then the INSERT of the
    reservation row only if that UPDATE matched. One statement is atomic on its own: no BEGIN/COMMIT
    round trips. `reservation` holds id, request_id, tokens, cost, created_at, expires_at, context.

    `groups`: the member's groups (allocations.access.GroupBudget); when a cap of one holds the
    call, the statement reserves on those groups' counters of `period` too, all or nothing
    (quota.ledger.groups), and returns the row of the reservation with its group counter ids.

    `generation`: the auth generation the call's cached key, allocation and price were read under
    (lib.cache); the statement reserves only while it is still the current one, judged in the same
    snapshot as the caps (a guard like theirs, wherever the allocation's guard is asked). A number
    that moved is a miss like a cap's: nothing is written, and the thread path decides."""
    condition, condition_params = guard(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    if generation is not None:
        condition, condition_params = condition + GENERATION_GUARD, [*condition_params, generation]
    r = reservation
    # An empty context (a reservation nothing bills if its holder dies) is a literal; any other is
    # encoded once here and sent as text that PostgreSQL reads as jsonb (no adapter object per call).
    context, context_params = ("'{}'", []) if not r["context"] else ("%s::jsonb", [_context_json(r["context"])])
    # The parameters of the allocation counter's guarded UPDATE and of the reservation row (every variant).
    counter = [r["tokens"], r["cost"], counter_id, allocation_id, *condition_params]
    row = [r["id"], r["request_id"], r["tokens"], r["cost"], r["created_at"], r["expires_at"], *context_params]
    if not groups:
        sql, extra = _ADMIT_SQL, []
    else:
        capped, caps_json, capped_ids, group_ids, one = group_sql.admission_parts(tuple(groups), priced)
        if one is not None:
            group_id, zero_condition, group_condition, group_params = one
            return _admit_sql(_ADMIT_ONE_GROUP_SQL, condition, context, zero_condition, group_condition), [
                group_id,
                period,
                r["tokens"],
                r["cost"],
                *group_params,
                counter_id,
                allocation_id,
                *condition_params,
                *group_params,
                counter_id,
                allocation_id,
                period,
                r["tokens"],
                r["cost"],
                *condition_params,
                *condition_params,
                *row,
                group_ids,
            ]
        if capped:
            return _admit_sql(_ADMIT_GROUPS_SQL, condition, context), [
                caps_json,
                capped_ids,
                period,
                *counter,
                capped,
                r["tokens"],
                r["cost"],
                *row,
                group_ids,
            ]
        sql, extra = _ADMIT_COUNTED_SQL, [group_ids]
    return _admit_sql(sql, condition, context), [*counter, *row, *extra]


# Admissions of one counter that met while every event-loop connection was busy
# (ledger.loop._Admissions): ONE guarded UPDATE by their sums, then every reservation; all or
# none. The caps' parameters are the caps less what the batch's earlier calls reserve, so the
# guard is the one the batch's last call would meet after the others, admitted one by one.
_ADMIT_MANY_SQL = (
    f"WITH c AS (UPDATE {COUNTER_TABLE} SET tokens_reserved = tokens_reserved + %s,"  # noqa: S608 (constant names)
    " cost_reserved = cost_reserved + %s WHERE id = %s AND allocation_id = %s{guard} RETURNING id)"
    f" INSERT INTO {RESERVATION_TABLE} (id, counter_id, request_id, tokens, cost, created_at, expires_at, context)"
    " SELECT r.id, c.id, r.request_id, r.tokens, r.cost, r.created_at, r.expires_at, r.context FROM c"
    " CROSS JOIN jsonb_to_recordset(%s::jsonb) AS r(id uuid, request_id text, tokens bigint, cost numeric,"
    " created_at timestamptz, expires_at timestamptz, context jsonb)"
)


@functools.lru_cache(maxsize=16)
def _admit_many_sql(guard: str) -> str:
    return _ADMIT_MANY_SQL.format(guard=guard)


def admit_many_statement(
    *,
    allocation_id: uuid.UUID | str,
    counter_id: int,
    token_cap: int | None,
    cost_cap: Decimal | None,
    priced: bool,
    reservations: Sequence[dict],
    generation: int | None = None,
) -> tuple[str, list]:
    """The admission of several calls of one counter, none counted toward a group, in ONE
    statement: the counter's guarded UPDATE by their sums, then their reservation rows (as
    `reservation_row` makes them), inserted only if it matched. It matches exactly when admitting
    the calls one by one, in this order, would admit every one: each call's guard is `used <
    cap - reserved` before its own reservation, and a later call's sees the earlier ones' reserved
    (estimates are never negative, so the last call's guard implies all the others'). When it does
    not match, none is admitted (each then takes its own statement, where the caps decide).
    `generation`: as admit_statement's, one for all the calls."""
    before = reservations[:-1]
    before_tokens = sum(r["tokens"] for r in before)
    before_cost = sum((r["cost"] for r in before), Decimal(0))
    condition, condition_params = guard(
        token_cap=None if token_cap is None else token_cap - before_tokens,
        cost_cap=None if cost_cap is None else cost_cap - before_cost,
        priced=priced,
    )
    if generation is not None:
        condition, condition_params = condition + GENERATION_GUARD, [*condition_params, generation]
    # Each value in its JSON form (as _json_value gives it), so the encoder calls back into Python
    # for none of them.
    rows = [
        {
            "id": str(r["id"]),
            "request_id": r["request_id"],
            "tokens": r["tokens"],
            "cost": str(r["cost"]),
            "created_at": iso_text(r["created_at"]),
            "expires_at": iso_text(r["expires_at"]),
            "context": r["context"] or {},
        }
        for r in reservations
    ]
    tokens = before_tokens + reservations[-1]["tokens"]
    cost = before_cost + reservations[-1]["cost"]
    return _admit_many_sql(condition), [tokens, cost, counter_id, allocation_id, *condition_params, _encode(rows)]


def settle_values(
    *,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: dt.datetime,
    groups: tuple[str, ...] = (),
    billed: Bill | None = None,
) -> tuple[dict, Decimal | None]:
    """The call record's field values (by field name) and its cost, with what a cost beyond tokens
    was billed from (the service tier, the tool calls), and the groups it counted toward.
    `billed`: `bill(price=price, usage=usage)` when the caller made it already (a /v1 call's
    settlement prices its call line with the same bill); a bill of another usage or price object
    is not used, the call is priced here."""
    if billed is None or billed.usage is not usage or billed.price is not price:
        billed = bill(price=price, usage=usage)
    cost = billed.cost
    # The record's copy, the settlement's fields then set in it one by one (a dict display merging
    # `record` builds the dict from empty, resized as it grows: ~6 k instructions more). The copy, not
    # `record` itself: a settlement retried on another path is given the same record.
    values = record.copy()
    values["group_ids"] = [*groups]
    values["finished_at"] = record.get("finished_at") or now
    values["input_tokens"] = usage.input_tokens
    values["output_tokens"] = usage.output_tokens
    values["cached_tokens"] = usage.cached_tokens
    values["reasoning_tokens"] = usage.reasoning_tokens
    values["audio_input_tokens"] = usage.audio_input_tokens
    values["audio_output_tokens"] = usage.audio_output_tokens
    values["quantity"] = usage.quantity
    values["unit"] = usage.unit
    values["estimated"] = usage.estimated
    values["service_tier"] = billed.tier[:16]
    values["tool_calls"] = dict(usage.tool_calls) if usage.tool_calls else {}
    values["cost_usd"] = cost
    values["priced"] = cost is not None
    values["price_version"] = price if cost is not None else None
    return values, cost


def _json_value(value: object) -> Any:
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)  # a JSON string: PostgreSQL reads it as the column's type, digits intact
    if isinstance(value, dt.datetime):
        return iso_text(value)  # an aware time keeps its offset
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Model):
        return value.pk
    raise TypeError(f"{type(value).__name__} has no JSON form here")


class _RowForms(dict):
    """By a value's class: the function giving its JSON form in a record's row (`_record_row`), or
    None when the JSON encoder writes it itself. Filled on first sight of a class (a handful: the
    record's values)."""

    def __missing__(self, cls: type) -> Any:
        found: Any = _json_value
        if issubclass(cls, (list, tuple)):
            found = _array_text  # the group ids, as the text of a PostgreSQL array
        elif issubclass(cls, (str, int, float, bool, type(None), dict)):
            found = None
        elif issubclass(cls, (Decimal, uuid.UUID)):
            found = str  # as _json_value gives them, without its checks
        elif issubclass(cls, dt.datetime):
            found = iso_text
        elif issubclass(cls, Model):
            found = _pk  # a key's object: its id (as _json_value gives it, without its checks)
        self[cls] = found
        return found


_pk = operator.attrgetter("pk")


_row_forms = _RowForms()
_row_plans = BoundedCache(1024)
# Each record column's field (its attname: a key's id), in CALL_FIELDS' order, and what a record
# without it holds: the field's default, made once (a callable default's new dict or list is only
# read: a record's columns are written out and dropped).
_RECORD_ATTNAMES = tuple(f.attname for f in CALL_FIELDS)
_BY_OBJECT = object()  # the default of a column a record may give by its key's object (its name)
_RECORD_DEFAULTS = tuple(_BY_OBJECT if f.name != f.attname else f.get_default() for f in CALL_FIELDS)
_RECORD_OBJECTS = tuple((i, f.name, f.get_default()) for i, f in enumerate(CALL_FIELDS) if f.name != f.attname)


def _record_values(values: dict) -> list:
    """A call record's column values, in _CALL_COLUMNS' order, from its field values: each by its
    attname, else by its name (a key's object: `price_version`), else the field's default."""
    found = list(map(values.get, _RECORD_ATTNAMES, _RECORD_DEFAULTS))
    for i, name, default in _RECORD_OBJECTS:
        if found[i] is _BY_OBJECT:
            found[i] = values.get(name, default)
    return found


def _in_forms(found: list, forms: dict, plans: BoundedCache) -> list:
    """`found` with each value in its form by its class (`forms`; None: the value as it is).
    `plans`, by the classes of the values: the positions whose value takes a form, and the form
    (a few class tuples are in use: a column holds its value or None)."""
    classes = tuple(map(type, found))
    plan = plans.get(classes)
    if plan is None:
        plan = plans[classes] = tuple((i, form) for i, cls in enumerate(classes) if (form := forms[cls]) is not None)
    for i, form in plan:
        found[i] = form(found[i])
    return found


def _record_row(values: dict) -> list:
    """A call record's columns from its field values, in _CALL_COLUMNS' order, each already in its
    JSON form: the encoder's fast path writes the whole record without a call back into Python per
    Decimal or time. A list (the group ids) is given as the text of a PostgreSQL array, which the
    statement reads as its column's array type (`->>` of a JSON array would be JSON text)."""
    return _in_forms(_record_values(values), _row_forms, _row_plans)


def _array_text(value: Sequence) -> str:
    return "{" + ",".join(map(str, value)) + "}"  # group ids: UUIDs, nothing to quote


_bool_text = {True: "true", False: "false"}.__getitem__


class _TextForms(dict):
    """By a value's class: the function giving its text as PostgreSQL reads it for its column, or
    None for a str (sent as it is) and for None (NULL). Filled on first sight of a class."""

    def __missing__(self, cls: type) -> Any:
        found: Any
        if issubclass(cls, str):
            found = None
        elif issubclass(cls, bool):
            found = _bool_text
        elif issubclass(cls, (int, Decimal, uuid.UUID)):
            found = str
        elif issubclass(cls, dt.datetime):
            found = iso_text  # an aware time keeps its offset
        elif issubclass(cls, dt.date):
            found = cls.isoformat
        elif issubclass(cls, dict):
            found = _encode  # jsonb
        elif issubclass(cls, (list, tuple)):
            found = _array_text
        elif issubclass(cls, Model):
            found = _pk_text
        else:
            raise TypeError(f"{cls.__name__} has no text form here")
        self[cls] = found
        return found


def _pk_text(value: Model) -> str:
    return str(value.pk)


_text_forms = _TextForms()
_text_forms[type(None)] = None  # NULL: None as it is
_text_plans = BoundedCache(1024)


def _record_parameters(values: dict) -> list[str | None]:
    """A call record's columns from its field values, in _CALL_COLUMNS' order, each as text (None
    for NULL). Every parameter is then sent untyped and read by the statement as its column's type,
    so their types never vary with the values (an int's size, a None): one prepared statement."""
    return _in_forms(_record_values(values), _text_forms, _text_plans)


# A reservation's context for its jsonb column: orjson's text, else json.dumps(context,
# separators=(",", ":")) (lib.jsontext.jsonb_text: the same jsonb; a context holds no float).
_context_json = jsonb_text(text_encoder(separators=(",", ":")))

# The default hook only for what a row holds beyond the usual (an id or time in a nested value).
_encode = text_encoder(default=_json_value, separators=(",", ":"), acyclic=True)  # rows built here: no cycle


def settle_statement(settlements: list[Settlement]) -> tuple[str, list]:
    """The settlement's writes for any number of calls in ONE statement (data-modifying
    CTEs): DELETE the reservations (what makes each settlement happen exactly once), then, for the
    calls whose reservation that DELETE took, move the usage into the counters (and the
    reservation out of them), INSERT the call records and add them to their rollups. A call
    whose reservation is already gone was settled before (the sweeper billed it as `worker_lost`,
    or this settlement already committed): it writes nothing. Returns rows (n, record id), n = the settlement's 1-based
    position. A batch has one text and six parameters whatever the number of calls or fields: the
    settlements as JSON, their number (twice: `settle_batch_statement`), the records as JSON
    (PostgreSQL expands both itself), and the billing timezone's name (once per rollup). One call
    of a member without groups takes the statement of one call (_SETTLE_ONE_SQL, its move and its
    record's columns as parameters of their own, all text), any other the batch's
    (`settle_batch_statement`): the same rows written."""
    if len(settlements) == 1 and not _grouped(settlements):
        one = settlements[0]
        return _SETTLE_ONE_SQL, [*_move_parameters(one), *_record_parameters(one.values), *upserts_params()]
    return settle_batch_statement(settlements)


def _grouped(settlements: list[Settlement]) -> bool:
    return any(s.admission.groups or s.admission.held for s in settlements)


def _move_parameters(s: Settlement) -> tuple[str, ...]:
    """The statement of one call's move as text (as `_move` gives it to the batch, without the JSON):
    the reservation's id, its counter, the tokens and cost used, the tokens and cost it held."""
    a = s.admission
    return str(a.reservation_id), str(a.counter_id), str(s.tokens), str(s.cost), str(a.tokens), str(a.cost)


def _move(n: int, s: Settlement) -> dict:
    return {
        "n": n,
        "reservation": str(s.admission.reservation_id),
        "counter": s.admission.counter_id,
        "tokens": s.tokens,
        "cost": str(s.cost),
        "held_tokens": s.admission.tokens,
        "held_cost": str(s.admission.cost),
    }


def settle_batch_statement(settlements: list[Settlement]) -> tuple[str, list]:
    """`settle_statement`'s statement for any number of calls: the settlements as a JSON array of
    objects, the records as a JSON array of arrays (each its columns' values, `_record_row`)."""
    moves = [_move(n, s) for n, s in enumerate(settlements, 1)]
    grouped = _grouped(settlements)
    if grouped:
        for move, s in zip(moves, settlements, strict=True):
            move["groups"], move["held"] = s.admission.groups, s.admission.held
    records = [_record_row(s.values) for s in settlements]
    # The number of calls is a parameter, not a literal of the text: one text for every batch size,
    # so each connection prepares it once and runs its generic plan from the sixth execution on (a
    # text per size would be planned anew at each of its first five executions on each connection,
    # and a plan costs about what the batch's run does: docs/PERFORMANCE.md). Given twice, as the
    # LIMIT of the moves and of a LIMIT around them: a limit by a parameter counts a tenth of its
    # input's rows in the planner's estimate, so the generic plan counts one move (a JSON function
    # alone counts 100) and probes the reservations by their key, however small the table was when
    # the plan was made (with 10, a small table is read whole, and the plan kept while dead rows grow
    # it).
    return _settle_sql(grouped), [
        _encode(moves),
        str(len(moves)),
        str(len(moves)),
        _encode(records),
        *upserts_params(),
    ]
