"""The ledger: how a call is admitted (a reservation against the caps) and settled (its record,
the counters, the release), for every path: HTTP, realtime, the sweeper and the spool.

Its face:
- `admit(...)` / `settle(...)`: synchronous, on Django's connection (ledger.sync; one prepared
  statement each, plain writes in one transaction for a settlement without a reservation).
- `admit_async(...)` / `settle_async(...)`: from the event loop. A warm admission runs its
  statement on the loop's own connections (ledger.loop) or returns None, and the caller's thread
  path (ledger.threads.run) decides; a settlement runs on the loop, grouped with the others
  waiting (group commit), or on a thread, and is spooled (ledger.spool) if the database fails.
- `adjust`, `release`, `record_reject`, `reservations_sweep` and `reservations_settle_lost`
  (a call whose process died becomes a `worker_lost` record), the spool's replay.

The SQL of each statement is written once, in ledger.statements.
"""

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal

from lib import conf

from ..billing.bill import Bill
from ..models import PriceVersion
from ..periods import period_start_date
from ..pricing import Usage
from . import loop, threads
from .groups import Budget
from .loop import counter_read as counter_read_async
from .loop import counters_read as counters_read_async
from .loop import generation_begin
from .spool import call_settle_durable, call_settle_once, spool_depth, spool_replay
from .statements import Admission, Settlement, reservation_row, settle_statement, settle_values
from .sweep import lost_context, reservations_settle_lost, reservations_sweep, settlement_from_json
from .sync import adjust, admit, counter_id_cached, record_reject, release, reservation_admission, settle

__all__ = [
    "Admission",
    "Settlement",
    "adjust",
    "admit",
    "admit_async",
    "call_settle_durable",
    "call_settle_once",
    "counter_id_cached",
    "counter_read_async",
    "counters_read_async",
    "generation_begin",
    "lost_context",
    "record_reject",
    "release",
    "reservation_admission",
    "reservation_row",
    "reservations_settle_lost",
    "reservations_sweep",
    "settle",
    "settle_async",
    "settle_statement",
    "settle_values",
    "settlement_from_json",
    "spool_depth",
    "spool_replay",
]

logger = logging.getLogger(__name__)


async def admit_async(
    *,
    allocation_id: str,
    token_cap: int | None,
    cost_cap: Decimal | None,
    est_tokens: int,
    est_cost: Decimal | None,
    request_id: str,
    now: dt.datetime,
    context: dict | None = None,
    reservation_id: uuid.UUID | None = None,
    groups: Sequence[Budget] = (),
    generation: int | None = None,
) -> Admission | None:
    """The admission on the event loop when this allocation's counter is known: the reservation,
    or None when it was not made there (no known counter, a cap's guard did not match, or the auth
    generation is no longer `generation`: the synchronous `admit` on a thread tells 403 from 429).
    Database errors propagate."""
    counter_id = counter_id_cached(allocation_id=allocation_id, now=now)
    if counter_id is None:
        return None
    return await loop.admit(
        allocation_id=allocation_id,
        counter_id=counter_id,
        token_cap=token_cap,
        cost_cap=cost_cap,
        est_tokens=est_tokens,
        est_cost=est_cost,
        request_id=request_id,
        now=now,
        context=context,
        reservation_id=reservation_id,
        groups=groups,
        period=period_start_date(now),
        generation=generation,
    )


async def settle_async(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    alone: bool = False,
    billed: Bill | None = None,
) -> None:
    """The settlement from the event loop: the statement on the loop when the call holds a
    reservation (grouped with the settlements waiting, one commit for all); otherwise, or if that
    fails, `settle` on a thread, spooled if the database fails there too. After a failure the
    thread first looks for the record (the statement may have committed before the error reached
    us), so a call is never recorded twice. `alone`: no other call of this process is in flight
    (ledger.loop.settle writes the statement at once). `billed`: `usage`'s bill at `price` when the
    caller made it (statements.settle_values), on every path."""
    if admission is not None and record.get("allocation_id"):
        try:
            await loop.settle(
                admission=admission, record=record, usage=usage, price=price, now=conf.now(), alone=alone, billed=billed
            )
            return
        except Exception:  # noqa: BLE001 - settled on a thread below, or spooled
            logger.warning(
                "settlement on the event loop failed for %s; taking the thread path",
                record.get("request_id"),
                exc_info=True,
            )
        await threads.run(call_settle_once, admission=admission, record=record, usage=usage, price=price, billed=billed)
        return
    await threads.run(call_settle_durable, admission=admission, record=record, usage=usage, price=price, billed=billed)
