"""Writes to providers and catalogue models. Each one audits."""

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from lib.cache import bump_auth_generation

from . import crypto
from .audit import Actor, audit_record
from .changes import check_known_fields, limits_snapshot, save_changed, validate_limits
from .cost_options import allowed_options_clean, extra_client_tools_clean, unpriced_tools_clean
from .exceptions import BadRequest
from .members import (  # noqa: F401  (members and admin tokens are governed in .members; callers use services)
    admin_token_create,
    admin_token_revoke,
    member_create,
    member_set_active,
    member_set_password,
    member_set_roles,
    member_update,
)
from .models import CatalogModel, Deployment, ModelKind, Provider, ProviderKind, RateLimits

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


def provider_create(
    *, name: str, kind: str, base_url: str = "", api_key: str = "", api_version: str = "", actor: Actor = None
) -> Provider:
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


def provider_rotate_key(*, provider: Provider, api_key: str, actor: Actor = None) -> Provider:
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
        bump_auth_generation()
    return provider


PROVIDER_UPDATABLE = ("name", "base_url", "api_version")
# Where the stored key is sent: a change to either must come with the key, entered again, so that
# nobody can lead the organisation's key to a host of their own choosing.
PROVIDER_KEY_BOUND = ("base_url", "kind")
KEY_AGAIN = "Enter the API key again: a new base URL or kind needs it in the same change."


def provider_update(*, provider: Provider, changes: dict, api_key: str = "", actor: Actor = None) -> Provider:
    """Saves what differs (one audit event) and, with `api_key`, rotates the key in the same
    transaction, so no call ever goes out with the old key to the new address."""
    check_known_fields(changes, PROVIDER_UPDATABLE)
    provider_key_check(provider=provider, changes=changes, api_key=api_key)
    with transaction.atomic():
        provider = save_changed(provider, changes, action="provider_updated", actor=actor)
        if api_key:
            provider = provider_rotate_key(provider=provider, api_key=api_key, actor=actor)
    return provider


def provider_key_check(*, provider: Provider, changes: dict, api_key: str) -> None:
    moved = [f for f in PROVIDER_KEY_BOUND if f in changes and changes[f] != getattr(provider, f)]
    if moved and not api_key and changes.get("kind", provider.kind) != ProviderKind.SIMULATED:
        raise BadRequest(f"changing {' and '.join(moved)} requires api_key", fields={"api_key": [KEY_AGAIN]})


def provider_set_status(*, provider: Provider, status: str, actor: Actor = None) -> Provider:
    before = {"status": provider.status}
    provider.status = status
    with transaction.atomic():
        provider.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=actor, action="provider_status_updated", target=provider, before=before, after={"status": status}
        )
        bump_auth_generation()
    return provider


def model_create(
    *,
    slug: str,
    provider: Provider,
    upstream_name: str,
    kind: str,
    display_name: str = "",
    limits: dict | None = None,
    allowed_options: list[str] | None = None,
    unpriced_tools: str = "remove",
    extra_client_tools: list[str] | None = None,
    actor: Actor = None,
) -> CatalogModel:
    clean = validate_limits(limits or {})
    options = allowed_options_clean(allowed_options)
    tool_rules = {
        "unpriced_tools": unpriced_tools_clean(unpriced_tools),
        "extra_client_tools": extra_client_tools_clean(extra_client_tools),
    }
    if not slug:
        raise BadRequest("slug is required", fields={"slug": ["This field is required."]})
    if kind not in ModelKind.values:
        raise BadRequest("invalid kind", fields={"kind": [f"One of: {', '.join(ModelKind.values)}."]})
    if CatalogModel.objects.filter(slug=slug).exists():
        raise BadRequest("slug is taken", fields={"slug": ["A model with that slug already exists."]})
    with transaction.atomic():
        model = CatalogModel.objects.create(
            slug=slug,
            provider=provider,
            upstream_name=upstream_name,
            kind=kind,
            display_name=display_name,
            allowed_options=options,
            **tool_rules,
            **clean,
        )
        Deployment.objects.create(model=model, provider=provider, upstream_name=upstream_name)  # its first
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
                "allowed_options": options,
                **tool_rules,
            },
        )
    return model


MODEL_UPDATABLE = {
    *RateLimits.LIMIT_FIELDS,
    "is_active",
    "display_name",
    "allowed_options",
    "unpriced_tools",
    "extra_client_tools",
    "drop_unsupported_params",
}


def model_update(*, model: CatalogModel, changes: dict, actor: Actor = None) -> CatalogModel:
    """Organisation-wide rate limits, the active flag, the display name, the cost-bearing options
    allowed, the tool rules (unpriced built-ins, extra client tool types) and whether unsupported
    parameters are dropped; one audit event
    (before/after of the fields that changed)."""
    check_known_fields(changes, MODEL_UPDATABLE)
    clean = {**changes, **validate_limits(changes)}
    if "allowed_options" in clean:
        clean["allowed_options"] = allowed_options_clean(clean["allowed_options"])
    if "unpriced_tools" in clean:
        clean["unpriced_tools"] = unpriced_tools_clean(clean["unpriced_tools"])
    if "extra_client_tools" in clean:
        clean["extra_client_tools"] = extra_client_tools_clean(clean["extra_client_tools"])
    for flag in ("is_active", "drop_unsupported_params"):
        if flag in clean and not isinstance(clean[flag], bool):
            raise BadRequest(f"{flag} must be true or false", fields={flag: ["Must be a boolean."]})
    if "display_name" in clean and not isinstance(clean["display_name"], str):
        raise BadRequest("display_name must be a string", fields={"display_name": ["Must be a string."]})
    return save_changed(model, clean, action="model_updated", actor=actor)


def model_set_active(*, model: CatalogModel, is_active: bool, actor: Actor = None) -> CatalogModel:
    return model_update(model=model, changes={"is_active": is_active}, actor=actor)
