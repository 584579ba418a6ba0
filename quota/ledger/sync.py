"""The ledger's synchronous steps, on Django's connection: admission (reservation), settlement
(call record + counters + release), and the smaller moves of a reservation.

Each step is one short transaction with conditional UPDATEs, so limits hold across any number of
processes sharing PostgreSQL; nothing here is ever called while an upstream call is open. On
PostgreSQL each step is one statement of ledger.statements on a prepared cursor; elsewhere the
same writes go through ledger.portable.
"""

import datetime as dt
import uuid
from contextlib import nullcontext
from decimal import Decimal

from django.db import connection, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.models import F
from django.utils import timezone

from allocations.bounded import BoundedCache

from ..billing import caps
from ..exceptions import CostQuotaExceeded, QuotaBusy, QuotaExceeded
from ..models import CallRecord, PriceVersion, Reservation, UsageCounter
from ..periods import period_start_date
from ..pricing import ZERO, Usage
from . import portable
from .statements import Admission, Settlement, admit_statement, reservation_row, settle_statement, settle_values

# (allocation id, period start) -> counter id. Counters are never deleted while their allocation
# lives; a stale id (e.g. a test database flushed) just misses the fast path and is looked up again.
_counter_ids: BoundedCache = BoundedCache(100_000)


class _PreparedCursor(ServerBindingCursor):
    """psycopg's server-side binding cursor, preparing every statement it runs (once per connection:
    psycopg keeps the prepared statements by query text and parameter types)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _prepared_cursor():
    """PostgreSQL: the cursor of the two statements every call runs (admission, settlement).

    Django's default cursor binds client-side: psycopg quotes each of the ~30 parameters into the
    SQL text in Python (~8 % of the gateway's CPU per call, measured) and the server parses and
    plans the statement every time. Here the values travel apart and the plan is reused. The rest of
    the project keeps Django's cursor. Wrapped by Django all the same (error translation, and the
    query log the tests count)."""
    connection.ensure_connection()
    return connection._prepare_cursor(_PreparedCursor(connection.connection))


def _one_statement() -> bool:
    return connection.vendor == "postgresql"


def counter_for(*, allocation_id, period_start) -> UsageCounter:
    UsageCounter.objects.bulk_create(
        [UsageCounter(allocation_id=allocation_id, period_start=period_start)], ignore_conflicts=True
    )
    return UsageCounter.objects.get(allocation_id=allocation_id, period_start=period_start)


def _cap_error(*, counter: UsageCounter, token_cap, cost_cap, priced: bool) -> Exception | None:
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
            f"monthly cost cap reached: ${counter.cost_used.normalize():f} / ${cost_cap.normalize():f}"
        )
    return None


def _hold(counter_id: int, row: dict, caps: dict) -> bool:
    """The guarded reservation on `counter_id` and its row; False when a cap's guard did not match."""
    if _one_statement():
        with _prepared_cursor() as cursor:
            cursor.execute(*admit_statement(counter_id=counter_id, reservation=row, **caps))
            return cursor.rowcount > 0
    if not portable.reserve(counter_id, tokens=row["tokens"], cost=row["cost"], **caps):
        return False
    portable.insert(Reservation(**row, counter_id=counter_id))
    return True


def admit(
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
    reservation_id: uuid.UUID | None = None,
) -> Admission:
    """Checks both caps and holds a reservation, in one transaction.

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
    caps = {"allocation_id": allocation_id, "token_cap": token_cap, "cost_cap": cost_cap, "priced": priced}
    if cached_counter_id is not None:
        # One statement on PostgreSQL is atomic on its own: a savepoint only when nested.
        nested = connection.in_atomic_block or not _one_statement()
        with transaction.atomic() if nested else nullcontext():
            if _hold(cached_counter_id, row, caps):
                return Admission(row["id"], cached_counter_id, est_tokens, est_cost)
    with transaction.atomic():
        counter = counter_for(allocation_id=allocation_id, period_start=key[1])
        _counter_ids[key] = counter.pk
        error = _cap_error(counter=counter, token_cap=token_cap, cost_cap=cost_cap, priced=priced)
        if error:
            raise error
        if not _hold(counter.pk, row, caps):
            raise QuotaBusy("the allocation's remaining quota is held by calls in flight; retry shortly")
    return Admission(reservation_id=row["id"], counter_id=counter.pk, tokens=est_tokens, cost=est_cost)


def reservation_admission(*, reservation_id: uuid.UUID) -> Admission | None:
    """The admission an earlier attempt made under this reservation id, if it committed (an attempt
    whose connection failed cannot tell; its retry asks here before admitting again)."""
    row = Reservation.objects.filter(pk=reservation_id).values("counter_id", "tokens", "cost").first()
    return None if row is None else Admission(reservation_id, row["counter_id"], row["tokens"], row["cost"])


def counter_id_cached(*, allocation_id, now: dt.datetime) -> int | None:
    """The counter id admit last used for this allocation and period, if any (no query)."""
    return _counter_ids.get((str(allocation_id), period_start_date(now)))


def adjust(
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


def release(*, admission: Admission | None) -> None:
    """Releases a reservation without settling a call (a call refused after admission)."""
    if admission is not None and portable.reservation_delete(admission):
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
) -> CallRecord | None:
    """Writes the call record, moves the usage into the counters and releases the reservation,
    all in one transaction. `record` holds the CallRecord's identifying fields. A call admitted
    with a reservation settles only while that reservation exists: None (nothing written) when it
    was settled already, e.g. by the sweeper after its process was thought lost."""
    values, cost = settle_values(record=record, usage=usage, price=price, now=now or timezone.now())
    row = CallRecord(**values)
    if admission is not None and row.allocation_id and _one_statement():
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
        released = admission is not None and portable.reservation_delete(admission)
        if admission is not None and not released:
            return None
        portable.insert(row)
        if row.allocation_id and (usage.has_tokens or cost or admission is not None):
            counter_id = (
                admission.counter_id
                if admission is not None
                else counter_for(allocation_id=row.allocation_id, period_start=period_start_date(row.started_at)).pk
            )
            portable.counter_add(
                counter_id,
                tokens=usage.total_tokens,
                cost=cost or ZERO,
                calls=1,
                release=admission if released else None,  # release and usage in one UPDATE of the row
            )
        elif released and admission is not None:
            portable.counter_add(admission.counter_id, tokens=0, cost=ZERO, calls=0, release=admission)
    return row


def record_reject(*, record: dict, now: dt.datetime | None = None) -> CallRecord:
    """A rejected call: recorded, carries no usage, touches no counter."""
    now = now or timezone.now()
    return CallRecord.objects.create(**record, finished_at=record.get("finished_at") or now)
