"""Members and admin tokens: who may sign in, who governs, and the admin API's bearer tokens.

Staff = admin (SPEC section 2). The last active admin can be neither disabled nor demoted: the
check runs with every active admin's row locked, so two admins demoting each other at once
cannot both succeed. Audit events record that a password changed, never the password or its hash.
"""

import datetime as dt
import secrets
from datetime import datetime

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from lib.cache import bump_auth_generation

from .audit import Actor, audit_record
from .changes import check_known_fields
from .exceptions import BadRequest, Conflict, Forbidden
from .group_rules import group_rules_apply
from .models import AdminToken, ApiKey, Member

MEMBER_UPDATABLE = ("is_active", "is_staff", "email")
SUPERUSER_TARGET = "only a superuser may change a superuser's password, email, active or staff flag"


class LastAdmin(Conflict):
    code = "last_admin"


def password_check(*, password: str, member: Member) -> None:
    """The password policy (AUTH_PASSWORD_VALIDATORS); BadRequest naming `password` with every reason."""
    try:
        password_validation.validate_password(password, user=member)
    except ValidationError as exc:
        raise BadRequest("the password does not meet the policy", fields={"password": list(exc.messages)}) from None


def member_create(
    *,
    username: str,
    email: str = "",
    password: str | None = None,
    is_staff: bool = False,
    is_superuser: bool = False,
    actor: Actor = None,
) -> Member:
    if is_superuser:
        _superuser_only(actor, "only a superuser can make a superuser")
    username = (username or "").strip().casefold()
    if not username:
        raise BadRequest("username is required", fields={"username": ["This field is required."]})
    if Member.objects.filter(username=username).exists():
        raise BadRequest("username is taken", fields={"username": ["A member with that username already exists."]})
    with transaction.atomic():
        member = Member(username=username, email=email or "", is_staff=is_staff or is_superuser)
        member.is_superuser = is_superuser
        if password:
            password_check(password=password, member=member)
            member.set_password(password)
        else:
            member.set_unusable_password()
        member.save()
        audit_record(
            actor=actor,
            action="member_created",
            target=member,
            after={
                "username": member.username,
                "email": member.email,
                "is_staff": member.is_staff,
                "is_superuser": member.is_superuser,
            },
        )
        group_rules_apply(member=member, actor=actor)
    return member


def member_set_password(*, member: Member, password: str, actor: Actor = None) -> Member:
    """The audit event records that the password changed, never the password or its hash."""
    superuser_target_check(member=member, actor=actor)
    password_check(password=password, member=member)
    with transaction.atomic():
        member.set_password(password)
        member.save(update_fields=["password"])
        audit_record(actor=actor, action="member_password_set", target=member, after={"password": "changed"})
    return member


def _is_admin(*, is_active: bool, is_staff: bool) -> bool:
    return is_active and is_staff


def _admins() -> QuerySet[Member]:
    return Member.objects.filter(is_active=True, is_staff=True)


def _lock_admins() -> list:
    return list(_admins().select_for_update().order_by("pk").values_list("pk", flat=True))


def last_admin_check(*, member: Member, is_active: bool, is_staff: bool, lock: bool = False) -> None:
    """Raises LastAdmin when the change would leave no active admin. With lock=True (inside a
    transaction) every active admin's row is locked first, so concurrent demotions serialise."""
    if not _is_admin(is_active=member.is_active, is_staff=member.is_staff) or _is_admin(
        is_active=is_active, is_staff=is_staff
    ):
        return
    admin_ids = _lock_admins() if lock else list(_admins().values_list("pk", flat=True))
    if not [pk for pk in admin_ids if pk != member.pk]:
        raise LastAdmin("the last active admin cannot be disabled or demoted; make another admin first")


def member_update(*, member: Member, changes: dict, actor: Actor = None) -> Member:
    """Changes `is_active`, `is_staff` and/or `email`; one audit event per kind of change."""
    check_known_fields(changes, MEMBER_UPDATABLE)
    if "email" in changes:
        changes = {**changes, "email": (changes["email"] or "").strip().casefold()}
    with transaction.atomic():
        if {"is_active", "is_staff"} & set(changes):
            _lock_admins()  # before the member's own row: every demotion takes the locks in one order
        locked = Member.objects.select_for_update().get(pk=member.pk)
        changed = {f: v for f, v in changes.items() if getattr(locked, f) != v}
        if not changed:
            return locked
        superuser_target_check(member=locked, actor=actor)
        last_admin_check(
            member=locked,
            is_active=changed.get("is_active", locked.is_active),
            is_staff=changed.get("is_staff", locked.is_staff),
            lock=True,
        )
        if changed.get("is_staff") is False and locked.is_superuser:
            changed["is_superuser"] = False  # a superuser is always staff
        before = {f: getattr(locked, f) for f in changed}
        for field, value in changed.items():
            setattr(locked, field, value)
        locked.save(update_fields=list(changed))
        _audit_member_changes(locked, before, changed, actor)
        if "is_active" in changed or "is_staff" in changed:
            bump_auth_generation()
    return locked


