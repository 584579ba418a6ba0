"""Invitations: a single-use link, valid 48 hours, with which a member sets a password that meets
the policy (AUTH_PASSWORD_VALIDATORS) and is signed in. Only the link's SHA-256 is stored.
Issuing a new invitation ends the member's earlier unused ones."""

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from .audit import Actor, actor_member, audit_record
from .exceptions import BadRequest, GatewayError
from .members import password_check
from .models import Invitation, Member

VALID_FOR = timedelta(hours=48)
# Mail backends that deliver nothing: with these (the embedded default) no invitation is mailed.
NOT_MAILING = ("django.core.mail.backends.console.EmailBackend", "django.core.mail.backends.dummy.EmailBackend")


class InvitationGone(GatewayError):
    code, status, type = "invitation_invalid", 410, "invalid_request_error"


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str
    mailed: bool


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mail_configured() -> bool:
    return settings.EMAIL_BACKEND not in NOT_MAILING


def invitation_issue(
    *, member: Member, url_for: Callable[[str], str], actor: Actor = None, now: datetime | None = None
) -> IssuedInvitation:
    """A new link for `member`; `url_for(token)` makes it absolute. Mailed when mail is configured
    and the member has an address."""
    if not member.is_active:
        raise BadRequest("a disabled member cannot be invited", fields={"member": ["Enable the member first."]})
    now = now or timezone.now()
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        Invitation.objects.filter(member=member, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
        invitation = Invitation.objects.create(
            member=member, token_hash=_hash(token), expires_at=now + VALID_FOR, created_by=actor_member(actor)
        )
        mailed = bool(member.email) and mail_configured()
        audit_record(
            actor=actor,
            action="invitation_issued",
            target=member,
            now=now,
            after={"invitation": str(invitation.pk), "expires_at": invitation.expires_at.isoformat(), "mailed": mailed},
        )
    if mailed:
        transaction.on_commit(lambda: _mail(member=member, url=url_for(token), expires_at=invitation.expires_at))
    return IssuedInvitation(invitation=invitation, token=token, mailed=mailed)


def _mail(*, member: Member, url: str, expires_at: datetime) -> None:
    body = (
        f"Hello {member.get_username()},\n\n"
        "you are invited to the organisation's AI API gateway. Open this link to set your password "
        f"and sign in:\n\n{url}\n\nThe link works once, until {expires_at:%Y-%m-%d %H:%M} UTC.\n"
    )
    send_mail("Your invitation to the AI API gateway", body, settings.DEFAULT_FROM_EMAIL, [member.email])


def invitation_valid(*, token: str, now: datetime | None = None) -> Invitation:
    """The unused, unexpired invitation of an active member for this link; InvitationGone otherwise."""
    now = now or timezone.now()
    found = Invitation.objects.select_related("member").filter(token_hash=_hash(token or "")).first()
    if found is None or found.used_at is not None or found.expires_at <= now or not found.member.is_active:
        raise InvitationGone("this invitation link is not valid: it was used, it expired or it was replaced")
    return found


def invitation_accept(*, token: str, password: str, now: datetime | None = None) -> Member:
    """Sets the member's password (the policy applies) and uses the invitation up."""
    now = now or timezone.now()
    with transaction.atomic():
        invitation = invitation_valid(token=token, now=now)
        invitation = Invitation.objects.select_for_update().select_related("member").get(pk=invitation.pk)
        if invitation.used_at is not None:
            raise InvitationGone("this invitation link was already used")
        member = invitation.member
        password_check(password=password, member=member)
        member.set_password(password)
        member.save(update_fields=["password"])
        invitation.used_at = now
        invitation.save(update_fields=["used_at"])
        audit_record(
            actor=member, action="invitation_used", target=member, now=now, after={"invitation": str(invitation.pk)}
        )
    return member
