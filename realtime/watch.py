"""The watch of an open realtime session: within a second of a revocation, a pause, a key or
member change, or a cap reached by everything in flight, the session is closed and billed.

A mixin of the consumer: it polls the auth generation every tick (one prepared read on the event
loop's database connections, shared by every session of the loop waiting for one), grows or renews
the session's reservation as the meter moves, and re-reads key, member and allocation when the
generation changed or every FULL_CHECK_S regardless (the read failing)."""

import asyncio
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from allocations.access import STATUS_ERRORS, key_scope_cached
from allocations.exceptions import GatewayError
from quota import ledger, ratelimit
from quota.admission import reject_outcome
from quota.billing import caps
from quota.exceptions import CostQuotaExceeded, QuotaExceeded
from quota.group_budgets import GroupHeadroom, group_cap_verdict
from quota.ledger import threads
from quota.periods import period_start_date
from quota.pricing import cost_for

from . import services
from .close import CloseCode, watch_close_reason
from .meter import SessionMeter

if TYPE_CHECKING:
    from quota.models import CloseReason, Outcome

logger = logging.getLogger(__name__)

TICK_S = 0.25  # auth-generation poll; caps and renewals every CHECK_EVERY ticks
CHECK_EVERY = 2
FULL_CHECK_S = 5.0  # key/member/allocation re-read even when no generation bump was seen
RENEW_S = services.LEASE_S / 3
_COLD = object()  # the gate's answer when the warm state cannot decide


