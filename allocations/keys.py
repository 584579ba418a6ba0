"""Writes to API keys: create, rotate, rename, expire, revoke. Each one audits."""

import secrets
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from lib.cache import bump_auth_generation

from .audit import Actor, audit_record
from .exceptions import BadRequest, InvalidTransition, ScopeConflict, ScopeForbidden
from .members import (  # noqa: F401  (members and admin tokens are governed in .members; callers use services)
    admin_token_create,
    admin_token_revoke,
    member_create,
    member_set_active,
    member_set_password,
    member_set_roles,
    member_update,
)
from .models import Allocation, ApiKey, ApiKeyScope, Member

# --- API keys ------------------------------------------------------------------------------------


def _new_plaintext_key() -> str:
    # 32 random bytes -> 43 url-safe characters.
    return ApiKey.PLAINTEXT_PREFIX + secrets.token_urlsafe(32)


def _check_scope(*, member: Member, allocations: Iterable[Allocation]) -> list[Allocation]:
    allocations = list(allocations)
    if not allocations:
        raise BadRequest("a key needs at least one allocation", fields={"allocations": ["Choose at least one."]})
    if any(a.member_id != member.pk for a in allocations):
        raise ScopeForbidden("a key may only be scoped to its owner's allocations")
    if any(a.status == Allocation.Status.REVOKED for a in allocations):
        raise BadRequest("a revoked allocation cannot be added to a key", fields={"allocations": ["Revoked."]})
    model_ids = [a.model_id for a in allocations]
    if len(set(model_ids)) != len(model_ids):
        raise ScopeConflict("a key may hold at most one allocation per model")
    return allocations


def _check_expiry(expires_at: datetime | None, now: datetime) -> None:
    if expires_at is not None and (timezone.is_naive(expires_at) or expires_at <= now):
        raise BadRequest("expires_at must be in the future", fields={"expires_at": ["A future date and time."]})


def api_key_create(
    *,
    member: Member,
    name: str,
    allocations: Iterable[Allocation],
    actor: Actor = None,
    is_default: bool = False,
    now: datetime | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Returns (key, plaintext). The plaintext exists only in this return value."""
    allocations = _check_scope(member=member, allocations=allocations)
    _check_expiry(expires_at, now or timezone.now())
    name = (name or "").strip()
    if not name:
        raise BadRequest("name is required", fields={"name": ["This field is required."]})
    plaintext = _new_plaintext_key()
    with transaction.atomic():
        key = ApiKey.objects.create(
            member=member,
            name=name[:100],
            prefix=plaintext[:12],
            key_hash=ApiKey.hash(plaintext),
            is_default=is_default,
            expires_at=expires_at,
        )
        ApiKeyScope.objects.bulk_create(
            [ApiKeyScope(api_key=key, allocation=a, model_id=a.model_id) for a in allocations]
        )
        audit_record(
            actor=actor,
            action="key_created",
            target=key,
            now=now,
            after={
                "name": key.name,
                "prefix": key.prefix,
                "allocations": [str(a.pk) for a in allocations],
                "expires_at": _iso(expires_at),
            },
        )
    return key, plaintext


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def api_key_set_expiry(
    *, key: ApiKey, expires_at: datetime | None, actor: Actor = None, now: datetime | None = None
) -> ApiKey:
    """Sets or clears (None) when the key stops working; an expired key answers 401."""
    if key.is_revoked:
        raise InvalidTransition("a revoked key cannot be changed")
    if key.expires_at == expires_at:
        return key
    _check_expiry(expires_at, now or timezone.now())
    before = {"expires_at": _iso(key.expires_at)}
    key.expires_at = expires_at
    with transaction.atomic():
        key.save(update_fields=["expires_at"])
        audit_record(
            actor=actor, action="key_expiry_updated", target=key, before=before, after={"expires_at": _iso(expires_at)}
        )
        bump_auth_generation()
    return key


def api_key_rotate(*, key: ApiKey, actor: Actor = None, now: datetime | None = None) -> tuple[ApiKey, str]:
    if key.is_revoked:
        raise InvalidTransition("a revoked key cannot be rotated")
    now = now or timezone.now()
    plaintext = _new_plaintext_key()
    before = {"prefix": key.prefix}
    key.prefix, key.key_hash, key.rotated_at = plaintext[:12], ApiKey.hash(plaintext), now
    with transaction.atomic():
        key.save(update_fields=["prefix", "key_hash", "rotated_at"])
        audit_record(
            actor=actor, action="key_rotated", target=key, before=before, after={"prefix": key.prefix}, now=now
        )
        bump_auth_generation()
    return key, plaintext


def api_key_revoke(*, key: ApiKey, actor: Actor = None, now: datetime | None = None) -> ApiKey:
    if key.is_revoked:
        return key
    now = now or timezone.now()
    key.revoked_at = now
    with transaction.atomic():
        key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor, action="key_revoked", target=key, before={"revoked": False}, after={"revoked": True}, now=now
        )
        bump_auth_generation()
    return key


def api_key_rename(*, key: ApiKey, name: str, actor: Actor = None) -> ApiKey:
    name = (name or "").strip()
    if not name:
        raise BadRequest("name is required", fields={"name": ["This field is required."]})
    before = {"name": key.name}
    key.name = name[:100]
    with transaction.atomic():
        key.save(update_fields=["name"])
        audit_record(actor=actor, action="key_renamed", target=key, before=before, after={"name": key.name})
    return key
