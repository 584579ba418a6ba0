"""The values of an admission: the `Plan` a relay hands in, the `Admitted` or `Refused` it gets
back, and the `Opening` the preflight fills while it decides (private to quota.admission)."""

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from allocations.access import (
    KeyScope,
    ScopedAllocation,
)
from allocations.exceptions import (
    GatewayError,
)
from lib.frozen import quick_init
from lib.ids import uuid4

from .. import ratelimit
from ..ledger import Admission
from ..pricing import Usage

# --- the values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One call as its relay describes it before admission."""

    request_id: str
    endpoint: str  # the call record's endpoint, e.g. "chat.completions", "realtime"
    surface: str  # what a kind refusal names, e.g. "/v1/chat/completions"
    kinds: frozenset[str]  # model kinds the endpoint serves (step 9)
    plaintext: str  # the bearer key ("": none, or a malformed one)
    model: str  # as the client named it ("": none)
    started_at: dt.datetime
    # allocations.access.key_digest(plaintext) when the relay holds it already ("": hashed when needed)
    key_digest: str = ""
    stream: bool = False
    estimate: Usage = Usage()  # what the request would use, before its options are judged
    body: dict | None = None  # judged for its cost-bearing options (quota.options); None: none to judge
    refusal: GatewayError | None = None  # decided before admission (a malformed bearer or body)
    # A session (realtime): nothing reserved up front, a lease the session renews, and a place among
    # the calls in flight without a request counted (its response.create count).
    lease_s: float | None = None
    # Chosen before the first attempt: an attempt that fails without telling whether its admission
    # committed is looked up by it, so the call is never admitted twice.
    reservation_id: uuid.UUID = field(default_factory=uuid4)

    def identity(
        self, key_id: str | None, member_id: str | None, entry: ScopedAllocation | None, attempts: int = 0
    ) -> dict[str, Any]:
        """A call record's identifying fields, as far as they are known."""
        return {
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "started_at": self.started_at,
            "is_stream": self.stream,
            "api_key_id": key_id,
            "member_id": member_id,
            "allocation_id": entry.allocation_id if entry else None,
            "model_id": entry.model_id if entry else None,
            "deployment_id": entry.deployment_id if entry and attempts else None,
            "attempts": attempts,
        }


@quick_init
@dataclass(frozen=True)
class Admitted:
    """An admitted call: its reservation and what its settlement needs."""

    plan: Plan
    key_id: str
    member_id: str
    entry: ScopedAllocation
    price: Any  # the price version in force (None: unpriced)
    admission: Admission
    estimate: Usage  # what the reservation holds
    removed: tuple[str, ...] = ()  # tools the options' judgement took out of the body
    sent: dict | None = None  # the body to send upstream instead of the plan's (None: the plan's)
    rate_headers: dict[str, str] | None = None  # the x-ratelimit-* headers (limited allocations)
    rate_ticket: ratelimit.Ticket | None = None  # its place in the limits, given back when it settles

    @property
    def outgoing(self) -> dict | None:
        """The body that goes upstream: the client's, less what the judgement removed."""
        return self.plan.body if self.sent is None else self.sent


@dataclass(frozen=True)
class Refused:
    """A refused call: the error, and who asked as far as the preflight resolved it."""

    error: GatewayError
    key_id: str | None = None
    member_id: str | None = None
    entry: ScopedAllocation | None = None
    rate_headers: dict[str, str] | None = None
    in_doubt: bool = False  # an earlier attempt failed unseen: it may have recorded the refusal


@dataclass
class Opening:
    """What the preflight has resolved so far (private to one admission)."""

    estimate: Usage
    scope: KeyScope | None = None
    entry: ScopedAllocation | None = None
    price: Any = None
    admission: Admission | None = None
    rate: ratelimit.Decision | None = None
    rate_ticket: ratelimit.Ticket | None = None
    rate_limits: ratelimit.Limits | None = None  # what `rate` was asked under (the event loop's answer)
    removed: tuple[str, ...] = ()
    sent: dict | None = None
    in_doubt: bool = False


def admitted_of(plan: Plan, opening: Opening) -> Admitted:
    scope, entry, admission = opening.scope, opening.entry, opening.admission
    assert scope is not None and entry is not None and admission is not None  # an admitted preflight's
    return Admitted(
        plan=plan,
        key_id=scope.key_id,
        member_id=scope.member_id,
        entry=entry,
        price=opening.price,
        admission=admission,
        estimate=opening.estimate,
        removed=opening.removed,
        sent=opening.sent,
        rate_headers=opening.rate.headers if opening.rate is not None else None,
        rate_ticket=opening.rate_ticket,
    )


def refused_of(error: GatewayError, opening: Opening) -> Refused:
    scope = opening.scope
    return Refused(
        error=error,
        key_id=scope.key_id if scope else None,
        member_id=scope.member_id if scope else None,
        entry=opening.entry,
        rate_headers=opening.rate.headers if opening.rate is not None else None,
        in_doubt=opening.in_doubt,
    )
