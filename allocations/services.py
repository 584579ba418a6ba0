"""Every write to members, providers, models, allocations and keys. Each one audits.

Admin, the admin API, the portal and the commands call these functions, never the ORM directly,
so no path skips the audit trail or the request-path cache invalidation.
"""

import secrets
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import crypto
from .audit import audit_record
from .cache import bump_auth_generation
from .exceptions import BadRequest, Forbidden, InvalidTransition, ScopeConflict, ScopeForbidden
from .members import (  # noqa: F401  (members and admin tokens are governed in .members; callers use services)
    admin_token_create,
    admin_token_revoke,
    member_create,
    member_set_active,
    member_set_password,
    member_set_roles,
    member_update,
)
from .models import Allocation, ApiKey, ApiKeyScope, CatalogModel, ModelKind, Provider, ProviderKind, RateLimits

Status = Allocation.Status


def _money(value) -> str | None:
    """Fixed point at the stored precision ("0.000000000", never "0E-9") for audit snapshots."""
    return None if value is None else f"{Decimal(value).quantize(Decimal('1e-9')):f}"


def allocation_snapshot(allocation: Allocation) -> dict:
    return {
        "status": allocation.status,
        "paused_by": allocation.paused_by,
        "quota_tokens_per_month": allocation.quota_tokens_per_month,
        "quota_cost_usd_per_month": _money(allocation.quota_cost_usd_per_month),
        "is_service_allocation": allocation.is_service_allocation,
        "quota_locked": allocation.quota_locked,
        **limits_snapshot(allocation),
        "display_name": allocation.display_name,
        "note": allocation.note,
        "status_reason": allocation.status_reason,
    }


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


def _assign(obj, changes: dict) -> tuple[dict, dict]:
    """Sets the fields whose value differs; returns (their values before, the changed ones)."""
    changed = {f: v for f, v in changes.items() if getattr(obj, f) != v}
    before = {f: getattr(obj, f) for f in changed}
    for field, value in changed.items():
        setattr(obj, field, value)
    return before, changed


# --- providers and models --------------------------------------------------------------------


def provider_clean(*, name: str, kind: str, base_url: str) -> None:
    """A provider's rules, for every path that creates one: a unique name, an http(s) base URL
    unless the provider is the built-in simulated one."""
    if not name:
        raise BadRequest("name is required", fields={"name": ["This field is required."]})
    if kind not in ProviderKind.values:
        raise BadRequest("invalid kind", fields={"kind": [f"One of: {', '.join(ProviderKind.values)}."]})
    if kind != ProviderKind.SIMULATED:
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            raise BadRequest("invalid base_url", fields={"base_url": ["An http(s) URL."]}) from None
    if Provider.objects.filter(name=name).exists():
        raise BadRequest("name is taken", fields={"name": ["A provider with that name already exists."]})


def provider_create(*, name: str, kind: str, base_url: str = "", api_key: str = "", api_version: str = "", actor=None):
    provider_clean(name=name, kind=kind, base_url=base_url)
    provider = Provider(name=name, kind=kind, base_url=base_url, api_version=api_version)
    if api_key:
        provider.api_key_encrypted = crypto.encrypt(api_key)
        provider.key_fingerprint = Provider.fingerprint(api_key)
    with transaction.atomic():
        provider.save()
        audit_record(
            actor=actor,
            action="provider_created",
            target=provider,
            after={
                "name": name,
                "kind": kind,
                "base_url": base_url,
                "api_version": api_version,
                "fingerprint": provider.key_fingerprint,
            },
        )
    return provider


def provider_rotate_key(*, provider: Provider, api_key: str, actor=None) -> Provider:
    before = {"fingerprint": provider.key_fingerprint}
    provider.api_key_encrypted = crypto.encrypt(api_key)
    provider.key_fingerprint = Provider.fingerprint(api_key)
    with transaction.atomic():
        provider.save(update_fields=["api_key_encrypted", "key_fingerprint", "updated_at"])
        audit_record(
            actor=actor,
            action="provider_key_rotated",
            target=provider,
            before=before,
            after={"fingerprint": provider.key_fingerprint},
        )
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return provider


