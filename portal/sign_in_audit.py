"""Audit of every sign-in, failed sign-in and sign-out, whatever the path (portal, Django admin,
single sign-on). These hang on django.contrib.auth's own signals because the sign-in code is
Django's: its login views and forms are used as they are."""

from typing import Any

from django.contrib.auth import signals
from django.http import HttpRequest
from django.utils import timezone

from allocations.audit import audit_record
from allocations.models import Member

SIGNED_IN_AT = "signed_in_at"
SIGNED_IN_UID = "portal.sign_in_audit.in"


def _method(user: Member) -> str:
    return "sso" if getattr(user, "backend", "").endswith("GatewayOIDCBackend") else "password"


def _signed_in(sender: type, request: HttpRequest | None, user: Member, **kwargs: Any) -> None:
    now = timezone.now()
    if request is not None:
        request.session[SIGNED_IN_AT] = now.timestamp()
    audit_record(
        actor=user,
        action="login_succeeded",
        target=user,
        after={"method": _method(user)},
        now=now,
    )


def _sign_in_failed(
    sender: str, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    username = (credentials.get("username") or "").strip().casefold()
    if not username:  # single sign-on failures are audited with their reason by the backend
        return
    audit_record(
        actor=None,
        action="login_failed",
        target=None,
        target_type="member",
        target_id=username[:64],
        after={"method": "password"},
    )


def _signed_out(sender: type, request: HttpRequest | None, user: Member | None, **kwargs: Any) -> None:
    if user is None:
        return
    audit_record(
        actor=user,
        action="logged_out",
        target=user,
    )


def connect() -> None:
    signals.user_logged_in.connect(_signed_in, dispatch_uid=SIGNED_IN_UID)
    signals.user_login_failed.connect(_sign_in_failed, dispatch_uid="portal.sign_in_audit.failed")
    signals.user_logged_out.connect(_signed_out, dispatch_uid="portal.sign_in_audit.out")