class SessionWatch:
    """Needs from the consumer: its meter, request id, opened session and `_finish`."""

    meter: SessionMeter
    request_id: str
    plaintext: str
    billed_version: int
    renewed_at: float
    capped: bool
    generation_lost: bool

    if TYPE_CHECKING:

        @property
        def opened(self) -> services.Session: ...

        async def _finish(self, close_reason: CloseReason, outcome: Outcome, code: int, **kwargs: Any) -> None: ...

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        generation, last_full, tick = await self._generation(), loop.time(), 0
        while True:
            await asyncio.sleep(TICK_S)
            tick += 1
            current = await self._generation()
            # A generation that cannot be read (the database away) is covered by the periodic full check.
            full = (current is not None and current != generation) or loop.time() - last_full >= FULL_CHECK_S
            if not full and tick % CHECK_EVERY and self.meter.version == self.billed_version:
                continue
            generation = current if current is not None else generation
            last_full = loop.time() if full else last_full
            try:
                reason = await self._check(full=full)
            except Exception:  # a database hiccup must not end the watch: the next tick retries
                logger.exception("realtime session %s: watch check failed", self.request_id)
                continue
            if reason:
                return await self._close_for(reason)

    async def _generation(self) -> int | None:
        # On the event loop, one read shared by every session waiting for it.
        try:
            generation = await ledger.generation_begin()
        except Exception:  # noqa: BLE001 - the database away: the watch's periodic full check covers it
            if not self.generation_lost:  # say it once, not four times a second
                logger.warning("realtime session %s: auth generation unreadable", self.request_id)
            self.generation_lost = True
            return None
        self.generation_lost = False
        return generation

    async def _check(self, *, full: bool) -> GatewayError | None:
        """One watch step: grow/renew the reservation, then ask whether the session must end."""
        session = self.opened
        now_mono = asyncio.get_running_loop().time()
        usage = None
        renew = now_mono - self.renewed_at >= RENEW_S
        if self.meter.version != self.billed_version or renew:
            self.billed_version = self.meter.version
            usage = self.meter.usage(session.price)
        if renew:
            self.renewed_at = now_mono
            if session.rate_ticket is not None:  # its slot among the calls in flight outlives the lease
                await ratelimit.renew_async(session.rate_ticket, lease_s=services.LEASE_S)
        state = await threads.run(services.session_watch, session=session, usage=usage, full=full, now=timezone.now())
        self.capped = state.capped
        return state.reason

    async def _gate(self) -> GatewayError | None:
        """The check before billable work starts (a response.create, a committed buffer): whether a
        cap is reached by everything in flight, counting what this session used since its
        reservation last grew. From the warm state a /v1 admission uses: the key's snapshot under
        the current auth generation (one shared read) for the allocation's status and caps
        and the member's groups' caps, and one prepared read of the counter rows (the allocation's,
        and the capped groups' of the period) on the event loop's connection; the reservation
        itself grows at the next tick. Without a warm snapshot (the
        generation moved, the key changed) or on any error, the watch's own check decides."""
        try:
            reason = await self._gate_warm()
        except Exception:  # noqa: BLE001 - the loop connection away: the thread path decides
            logger.warning("realtime session %s: warm cap check failed", self.request_id, exc_info=True)
            reason = _COLD
        if reason is _COLD:
            return await self._check(full=False)
        return reason  # type: ignore[return-value]  # not _COLD here

    async def _gate_warm(self) -> GatewayError | None | object:  # object: _COLD
        session = self.opened
        generation = await ledger.generation_begin()
        now = timezone.now()
        scope = key_scope_cached(self.plaintext, generation=generation, now=now) if generation else None
        entry = (
            next((a for a in scope.allocations if a.allocation_id == session.entry.allocation_id), None)
            if scope is not None
            else None
        )
        if entry is None:
            return _COLD
        if (status_error := STATUS_ERRORS.get(entry.status)) is not None:
            return status_error
        # The member's capped groups as the snapshot has them (any group, membership or cap change
        # moves the auth generation): what the thread check reads from the database. As there,
        # groups are checked for a session that counts toward groups (a member who joined one
        # since is checked at the watch's next full check).
        budgets = [g for g in scope.groups if g.capped] if session.admission.groups else []  # type: ignore[union-attr]  # an entry: a scope
        if entry.token_cap is None and entry.cost_cap is None and not budgets:
            return None
        admission = session.admission
        if budgets:
            counter, group_rows = await ledger.counters_read_async(
                admission.counter_id, group_ids=[g.id for g in budgets], period=period_start_date(now)
            )
        else:
            counter, group_rows = await ledger.counter_read_async(admission.counter_id), {}
        if counter is None:
            return _COLD
        tokens_used, tokens_reserved, cost_used, cost_reserved = counter
        tokens, cost = admission.tokens, admission.cost  # the session's reservation, as grown at the next tick
        if self.meter.version != self.billed_version:  # used since the reservation last grew
            usage = self.meter.usage(session.price)
            tokens = max(tokens, usage.total_tokens)
            cost = max(cost, cost_for(session.price, usage) or Decimal(0))
        grown_tokens, grown_cost = tokens - admission.tokens, cost - admission.cost
        priced = session.price is not None
        hit = caps.caps_hit(
            tokens_used=tokens_used,
            tokens_reserved=tokens_reserved + grown_tokens,
            token_cap=entry.token_cap,
            cost_used=cost_used,
            cost_reserved=cost_reserved + grown_cost,
            cost_cap=entry.cost_cap,
            priced=priced,
        )
        if hit:
            return {caps.TOKENS: QuotaExceeded(), caps.COST: CostQuotaExceeded()}[hit]
        held = set(admission.held)
        headroom = []
        for group in budgets:
            found = group_rows.get(group.id)
            row = None
            if found is not None:
                row = found[1]
                if found[0] in held:  # its counter holds the reservation: the growth is added to it
                    row = (row[0], row[1] + grown_tokens, row[2], row[3] + grown_cost)
            headroom.append(
                GroupHeadroom(group.slug, group.token_cap, group.cost_cap, row, found is not None and found[0] in held)
            )
        return group_cap_verdict(headroom, priced=priced, tokens=tokens, cost=cost)

    async def _close_for(self, error: GatewayError) -> None:
        await self._finish(
            watch_close_reason(error),
            reject_outcome(error),
            CloseCode.POLICY,
            reason=error.code,
            error_code=error.code,
            cut=True,
        )
