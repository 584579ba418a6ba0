"""The one way to write an audit event, and where its request context comes from.

Every event carries who acted, from which client address and under which request id. Services
are called from admin, the admin API, the portal, commands and tasks; rather than thread the
address and the request id through every service signature, the request's middleware
(`audit_context_middleware`) puts them in a context variable for the request's duration and
`audit_record` reads them from there. Outside a request (commands, Celery tasks) there is no
address, the request id is the one the caller opened with `audit_context(...)` or blank, and
an actor-less event is labelled "system".
"""

import contextlib
import contextvars
from dataclasses import dataclass

from django.utils import timezone

from lib.http import client_ip, request_id_of

from .models import AuditEvent


@dataclass(frozen=True)
class AuditContext:
    source_ip: str | None = None
    request_id: str = ""


NO_CONTEXT = AuditContext()
_context: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


@contextlib.contextmanager
def audit_context(*, source_ip: str | None = None, request_id: str = ""):
    token = _context.set(AuditContext(source_ip=source_ip, request_id=request_id))
    try:
        yield
    finally:
        _context.reset(token)


def audit_context_middleware(get_response):
    """Django middleware: the request's client address and request id for every audit event it writes."""

    def middleware(request):
        with audit_context(source_ip=client_ip(request), request_id=request_id_of(request)):
            response = get_response(request)
        if not response.has_header("X-Request-Id"):
            response["X-Request-Id"] = request_id_of(request)
        return response

    return middleware


def audit_record(
    *,
    actor,
    action: str,
    target,
    before: dict | None = None,
    after: dict | None = None,
    now=None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> AuditEvent:
    context = _context.get() or NO_CONTEXT
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=getattr(actor, "username", None) or "system",
        action=action,
        target_type=target_type or target._meta.model_name,
        target_id=target_id or str(target.pk),
        before=before,
        after=after,
        source_ip=context.source_ip,
        request_id=context.request_id,
        created_at=now or timezone.now(),
    )
