"""Every write to members, providers, models, allocations and keys. Each one audits.

Admin, the admin API, the portal and the commands call these functions, never the ORM directly,
so no path skips the audit trail or the request-path cache invalidation.
"""

from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from lib.cache import bump_auth_generation
from lib.serializers import money_str

from .audit import Actor, audit_record
from .catalog import (  # noqa: F401  (providers and models are governed in .catalog; callers use services)
    MODEL_UPDATABLE,
    PROVIDER_KEY_BOUND,
    PROVIDER_UPDATABLE,
    model_create,
    model_set_active,
    model_update,
    provider_clean,
    provider_create,
    provider_key_check,
    provider_rotate_key,
    provider_set_status,
    provider_update,
)
from .changes import check_known_fields, limits_snapshot, validate_limit, validate_limits  # noqa: F401
from .exceptions import BadRequest, Forbidden, InvalidTransition
from .keys import (  # noqa: F401  (keys are governed in .keys; callers use services)
    api_key_create,
    api_key_rename,
    api_key_revoke,
    api_key_rotate,
    api_key_set_expiry,
)
from .members import (  # noqa: F401  (members and admin tokens are governed in .members; callers use services)
    admin_token_create,
    admin_token_revoke,
    member_create,
    member_link_sso,
    member_set_active,
    member_set_password,
    member_set_roles,
    member_update,
)
from .models import Allocation, ApiKey, CatalogModel, Member, RateLimits
from .reclaim import reclaim_lock_after_revoke

Status = Allocation.Status


def allocation_snapshot(allocation: Allocation) -> dict:
    return {
        "status": allocation.status,
        "paused_by": allocation.paused_by,
        "quota_tokens_per_month": allocation.quota_tokens_per_month,
        "quota_cost_usd_per_month": money_str(allocation.quota_cost_usd_per_month),
        "is_service_allocation": allocation.is_service_allocation,
        "quota_locked": allocation.quota_locked,
        **limits_snapshot(allocation),
        "display_name": allocation.display_name,
        "note": allocation.note,
        "status_reason": allocation.status_reason,
    }


# --- allocations ---------------------------------------------------------------------------------


def validate_token_quota(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest("invalid token quota", fields={"quota_tokens_per_month": ["Enter a whole number ≥ 0."]})
    try:
        number = int(str(value))
    except ValueError:
        raise BadRequest(
            "invalid token quota", fields={"quota_tokens_per_month": ["Enter a whole number ≥ 0."]}
        ) from None
    if number < 0 or number > 2**63 - 1:
        raise BadRequest("invalid token quota", fields={"quota_tokens_per_month": ["Enter a whole number ≥ 0."]})
    return number


COST_CAP_MAX = Decimal("99999999999")  # numeric(20, 9) holds 11 integer digits


def validate_cost_cap(value: Any) -> Decimal | None:
    message = {"quota_cost_usd_per_month": ["Enter an amount in USD ≥ 0 (blank for no cap)."]}
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest("invalid cost cap", fields=message)
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise BadRequest("invalid cost cap", fields=message) from None
    if not amount.is_finite() or amount < 0 or amount > COST_CAP_MAX:
        raise BadRequest("invalid cost cap", fields=message)
    stored = amount.quantize(Decimal("1e-9"))
    if amount > 0 and stored == 0:
        # A positive cap that would be stored as 0 blocks every call: say so instead.
        too_small = ["This rounds to $0 at the stored precision (9 decimal places); enter 0 to block, or more."]
        raise BadRequest("cost cap rounds to zero", fields={"quota_cost_usd_per_month": too_small})
    return stored


def allocation_create(
    *,
    member: Member,
    model: CatalogModel,
    display_name: str = "",
    quota_tokens_per_month: int | str | None = None,
    quota_cost_usd_per_month: Decimal | int | float | str | None = None,
    is_service_allocation: bool = False,
    limits: dict | None = None,
    actor: Actor = None,
    origin: str = Allocation.Origin.ADMIN,
) -> tuple[Allocation, ApiKey, str]:
    """Creates the allocation and its default key. Returns (allocation, key, plaintext)."""
    tokens = validate_token_quota(quota_tokens_per_month)
    cost = validate_cost_cap(quota_cost_usd_per_month)
    rate = validate_limits(limits or {})
    with transaction.atomic():
        allocation = Allocation.objects.create(
            member=member,
            model=model,
            display_name=display_name or model.display_name or model.slug,
            quota_tokens_per_month=tokens,
            quota_cost_usd_per_month=cost,
            is_service_allocation=is_service_allocation,
            origin=origin,
            **rate,
        )
        audit_record(
            actor=actor,
            action="allocation_created",
            target=allocation,
            after={
                "member": member.username,
                "model": model.slug,
                "origin": allocation.origin,
                **allocation_snapshot(allocation),
            },
        )
        key, plaintext = api_key_create(
            member=member, name=f"default ({model.slug})", allocations=[allocation], actor=actor, is_default=True
        )
    return allocation, key, plaintext


UPDATABLE_FIELDS = {
    "quota_tokens_per_month",
    "quota_cost_usd_per_month",
    "is_service_allocation",
    "quota_locked",
    "note",
    "display_name",
    *RateLimits.LIMIT_FIELDS,
}
FIELD_ACTIONS = {
    "quota_tokens_per_month": "allocation_token_quota_updated",
    "quota_cost_usd_per_month": "allocation_cost_quota_updated",
    **dict.fromkeys(RateLimits.LIMIT_FIELDS, "allocation_rate_limits_updated"),
}


def _clean_update(changes: dict) -> dict:
    check_known_fields(changes, UPDATABLE_FIELDS)
    clean = dict(changes)
    if "quota_tokens_per_month" in clean:
        clean["quota_tokens_per_month"] = validate_token_quota(clean["quota_tokens_per_month"])
    if "quota_cost_usd_per_month" in clean:
        clean["quota_cost_usd_per_month"] = validate_cost_cap(clean["quota_cost_usd_per_month"])
    clean.update(validate_limits(clean))
    for flag in ("is_service_allocation", "quota_locked"):
        if flag in clean and not isinstance(clean[flag], bool):
            raise BadRequest(f"{flag} must be true or false", fields={flag: ["Must be a boolean."]})
    for text in ("note", "display_name"):
        if text in clean and not isinstance(clean[text], str):
            raise BadRequest(f"{text} must be a string", fields={text: ["Must be a string."]})
    return clean


def allocation_update(*, allocation: Allocation, changes: dict, actor: Actor = None) -> Allocation:
    """Validates every field before writing anything; one audit event per kind of change."""
    clean = _clean_update(changes)
    changed = {f: v for f, v in clean.items() if getattr(allocation, f) != v}
    if not changed:
        return allocation
    with transaction.atomic():
        locked = Allocation.objects.select_for_update().get(pk=allocation.pk)
        before = allocation_snapshot(locked)
        for field, value in changed.items():
            setattr(locked, field, value)
        locked.save(update_fields=[*changed, "updated_at"])
        after = allocation_snapshot(locked)
        generic = [f for f in changed if f not in FIELD_ACTIONS]
        for action in dict.fromkeys(FIELD_ACTIONS[f] for f in changed if f in FIELD_ACTIONS):
            fields = [f for f in changed if FIELD_ACTIONS.get(f) == action]
            audit_record(
                actor=actor,
                action=action,
                target=locked,
                before={f: before[f] for f in fields},
                after={f: after[f] for f in fields},
            )
        if generic:
            audit_record(
                actor=actor,
                action="allocation_updated",
                target=locked,
                before={f: before[f] for f in generic},
                after={f: after[f] for f in generic},
            )
        bump_auth_generation()
    for field, value in changed.items():
        setattr(allocation, field, value)
    return allocation


def _transition(
    *,
    allocation: Allocation,
    action: str,
    allowed_from: Collection[str],
    to_status: str,
    actor: Actor,
    paused_by: str = "",
    reason: str = "",
    check: Callable[[Allocation], None] | None = None,
) -> Allocation:
    with transaction.atomic():
        locked = Allocation.objects.select_for_update().get(pk=allocation.pk)
        if locked.status not in allowed_from:
            verb = action.split("_")[-1].removesuffix("d")  # allocation_paused -> pause
            raise InvalidTransition(f"cannot {verb} an allocation that is {locked.status}")
        if check:
            check(locked)
        before = allocation_snapshot(locked)
        locked.status, locked.paused_by, locked.status_reason = to_status, paused_by, reason
        locked.save(update_fields=["status", "paused_by", "status_reason", "updated_at"])
        audit_record(actor=actor, action=action, target=locked, before=before, after=allocation_snapshot(locked))
        bump_auth_generation()
    allocation.status, allocation.paused_by, allocation.status_reason = to_status, paused_by, reason
    return allocation


def allocation_pause(*, allocation: Allocation, by: str = "admin", actor: Actor = None, reason: str = "") -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_paused",
        allowed_from={Status.ACTIVE},
        to_status=Status.PAUSED,
        actor=actor,
        paused_by=by,
        reason=reason,
    )