PROVIDER_UPDATABLE = ("name", "base_url", "api_version")


def provider_update(*, provider: Provider, changes: dict, actor=None) -> Provider:
    check_known_fields(changes, PROVIDER_UPDATABLE)
    before, changed = _assign(provider, changes)
    if not changed:
        return provider
    with transaction.atomic():
        provider.save(update_fields=[*changed, "updated_at"])
        audit_record(actor=actor, action="provider_updated", target=provider, before=before, after=changed)
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return provider


def provider_set_status(*, provider: Provider, status: str, actor=None) -> Provider:
    before = {"status": provider.status}
    provider.status = status
    with transaction.atomic():
        provider.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=actor, action="provider_status_updated", target=provider, before=before, after={"status": status}
        )
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return provider


def provider_api_key(provider: Provider) -> str:
    return crypto.decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else ""


def model_create(
    *,
    slug: str,
    provider: Provider,
    upstream_name: str,
    kind: str,
    display_name: str = "",
    limits: dict | None = None,
    actor=None,
):
    clean = validate_limits(limits or {})
    if not slug:
        raise BadRequest("slug is required", fields={"slug": ["This field is required."]})
    if kind not in ModelKind.values:
        raise BadRequest("invalid kind", fields={"kind": [f"One of: {', '.join(ModelKind.values)}."]})
    if CatalogModel.objects.filter(slug=slug).exists():
        raise BadRequest("slug is taken", fields={"slug": ["A model with that slug already exists."]})
    with transaction.atomic():
        model = CatalogModel.objects.create(
            slug=slug, provider=provider, upstream_name=upstream_name, kind=kind, display_name=display_name, **clean
        )
        audit_record(
            actor=actor,
            action="model_created",
            target=model,
            after={
                "slug": slug,
                "provider": provider.name,
                "upstream_name": upstream_name,
                "kind": kind,
                **limits_snapshot(model),
            },
        )
    return model


MODEL_UPDATABLE = {*RateLimits.LIMIT_FIELDS, "is_active", "display_name"}


def model_update(*, model: CatalogModel, changes: dict, actor=None) -> CatalogModel:
    """Organisation-wide rate limits, the active flag and the display name; one audit event."""
    check_known_fields(changes, MODEL_UPDATABLE)
    clean = {**changes, **validate_limits(changes)}
    if "is_active" in clean and not isinstance(clean["is_active"], bool):
        raise BadRequest("is_active must be true or false", fields={"is_active": ["Must be a boolean."]})
    if "display_name" in clean and not isinstance(clean["display_name"], str):
        raise BadRequest("display_name must be a string", fields={"display_name": ["Must be a string."]})
    before, changed = _assign(model, clean)
    if not changed:
        return model
    with transaction.atomic():
        model.save(update_fields=[*changed, "updated_at"])
        audit_record(actor=actor, action="model_updated", target=model, before=before, after=changed)
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return model


def model_set_active(*, model: CatalogModel, is_active: bool, actor=None) -> CatalogModel:
    return model_update(model=model, changes={"is_active": is_active}, actor=actor)


# --- API keys ------------------------------------------------------------------------------------


def _new_plaintext_key() -> str:
    # 32 random bytes -> 43 url-safe characters.
    return ApiKey.PLAINTEXT_PREFIX + secrets.token_urlsafe(32)


def _check_scope(*, member, allocations) -> list[Allocation]:
    allocations = list(allocations)
    if not allocations:
        raise BadRequest("a key needs at least one allocation", fields={"allocations": ["Choose at least one."]})
    if any(a.member_id != member.pk for a in allocations):
        raise ScopeForbidden("a key may only be scoped to its owner's allocations")
    if any(a.status == Status.REVOKED for a in allocations):
        raise BadRequest("a revoked allocation cannot be added to a key", fields={"allocations": ["Revoked."]})
    model_ids = [a.model_id for a in allocations]
    if len(set(model_ids)) != len(model_ids):
        raise ScopeConflict("a key may hold at most one allocation per model")
    return allocations


