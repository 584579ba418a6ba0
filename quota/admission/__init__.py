"""The one way a call is admitted, settled and released, for both relays (`/v1` and realtime).

A relay describes its call once, as a `Plan` (who asks, for which model and endpoint, what the
request would use); then:

- `admit(plan)` answers an `Admitted` (the reservation, and what the call carries to its
  settlement) or a `Refused` (the error, and who asked as far as it was resolved);
- `refuse(plan, refused, status_code=...)` writes a refused call's record;
- `settle(admitted, ...)` writes the call record, the counters and the release in one statement;
- `release(admitted)` gives an admission back unused.

Each chooses its own path: the event loop when everything it needs is cached under the current
auth generation (key scope, price, counter id) and the statement can run on the loop's own
connections (quota.ledger.loop); otherwise the ledger's accounting threads (quota.ledger.threads),
which decide every refusal. Plans and answers are values: nothing here calls into a relay or
writes into its objects.

SPEC 3 steps 3-10, in the contract's order: key, model, allocation status, rate limits, the
request's cost-bearing options (quota.options) and price, caps and admission, the model's kind,
the provider. The rate limits (quota.ratelimit) are asked once per call on either path: the
thread path keeps the loop's answer unless the limits it was asked under have changed since.
"""

import asyncio
import logging
import uuid
from typing import Any

from django.db import Error as DatabaseError
from django.db import connection, transaction
from django.utils import timezone

from allocations.access import ScopedAllocation
from allocations.exceptions import GatewayError, GatewayUnavailable
from lib import inflight

from .. import ledger, ratelimit
from ..billing.bill import Bill
from ..ledger import Admission, threads
from ..models import CallRecord, Outcome, Reservation
from ..pricing import Usage
from .plan import Admitted, Opening, Plan, Refused, admitted_of, refused_of
from .preflight import Early, admit_on_loop, attribute, preflight, reject_outcome, touch

__all__ = [
    "Admitted",
    "Early",
    "Plan",
    "Refused",
    "abandon",
    "admit",
    "refuse",
    "reject_outcome",
    "release",
    "settle",
    "settle_lost",
]

logger = logging.getLogger(__name__)


# --- admit -----------------------------------------------------------------------------------


# Settlements of admissions whose caller left (strong references; a draining server waits for them).
_abandoned = inflight.tasks("abandoned admissions")


async def admit(plan: Plan, *, detached: bool = False, early: Early | None = None) -> Admitted | Refused:
    """SPEC 3 steps 3-10 and the admission, on the event loop when the call is warm, else on an
    accounting thread (retried once on a new connection; then GatewayUnavailable is raised).

    If the caller goes away meanwhile, the step still runs to its end (cut short, an admission
    could commit unseen and leave a reservation with no record); a call admitted that way is
    settled at once as client_cancelled (499, no usage: nothing went upstream). `detached`: the
    caller already runs in a task its request cannot cancel, so the step runs in it (without a
    task and a shield of its own), and the caller, told that its client left, gives the answer
    to `abandon`.

    `early`: a future the warm path answers, as its statement leaves, with (the allocation, the
    body that goes upstream): what the call is sent as if the statement admits it, for work of the
    caller's that can run while PostgreSQL decides (its waiters run in the loop's next turn, after
    the statement was written). Left unanswered on the thread path. Only a value: the call may
    still be refused, or admitted on the thread path with another allocation or body."""
    if detached:
        return await _admit(plan, Opening(estimate=plan.estimate), early)
    opening = asyncio.ensure_future(_admit(plan, Opening(estimate=plan.estimate), early))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_settle_abandoned)
        raise


async def abandon(answer: Admitted | Refused) -> None:
    """The answer to an admission whose client left meanwhile: an admitted call is settled as
    client_cancelled (499, no usage); a refused one is not recorded (as when `admit` is cancelled)."""
    if isinstance(answer, Admitted):
        await settle(answer, outcome=Outcome.CLIENT_CANCELLED, status_code=499, usage=Usage())


def _settle_abandoned(opening: asyncio.Future) -> None:
    if opening.cancelled() or opening.exception() is not None or not isinstance(opening.result(), Admitted):
        return
    task = asyncio.ensure_future(abandon(opening.result()))
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


async def _admit(plan: Plan, opening: Opening, early: Early | None = None) -> Admitted | Refused:
    if plan.refusal is None and plan.lease_s is None:
        try:
            if await admit_on_loop(plan, opening, early):
                return admitted_of(plan, opening)
        except Exception:  # noqa: BLE001 - e.g. Redis or the database unreachable: the thread path decides
            opening.in_doubt = True  # the statement may have committed before its connection failed
            logger.warning(
                "admission on the event loop failed for %s; taking the thread path", plan.request_id, exc_info=True
            )
    try:
        answer = await _admit_on_thread(plan, opening)
    except BaseException:
        await _give_back(opening)
        raise
    if isinstance(answer, Refused):
        await _give_back(opening)
    return answer


async def _give_back(opening: Opening) -> None:
    """A rate-limit place or a reservation the event loop took before the thread path refused."""
    if opening.rate_ticket is not None:
        ticket, opening.rate_ticket = opening.rate_ticket, None
        await ratelimit.settle_async(ticket, tokens=0)
    if opening.admission is not None:
        held, opening.admission = opening.admission, None
        await threads.run(ledger.release, admission=held)


async def _admit_on_thread(plan: Plan, opening: Opening) -> Admitted | Refused:
    try:
        return await threads.run(admit_on_thread, plan=plan, opening=opening)
    except DatabaseError:
        opening.in_doubt = True
        logger.warning("preflight of %s lost its database connection; retrying once", plan.request_id, exc_info=True)
    try:
        return await threads.run(admit_again, plan=plan, opening=opening)
    except DatabaseError as error:
        raise GatewayUnavailable("the gateway's database is unavailable; retry shortly") from error


