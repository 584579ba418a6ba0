"""Validation and change helpers shared by the governance services (allocations, catalogue,
keys, members)."""

from django.db import transaction

from lib.cache import bump_auth_generation

from .audit import audit_record
from .exceptions import BadRequest
from .models import RateLimits


def limits_snapshot(obj) -> dict:
    return {name: getattr(obj, name) for name in RateLimits.LIMIT_FIELDS}


def validate_limit(name: str, value) -> int | None:
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


def check_known_fields(changes: dict, allowed) -> None:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise BadRequest(
            f"unknown or read-only fields: {', '.join(sorted(unknown))}",
            fields={name: ["Unknown or read-only field."] for name in sorted(unknown)},
        )


def save_changed(obj, changes: dict, *, action: str, actor=None):
    """Sets and saves the fields whose value differs, with one audit event (their values before and
    after), and bumps the auth generation once committed; nothing at all when none differs."""
    changed = {f: v for f, v in changes.items() if getattr(obj, f) != v}
    if not changed:
        return obj
    before = {f: getattr(obj, f) for f in changed}
    for field, value in changed.items():
        setattr(obj, field, value)
    with transaction.atomic():
        obj.save(update_fields=[*changed, "updated_at"])
        audit_record(actor=actor, action=action, target=obj, before=before, after=changed)
    transaction.on_commit(bump_auth_generation)  # after commit: see lib.cache
    return obj
