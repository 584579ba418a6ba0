"""Validation and change helpers shared by the governance services (allocations, catalogue,
keys, members)."""

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


def assign_changed(obj, changes: dict) -> tuple[dict, dict]:
    """Sets the fields whose value differs; returns (their values before, the changed ones)."""
    changed = {f: v for f, v in changes.items() if getattr(obj, f) != v}
    before = {f: getattr(obj, f) for f in changed}
    for field, value in changed.items():
        setattr(obj, field, value)
    return before, changed