def admit_again(*, plan: Plan, opening: Opening) -> Admitted | Refused:
    """admit_on_thread on a new connection: after one was terminated or lost, this thread's may be dead too."""
    connection.close()
    return admit_on_thread(plan=plan, opening=opening)


def admit_on_thread(*, plan: Plan, opening: Opening | None = None) -> Admitted | Refused:
    """The whole preflight, synchronously: every refusal is decided here. `opening`: what the
    event loop's attempt resolved and took (kept: the rate limits are not asked twice)."""
    opening = opening or Opening(estimate=plan.estimate)
    try:
        if plan.refusal is not None:
            attribute(plan, opening, None)
            raise plan.refusal
        preflight(plan, opening, None)
    except GatewayError as error:
        return refused_of(error, opening)
    assert opening.scope is not None  # resolved by an admitted preflight
    touch(opening.scope.key_id, plan.started_at)
    return admitted_of(plan, opening)


# --- refuse, settle, release -----------------------------------------------------------------


async def refuse(plan: Plan, refused: Refused | GatewayError, *, status_code: int | None = None) -> None:
    """A refused call's record (no usage, no counter), on an accounting thread. A bare error (a
    refusal the relay decided itself) is attributed to its key and allocation as far as they
    resolve. `status_code`: the record's, when it is not the error's HTTP status (a close code)."""
    await threads.run(record_refusal, plan=plan, refused=refused, status_code=status_code)


def record_refusal(*, plan: Plan, refused: Refused | GatewayError, status_code: int | None) -> None:
    if isinstance(refused, GatewayError):
        opening = Opening(estimate=plan.estimate)
        attribute(plan, opening, None)
        refused = refused_of(refused, opening)
    error = refused.error
    if refused.in_doubt and CallRecord.objects.filter(request_id=plan.request_id, started_at=plan.started_at).exists():
        return  # the attempt that failed had recorded the refusal
    record = plan.identity(refused.key_id, refused.member_id, refused.entry)
    ledger.record_reject(
        record={
            **record,
            "outcome": reject_outcome(error),
            "status_code": error.status if status_code is None else status_code,
            "error_code": error.code,
            "error_message": error.message[:1000],
        }
    )


async def settle(
    admitted: Admitted,
    *,
    outcome: str,
    status_code: int,
    usage: Usage,
    error_code: str = "",
    error_message: str = "",
    entry: ScopedAllocation | None = None,
    attempts: int = 0,
    ttft_ms: int | None = None,
    close_reason: str | None = None,
    admission: Admission | None = None,
    alone: bool = False,
    billed: Bill | None = None,
) -> None:
    """The call's one record, its counters and its reservation's release, and its rate-limit
    place given back with the tokens it used. `entry`: the deployment that served it (routed),
    `attempts`: the upstream attempts made; `ttft_ms`: a stream's time to its first event relayed;
    `admission`: the reservation as it stands now (a session's grows); `alone`: no other call of
    the caller's process is in flight (one call at a time: its statement is written at once,
    quota.ledger.loop); `billed`: `usage`'s bill at the admission's price when the caller made it
    (quota.billing.bill; the call is not priced again). A call settles on the event loop when it
    holds a reservation (grouped with the settlements waiting), else on a thread, spooled if the
    database fails there too; a session settles on a thread and writes nothing when the sweeper
    has billed it already."""
    if admitted.rate_ticket is not None:
        await ratelimit.settle_async(admitted.rate_ticket, tokens=usage.total_tokens)
    # The identity's new dict, its outcome's fields then set in it (a dict display merging it would
    # make a second dict: ~2 k instructions more).
    record = admitted.plan.identity(admitted.key_id, admitted.member_id, entry or admitted.entry, attempts)
    record["outcome"] = outcome
    record["status_code"] = status_code
    record["error_code"] = error_code
    record["error_message"] = error_message[:1000]
    record["ttft_ms"] = ttft_ms
    held = admission or admitted.admission
    if admitted.plan.lease_s is None:
        await ledger.settle_async(
            admission=held, record=record, usage=usage, price=admitted.price, alone=alone, billed=billed
        )
        return
    await threads.run(
        session_settle,
        admission=held,
        record={**record, "close_reason": close_reason},
        usage=usage,
        price=admitted.price,
        billed=billed,
    )


def session_settle(
    *, admission: Admission, record: dict, usage: Usage, price: Any, billed: Bill | None = None
) -> CallRecord | None:
    """A session's settlement; None when the sweeper already billed it (its reservation is gone
    and its record written). `billed`: the session's bill when its caller made it."""
    with transaction.atomic():
        held = list(Reservation.objects.select_for_update().filter(pk=admission.reservation_id).values("pk"))
        if (
            not held
            and CallRecord.objects.filter(request_id=record["request_id"], endpoint=record["endpoint"]).exists()
        ):
            return None
        return ledger.settle(
            admission=admission, record=record, usage=usage, price=price, now=timezone.now(), billed=billed
        )


async def release(admitted: Admitted) -> None:
    """Gives an admission back unused: its rate-limit place and its reservation (no record)."""
    if admitted.rate_ticket is not None:
        await ratelimit.settle_async(admitted.rate_ticket, tokens=0)
    await threads.run(ledger.release, admission=admitted.admission)


async def settle_lost(reservation_ids: list[uuid.UUID]) -> int:
    """Calls still unsettled at the end of a shutdown grace become their `worker_lost` records now
    (billed at the admission's estimate); a settlement still writing holds its row and is skipped."""
    if not reservation_ids:
        return 0
    return await threads.run(ledger.reservations_settle_lost, reservation_ids=reservation_ids)
