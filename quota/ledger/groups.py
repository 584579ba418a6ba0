"""Group budgets in the ledger (SPEC 10): every call of a member counts toward each of the member's
groups, and a group with a cap holds the call's reservation as its allocation does, in the same
statement.

The SQL pieces here extend the two statements of ledger.statements:
- admission: the capped groups' counters of the period are locked first (in group id order, so
  admissions sharing groups queue instead of deadlocking), each checked with the cap rule on its
  latest row; the allocation's guarded UPDATE matches only when every one of them has room; the
  groups' UPDATE and the reservation's INSERT happen only when it matched. So the reservation is
  held on the allocation and on every capped group, or on none, in one statement.
- settlement: the usage of each call is added to the counters of its groups (an upsert: a group
  without a cap may have no counter yet) and its held reservation taken out of the capped ones, in
  one write per group row, before the allocations' counters (the same lock order as admission).
A member with exactly one capped group is admitted by a shorter statement (ADMIT_ONE_SQL: one
guarded upsert of the group's counter, no lock before it). Otherwise a group whose counter row
does not exist yet makes the warm admission miss; the thread path (ledger.sync) creates the rows
and tells a refusal (403) from headroom held in flight (429).
"""

import datetime as dt
import functools
import json
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Protocol

from django.db import transaction
from django.db.models import F

from ..billing import caps
from ..exceptions import GroupCostQuotaExceeded, GroupQuotaExceeded
from ..models import GroupUsageCounter

GROUP_COUNTER_TABLE = GroupUsageCounter._meta.db_table


class Budget(Protocol):
    """A group as the key snapshot carries it (allocations.access.GroupBudget)."""

    @property
    def id(self) -> str: ...
    @property
    def slug(self) -> str: ...
    @property
    def token_cap(self) -> int | None: ...
    @property
    def cost_cap(self) -> Decimal | None: ...


def capped(groups: Iterable[Budget], *, priced: bool) -> list[tuple[Budget, int | None, Decimal | None]]:
    """The groups whose caps hold this call, each with its caps in force (the cap rule of
    quota.billing.caps: a cost cap holds an unpriced call only when it is 0)."""
    found = []
    for group in groups:
        cost_cap = caps.cost_cap_in_force(group.cost_cap, priced=priced)
        if group.token_cap is not None or cost_cap is not None:
            found.append((group, group.token_cap, cost_cap))
    return found


def caps_json(held: Sequence[tuple[Budget, int | None, Decimal | None]]) -> str:
    return json.dumps(
        [{"group_id": g.id, "tokens": tokens, "cost": None if cost is None else str(cost)} for g, tokens, cost in held],
        separators=(",", ":"),
    )


