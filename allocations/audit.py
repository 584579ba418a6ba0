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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from django.contrib.auth.models import AnonymousUser
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from lib.http import client_ip, request_id_of

from .models import AuditEvent, Member


@dataclass(frozen=True)
class AuditContext:
    source_ip: str | None = None
    request_id: str = ""


NO_CONTEXT = AuditContext()


@dataclass(frozen=True)
class NamedActor:
    """An actor that is no member (single sign-on creating a member: "sso"): its events carry its
    name and no member."""

    username: str
    pk: None = None


# Who acted: a member, an anonymous visitor, a named non-member, or nobody (a command or task: "system").
Actor: TypeAlias = Member | AnonymousUser | NamedActor | None

_context: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


@contextlib.contextmanager
def audit_context(*, source_ip: str | None = None, request_id: str = "") -> Iterator[None]:
    token = _context.set(AuditContext(source_ip=source_ip, request_id=request_id))
    try:
        yield
    finally:
        _context.reset(token)


def audit_context_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Django middleware: the request's client address and request id for every audit event it writes."""

    def middleware(request: HttpRequest) -> HttpResponse:
        with audit_context(source_ip=client_ip(request), request_id=request_id_of(request)):
            response = get_response(request)
        if not response.has_header("X-Request-Id"):
            response["X-Request-Id"] = request_id_of(request)
        return response

    return middleware


def actor_member(actor: Actor) -> Member | None:
    """The member behind an actor, for a foreign key (None: an anonymous visitor or "system")."""
    return actor if isinstance(actor, Member) and actor.pk else None


def audit_record(
    *,
    actor: Actor,
    action: str,
    target: Model | None,
    before: dict | None = None,
    after: dict | None = None,
    now: datetime | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> AuditEvent:
    context = _context.get() or NO_CONTEXT
    return AuditEvent.objects.create(
        actor=actor_member(actor),
        actor_label=getattr(actor, "username", None) or "system",
        action=action,
        # A target of None comes with its target_type and target_id (a name that matched no row).
        target_type=target_type or target._meta.model_name or "",  # type: ignore[union-attr]
        target_id=target_id or str(target.pk),  # type: ignore[union-attr]
        before=before,
        after=after,
        source_ip=context.source_ip,
        request_id=context.request_id,
        created_at=now or timezone.now(),
    )
