"""Validation and change helpers shared by the governance services (allocations, catalogue,
keys, members)."""

from collections.abc import Iterable
from typing import Any, TypeVar

from django.db import transaction
from django.db.models import Model

from lib.cache import bump_auth_generation

from .audit import Actor, audit_record
from .exceptions import BadRequest
from .models import RateLimits

_M = TypeVar("_M", bound=Model)


def limits_snapshot(obj: RateLimits) -> dict:
    return {name: getattr(obj, name) for name in RateLimits.LIMIT_FIELDS}


def validate_limit(name: str, value: Any) -> int | None:
    """A rate limit: a whole number ≥ 1, or None/blank for no limit."""
    if value is None or value == "":
        return None
    error = BadRequest(f"invalid {name}", fields={name: ["Enter a whole number ≥ 1 (blank for no limit)."]})
    if isinstance(value, bool):
        raise error
    try:
        number = int(str(value).strip())
    except ValueError:
        raise error from None
    if number < 1 or number > (2**63 - 1 if name == "tpm_limit" else 2**31 - 1):
        raise error
    return number


def validate_limits(data: dict) -> dict:
    return {name: validate_limit(name, data[name]) for name in RateLimits.LIMIT_FIELDS if name in data}


def check_known_fields(changes: dict, allowed: Iterable[str]) -> None:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise BadRequest(
            f"unknown or read-only fields: {', '.join(sorted(unknown))}",
            fields={name: ["Unknown or read-only field."] for name in sorted(unknown)},
        )


def save_changed(obj: _M, changes: dict, *, action: str, actor: Actor = None) -> _M:
    """Sets and saves the fields whose value differs, with one audit event (their values before and
    after), and bumps the auth generation in the same transaction; nothing at all when none differs."""
    changed = {f: v for f, v in changes.items() if getattr(obj, f) != v}
    if not changed:
        return obj
    before = {f: getattr(obj, f) for f in changed}
    for field, value in changed.items():
        setattr(obj, field, value)
    with transaction.atomic():
        obj.save(update_fields=[*changed, "updated_at"])
        audit_record(actor=actor, action=action, target=obj, before=before, after=changed)
        bump_auth_generation()
    return obj