@functools.lru_cache(maxsize=4096)
def admission_parts(groups: tuple, priced: bool) -> tuple[int, str, str, str, tuple[str, str, str, tuple] | None]:
    """What the admission statement takes of a member's groups, computed once per snapshot's
    groups (they are immutable): (the number of capped groups, their caps as the JSON parameter,
    the capped groups' ids and every group id, each as a uuid[] literal, and with exactly one
    capped group: its id, its cap guards and their parameters, for ADMIT_ONE_SQL)."""
    held = capped(groups, priced=priced)
    one = None
    if len(held) == 1:
        group, token_cap, cost_cap = held[0]
        zero, condition, params = one_guards(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
        one = (group.id, zero, condition, tuple(params))
    return len(held), caps_json(held), _uuids(g.id for g, _, _ in held), _uuids(g.id for g in groups), one


def _uuids(ids: Iterable[str]) -> str:
    return "{" + ",".join(ids) + "}"


# The admission with capped groups: `{guard}` is the allocation's cap guard, `{context}` the
# reservation's context (a literal or a parameter), as in ledger.statements.
ADMIT_SQL = (
    "WITH g AS (SELECT gc.id, (cap.tokens IS NULL OR gc.tokens_used < cap.tokens - gc.tokens_reserved)"  # noqa: S608 (constant names)
    " AND (cap.cost IS NULL OR gc.cost_used < cap.cost - gc.cost_reserved) AS room"
    f" FROM {GROUP_COUNTER_TABLE} gc"
    " JOIN jsonb_to_recordset(%s::jsonb) AS cap(group_id uuid, tokens bigint, cost numeric)"
    # The counters are found on their unique (group, period) index, whatever else the table holds.
    " ON gc.group_id = cap.group_id WHERE gc.group_id = ANY(%s::uuid[]) AND gc.period_start = %s"
    " ORDER BY gc.group_id FOR UPDATE OF gc),"
    " c AS (UPDATE {counters} SET tokens_reserved = tokens_reserved + %s, cost_reserved = cost_reserved + %s"
    " WHERE id = %s AND allocation_id = %s{guard} AND (SELECT count(*) FILTER (WHERE room) FROM g) = %s RETURNING id),"
    f" h AS (UPDATE {GROUP_COUNTER_TABLE} gc SET tokens_reserved = gc.tokens_reserved + %s,"
    " cost_reserved = gc.cost_reserved + %s FROM g WHERE gc.id = g.id AND EXISTS (SELECT 1 FROM c))"
    " INSERT INTO {reservations} (id, counter_id, request_id, tokens, cost, created_at, expires_at, context,"
    " group_ids, group_counter_ids) SELECT %s, c.id, %s, %s, %s, %s, %s, {context}, %s::uuid[],"
    " COALESCE((SELECT array_agg(id ORDER BY id) FROM g), '{{}}') FROM c RETURNING group_counter_ids"
)

# The admission with exactly one capped group: ONE guarded write of the group's counter (`h`, no
# `SELECT ... FOR UPDATE` before it), then the allocation's guarded UPDATE, which matches only once
# `h` did (so the group's row is locked before the allocation's, the order of the settlement), then
# the reservation. `h` is an upsert whose DO UPDATE carries the group's cap guard: under READ
# COMMITTED it waits for a concurrent writer of the row and judges the row as that one committed
# it, without the re-check a plain UPDATE makes of a row changed under it (EvalPlanQual, which
# sets up every sub-plan of the statement again: measured dearer when every call of a group meets
# on its row, docs/PERFORMANCE.md). A counter not there yet is made with the reservation, when the
# cap guard admits it on an empty counter (`{zero_guard}`).
# `h` also asks the allocation's guard on its row as this statement's snapshot sees it (read, not
# locked), so an allocation at its cap is a plain miss that writes nothing. Only when a concurrent
# admission takes the allocation's last headroom between that read and `c` has `h` reserved on the
# group alone: HOLD_WHOLE then raises HOLD_SPLIT_SQLSTATE and the whole statement rolls back (all or
# none). One row always comes back: the group counter ids held, or NULL when not admitted.
# `c`, the allocation's guarded write, is an upsert on the counter's id for the same reason as `h`:
# it runs after `h` waited for the group's row, by when the allocation's row has mostly changed
# since the statement's snapshot, and a plain UPDATE would re-check it with EvalPlanQual. Its
# DO UPDATE carries the allocation check and the cap guard on the row as committed. A cached
# counter id whose row is gone is a miss at `h`'s read; only a row deleted after the statement's
# snapshot takes the insert: the counter is made again under that id when the cap guard admits the
# call on an empty counter, and when the allocation has another counter of the period the statement
# fails on its unique (allocation, period) index (`counter_replaced`: a miss, nothing written).
HOLD_SPLIT_SQLSTATE = "QG001"
HOLD_WHOLE = "quota_group_hold_whole"
ADMIT_ONE_SQL = (
    f"WITH h AS (INSERT INTO {GROUP_COUNTER_TABLE} AS x (group_id, period_start, tokens_used, cost_used, calls,"  # noqa: S608 (constant names)
    " tokens_reserved, cost_reserved, updated_at) SELECT %s::uuid, %s::date, 0, 0, 0, %s, %s, now()"
    " WHERE true{zero_guard} AND EXISTS (SELECT 1 FROM {counters} WHERE id = %s AND allocation_id = %s{guard})"
    " ON CONFLICT (group_id, period_start) DO UPDATE SET tokens_reserved = x.tokens_reserved"
    " + excluded.tokens_reserved, cost_reserved = x.cost_reserved + excluded.cost_reserved"
    " WHERE true{group_guard} RETURNING id),"
    " c AS (INSERT INTO {counters} AS y (id, allocation_id, period_start, tokens_used, cost_used, calls,"
    " tokens_reserved, cost_reserved, updated_at) SELECT %s, %s::uuid, %s::date, 0, 0, 0, %s, %s, now()"
    " WHERE EXISTS (SELECT 1 FROM h){alloc_zero_guard} ON CONFLICT (id) DO UPDATE SET tokens_reserved ="
    " y.tokens_reserved + excluded.tokens_reserved, cost_reserved = y.cost_reserved + excluded.cost_reserved"
    " WHERE y.allocation_id = excluded.allocation_id{alloc_guard} RETURNING id),"
    " r AS (INSERT INTO {reservations} (id, counter_id, request_id, tokens, cost, created_at, expires_at, context,"
    " group_ids, group_counter_ids) SELECT %s, c.id, %s, %s, %s, %s, %s, {context}, %s::uuid[],"
    " ARRAY(SELECT id FROM h) FROM c RETURNING group_counter_ids)"
    # Admitted: the row's ids (never NULL). Otherwise HOLD_WHOLE, called only then, with what `h` wrote.
    f" SELECT CASE WHEN r.group_counter_ids IS NOT NULL THEN r.group_counter_ids"
    f" ELSE {HOLD_WHOLE}((SELECT count(*) FROM h), 0, NULL) END FROM (SELECT) AS one LEFT JOIN r ON true"
)
_COUNTER_COLUMNS = re.compile(r"\b(tokens_used|tokens_reserved|cost_used|cost_reserved)\b")


def one_guards(*, token_cap: int | None, cost_cap: Decimal | None, priced: bool) -> tuple[str, str, list]:
    """The cap rule (quota.billing.caps.guard_sql) of ADMIT_ONE_SQL's group: on an empty counter
    (`{zero_guard}`) and on the existing row `x` (`{group_guard}`), and the parameters of each."""
    condition, params = caps.guard_sql(token_cap=token_cap, cost_cap=cost_cap, priced=priced)
    return on_empty(condition), on_row(condition, "x"), params


def on_empty(condition: str) -> str:
    """A cap guard (quota.billing.caps.guard_sql) judged on an empty counter."""
    return _COUNTER_COLUMNS.sub("0", condition)


def on_row(condition: str, alias: str) -> str:
    """A cap guard judged on the row named `alias` (an upsert's existing row)."""
    return _COUNTER_COLUMNS.sub(alias + r".\1", condition)


# Made by migration quota 0019: NULL-safe pass-through of the held ids, or the error that undoes a
# statement which reserved on a group but not on the allocation.
HOLD_WHOLE_FUNCTION = (
    f"CREATE OR REPLACE FUNCTION {HOLD_WHOLE}(groups_held bigint, reservations bigint, held bigint[])"
    " RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$ BEGIN"
    " IF groups_held > reservations THEN RAISE EXCEPTION 'a group reserved without its allocation: undone'"
    f" USING ERRCODE = '{HOLD_SPLIT_SQLSTATE}'; END IF; RETURN held; END $$"
)


def hold_split(error: BaseException) -> bool:
    """True when `error` is HOLD_WHOLE's (the admission was undone whole: not admitted, nothing
    held); psycopg's own error or Django's wrapper of it."""
    return any(getattr(found, "sqlstate", None) == HOLD_SPLIT_SQLSTATE for found in (error, error.__cause__))


COUNTER_ONCE_PER_PERIOD = "usage_counter_once_per_period"


def counter_replaced(error: BaseException) -> bool:
    """True when `error` is ADMIT_ONE_SQL's insert of a cached counter id whose row is gone while
    the allocation has another counter of the period (nothing written: the cached id is stale)."""
    return any(
        getattr(found, "sqlstate", None) == "23505"
        and getattr(getattr(found, "diag", None), "constraint_name", None) == COUNTER_ONCE_PER_PERIOD
        for found in (error, error.__cause__)
    )


def admission_missed(error: BaseException) -> bool:
    """An admission statement's error that means "not admitted, nothing written" (hold_split,
    counter_replaced): the caller takes it as a guard that did not match."""
    return hold_split(error) or counter_replaced(error)


# The settlement's group part: `k` is the settlements whose reservation was taken (ledger.statements),
# with `groups` (the group ids each call counts toward) and `held` (the group counter ids its
# reservation holds). One upsert per (group, period) row: the usage goes to the period of the
# call's allocation counter, as the allocation's does, and a held reservation comes out of the
# counter row that holds it (a held counter is always one of these rows: the groups of the call,
# the period of its admission). A group deleted since is skipped (its counters went with it).
SETTLE_CTE = (
    f" gu AS (INSERT INTO {GROUP_COUNTER_TABLE} AS x (group_id, period_start, tokens_used, cost_used, calls,"  # noqa: S608 (constant names)
    " tokens_reserved, cost_reserved, updated_at) SELECT g, c.period_start, sum(k.tokens), sum(k.cost), count(*),"
    " 0, 0, now() FROM k JOIN {counters} c ON c.id = k.counter, unnest(k.groups) g JOIN {groups} a ON a.id = g"
    " GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT (group_id, period_start) DO UPDATE SET (tokens_used, cost_used, calls,"
    " tokens_reserved, cost_reserved, updated_at) = (SELECT x.tokens_used + excluded.tokens_used,"
    " x.cost_used + excluded.cost_used, x.calls + excluded.calls, x.tokens_reserved - coalesce(sum(held_tokens), 0),"
    " x.cost_reserved - coalesce(sum(held_cost), 0), now() FROM k WHERE x.id = ANY(held)) RETURNING 1),"
)
# The condition of the allocations' counter upsert (its rows): it runs once the groups' upsert is done.
SETTLE_AFTER_GROUPS = " WHERE (SELECT count(*) FROM gu) >= 0"


# --- the thread path: counters, refusals, and the moves of a live reservation ------------------------


def counters_ensure(*, group_ids: Iterable[str], period_start: dt.date) -> None:
    """Creates the period's counter of each group that has none (a warm admission needs them)."""
    GroupUsageCounter.objects.bulk_create(
        [GroupUsageCounter(group_id=g, period_start=period_start) for g in group_ids], ignore_conflicts=True
    )


def cap_errors(
    *, held: Sequence[tuple[Budget, int | None, Decimal | None]], period_start: dt.date
) -> tuple[Exception | None, Exception | None]:
    """(token refusal, cost refusal): the first group whose used amount alone reached its token cap,
    then its cost cap (403); headroom held in flight is 429, decided by the caller."""
    counters = {
        str(c.group_id): c
        for c in GroupUsageCounter.objects.filter(group_id__in=[g.id for g, _, _ in held], period_start=period_start)
    }
    token_error = cost_error = None
    for group, token_cap, cost_cap in held:
        counter = counters.get(group.id)
        tokens_used = counter.tokens_used if counter else 0
        cost_used = counter.cost_used if counter else Decimal(0)
        if token_error is None and caps.cap_hit(used=tokens_used, cap=token_cap):
            token_error = GroupQuotaExceeded(
                f"monthly token quota of group '{group.slug}' reached: {tokens_used} / {token_cap} tokens"
            )
        if cost_error is None and cost_cap is not None and caps.cap_hit(used=cost_used, cap=cost_cap):
            cost_error = GroupCostQuotaExceeded(
                f"monthly cost cap of group '{group.slug}' reached: "
                f"${Decimal(cost_used).normalize():f} / ${Decimal(cost_cap).normalize():f}"
            )
    return token_error, cost_error


def reserved_move(*, counter_ids: Sequence[int], tokens: int, cost: Decimal) -> None:
    """Adds (or, negative, takes out) a reservation's amounts on the group counters holding it,
    locked in group id order (the order of the admission and the settlement)."""
    if not counter_ids or (not tokens and not cost):
        return
    with transaction.atomic():
        rows = GroupUsageCounter.objects.filter(pk__in=list(counter_ids)).order_by("group_id").select_for_update()
        locked = list(rows.values_list("pk", flat=True))
        GroupUsageCounter.objects.filter(pk__in=locked).update(
            tokens_reserved=F("tokens_reserved") + tokens, cost_reserved=F("cost_reserved") + cost
        )