def _check_expiry(expires_at, now) -> None:
    if expires_at is not None and (timezone.is_naive(expires_at) or expires_at <= now):
        raise BadRequest("expires_at must be in the future", fields={"expires_at": ["A future date and time."]})


def api_key_create(*, member, name: str, allocations, actor=None, is_default: bool = False, now=None, expires_at=None):
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


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


def api_key_set_expiry(*, key: ApiKey, expires_at, actor=None, now=None) -> ApiKey:
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
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return key


def api_key_rotate(*, key: ApiKey, actor=None, now=None):
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
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return key, plaintext


def api_key_revoke(*, key: ApiKey, actor=None, now=None) -> ApiKey:
    if key.is_revoked:
        return key
    now = now or timezone.now()
    key.revoked_at = now
    with transaction.atomic():
        key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor, action="key_revoked", target=key, before={"revoked": False}, after={"revoked": True}, now=now
        )
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    return key


def api_key_rename(*, key: ApiKey, name: str, actor=None) -> ApiKey:
    name = (name or "").strip()
    if not name:
        raise BadRequest("name is required", fields={"name": ["This field is required."]})
    before = {"name": key.name}
    key.name = name[:100]
    with transaction.atomic():
        key.save(update_fields=["name"])
        audit_record(actor=actor, action="key_renamed", target=key, before=before, after={"name": key.name})
    return key


# --- allocations ---------------------------------------------------------------------------------


def validate_token_quota(value):
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


def validate_cost_cap(value):
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
    member,
    model: CatalogModel,
    display_name: str = "",
    quota_tokens_per_month=None,
    quota_cost_usd_per_month=None,
    is_service_allocation: bool = False,
    limits: dict | None = None,
    actor=None,
):
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
            **rate,
        )
        audit_record(
            actor=actor,
            action="allocation_created",
            target=allocation,
            after={"member": member.username, "model": model.slug, **allocation_snapshot(allocation)},
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


def allocation_update(*, allocation: Allocation, changes: dict, actor=None, source_ip=None) -> Allocation:
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
                source_ip=source_ip,
                before={f: before[f] for f in fields},
                after={f: after[f] for f in fields},
            )
        if generic:
            audit_record(
                actor=actor,
                action="allocation_updated",
                target=locked,
                source_ip=source_ip,
                before={f: before[f] for f in generic},
                after={f: after[f] for f in generic},
            )
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    for field, value in changed.items():
        setattr(allocation, field, value)
    return allocation


def _transition(*, allocation, action, allowed_from, to_status, actor, paused_by="", reason="", check=None):
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
    transaction.on_commit(bump_auth_generation)  # after commit: see allocations.cache
    allocation.status, allocation.paused_by, allocation.status_reason = to_status, paused_by, reason
    return allocation


def allocation_pause(*, allocation: Allocation, by: str = "admin", actor=None, reason: str = "") -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_paused",
        allowed_from={Status.ACTIVE},
        to_status=Status.PAUSED,
        actor=actor,
        paused_by=by,
        reason=reason,
    )


def allocation_resume(*, allocation: Allocation, by: str = "admin", actor=None) -> Allocation:
    def check(locked):
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


def allocation_revoke(*, allocation: Allocation, actor=None, reason: str = "") -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_revoked",
        allowed_from={Status.ACTIVE, Status.PAUSED, Status.QUARANTINED},
        to_status=Status.REVOKED,
        actor=actor,
        reason=reason,
    )


def allocation_quarantine(*, allocation: Allocation, reason: str, actor=None) -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_quarantined",
        allowed_from={Status.ACTIVE},
        to_status=Status.QUARANTINED,
        actor=actor,
        reason=reason,
    )


def allocation_unquarantine(*, allocation: Allocation, actor=None) -> Allocation:
    return _transition(
        allocation=allocation,
        action="allocation_unquarantined",
        allowed_from={Status.QUARANTINED},
        to_status=Status.ACTIVE,
        actor=actor,
    )


def allocation_rotate_default_key(*, allocation: Allocation, actor=None):
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