def _audit_member_changes(member: Member, before: dict, after: dict, actor: Actor) -> None:
    if "is_active" in after:
        action = "member_enabled" if after["is_active"] else "member_disabled"
        audit_record(actor=actor, action=action, target=member, before={"is_active": before["is_active"]}, after=after)
    roles = [f for f in ("is_staff", "is_superuser") if f in after]
    if roles:
        audit_record(
            actor=actor,
            action="member_roles_updated",
            target=member,
            before={f: before[f] for f in roles},
            after={f: after[f] for f in roles},
        )
    if "email" in after:
        audit_record(
            actor=actor,
            action="member_email_updated",
            target=member,
            before={"email": before["email"]},
            after={"email": after["email"]},
        )


def member_set_active(*, member: Member, is_active: bool, actor: Actor = None) -> Member:
    return member_update(member=member, changes={"is_active": is_active}, actor=actor)


def _superuser_only(actor: Actor, message: str) -> None:
    """Actor None is an operator's command (shell access outranks any role)."""
    if actor is not None and not getattr(actor, "is_superuser", False):
        raise Forbidden(message)


def may_change_member(*, member: Member, actor: Actor) -> bool:
    """Whether `actor` may change `member`'s password, email, active or staff flag: a superuser's
    are changed by superusers only (or an operator's command, actor None), so that no staff member
    can take a superuser's account over, directly or through a password reset mail or SSO."""
    return not member.is_superuser or actor is None or bool(getattr(actor, "is_superuser", False))


def superuser_target_check(*, member: Member, actor: Actor) -> None:
    if not may_change_member(member=member, actor=actor):
        raise Forbidden(SUPERUSER_TARGET)


def member_set_roles(*, member: Member, is_staff: bool, is_superuser: bool, actor: Actor = None) -> Member:
    before = {"is_staff": member.is_staff, "is_superuser": member.is_superuser}
    after = {"is_staff": is_staff or is_superuser, "is_superuser": is_superuser}
    if before == after:
        return member
    if before["is_superuser"] != is_superuser:
        _superuser_only(actor, "only a superuser can make or unmake a superuser")
    with transaction.atomic():
        last_admin_check(member=member, is_active=member.is_active, is_staff=after["is_staff"], lock=True)
        member.is_staff, member.is_superuser = after["is_staff"], after["is_superuser"]
        member.save(update_fields=["is_staff", "is_superuser"])
        audit_record(actor=actor, action="member_roles_updated", target=member, before=before, after=after)
        bump_auth_generation()
    return member


def member_link_sso(*, member: Member, subject: str | None, actor: Actor = None) -> Member:
    """Links the member to the single sign-on identity `subject` (the IdP's `sub`), or unlinks it
    (None). Whoever holds the linked identity signs in as that account, so an admin account is
    linked by a superuser, or by its own member (signed in with the password, then at the IdP)."""
    subject = (subject or "").strip() or None
    own = actor is not None and getattr(actor, "pk", None) == member.pk
    if (member.is_staff or member.is_superuser) and not own:
        _superuser_only(actor, "only a superuser may link an admin account to a single sign-on identity")
    if subject and Member.objects.filter(sso_subject=subject).exclude(pk=member.pk).exists():
        raise Conflict(
            "that identity is linked to another member", fields={"sso_subject": ["Linked to another member."]}
        )
    before = member.sso_subject
    if before == subject:
        return member
    with transaction.atomic():
        member.sso_subject = subject
        member.save(update_fields=["sso_subject"])
        action = "member_sso_linked" if subject else "member_sso_unlinked"
        audit_record(
            actor=actor, action=action, target=member, before={"sso_subject": before}, after={"sso_subject": subject}
        )
    return member


# --- admin tokens --------------------------------------------------------------------------------


def admin_token_create(
    *, user: Member, actor: Actor = None, expires_days: int | None = None, now: datetime | None = None
) -> str:
    """Mints a token for `user` and returns its plaintext (stored only hashed). The audit actor is
    whoever minted it (None = an operator's command). Only a superuser mints for someone else."""
    if actor is not None and actor.pk != user.pk:
        _superuser_only(actor, "only a superuser can mint an admin token for someone else")
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise BadRequest("invalid expiry", fields={"expires_days": ["A whole number of days from 1 to 3650."]})
    now = now or timezone.now()
    plaintext = "gwadm-" + secrets.token_urlsafe(32)
    expires_at = now + dt.timedelta(days=expires_days) if expires_days else None
    with transaction.atomic():
        token = AdminToken.objects.create(
            user=user, prefix=plaintext[:12], token_hash=ApiKey.hash(plaintext), expires_at=expires_at
        )
        audit_record(
            actor=actor,
            action="admin_token_created",
            target=token,
            now=now,
            after={"prefix": token.prefix, **({"expires_at": expires_at.isoformat()} if expires_at else {})},
        )
    return plaintext


def admin_token_revoke(*, token: AdminToken, actor: Actor = None, now: datetime | None = None) -> AdminToken:
    if token.revoked_at is not None:
        return token
    token.revoked_at = now or timezone.now()
    with transaction.atomic():
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="admin_token_revoked",
            target=token,
            before={"revoked": False},
            after={"revoked": True},
            now=token.revoked_at,
        )
    return token