def allocation_resume(*, allocation: Allocation, by: str = "admin", actor: Actor = None) -> Allocation:
    def check(locked: Allocation) -> None:
        if by == Allocation.PausedBy.MEMBER and locked.paused_by == Allocation.PausedBy.ADMIN:
            raise Forbidden("this allocation was paused by an admin; only an admin can resume it")

    return _transition(
        allocation=allocation,
        action="allocation_resumed",
        allowed_from={Status.PAUSED},
        to_status=Status.ACTIVE,
        actor=actor,
        check=check,
    )


def allocation_revoke(*, allocation: Allocation, actor: Actor = None, reason: str = "") -> Allocation:
    """Revoking a self-service allocation (by anyone but its member) locks its re-claim (.reclaim)."""
    with transaction.atomic():
        revoked = _transition(
            allocation=allocation,
            action="allocation_revoked",
            allowed_from={Status.ACTIVE, Status.PAUSED, Status.QUARANTINED},
            to_status=Status.REVOKED,
            actor=actor,
            reason=reason,
        )
        reclaim_lock_after_revoke(allocation=revoked, actor=actor)
    return revoked


def allocation_quarantine(*, allocation: Allocation, reason: str, actor: Actor = None) -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_quarantined",
        allowed_from={Status.ACTIVE},
        to_status=Status.QUARANTINED,
        actor=actor,
        reason=reason,
    )


def allocation_unquarantine(*, allocation: Allocation, actor: Actor = None) -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_unquarantined",
        allowed_from={Status.QUARANTINED},
        to_status=Status.ACTIVE,
        actor=actor,
    )


def allocation_rotate_default_key(*, allocation: Allocation, actor: Actor = None) -> tuple[ApiKey, str]:
    """Rotates the allocation's default key (minting one if it was revoked). Returns (key, plaintext)."""
    key = ApiKey.objects.live().filter(is_default=True, scopes__allocation=allocation).first()
    if key is None:
        try:
            return api_key_create(
                member=allocation.member,
                name=f"default ({allocation.model.slug})",
                allocations=[allocation],
                actor=actor,
                is_default=True,
            )
        except IntegrityError as exc:  # pragma: no cover - defensive
            raise InvalidTransition(str(exc)) from exc
    return api_key_rotate(key=key, actor=actor)
