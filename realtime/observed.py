"""The realtime side of ops.observe: a session's open, its refusal and its settlement, reported."""

from decimal import Decimal

from django.utils import timezone

from allocations.exceptions import GatewayError
from ops import observe
from quota.admission import reject_outcome
from quota.pricing import Usage

from . import services
from .close import close_code_for


def opened() -> None:
    observe.session_opened()


def refused(*, request_id: str, error: GatewayError) -> None:
    observe.call_refused(
        request_id=request_id,
        endpoint=services.ENDPOINT,
        allocation_id=None,
        model="",
        outcome=reject_outcome(error),
        status=int(close_code_for(error)),
        code=error.code,
    )


def finished(
    session: services.Session,
    *,
    usage: Usage,
    cost: Decimal | None,
    outcome: str,
    reason: str,
    code: int,
    error: str,
    live: bool,
) -> None:
    """`cost`: the session's bill's (None: unpriced), as its record carries it; `live`: the session
    had been relaying (counted open) when it finished."""
    if live:
        observe.session_closed()
    observe.call_finished(
        request_id=session.request_id,
        endpoint=services.ENDPOINT,
        allocation_id=session.entry.allocation_id,
        model=session.entry.model_slug,
        provider=session.entry.provider.id,
        outcome=outcome,
        status=code,
        usage=usage,
        cost=cost,
        elapsed_s=(timezone.now() - session.started_at).total_seconds(),
        upstream_s=None,
        code=error,
        stream=True,
        admitted=False,
        close_reason=reason,
    )
