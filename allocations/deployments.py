"""Writes to a catalogue model's deployments. Each one audits and bumps the auth generation.

The model's own `provider` and `upstream_name` are its first deployment's (lowest priority, then
the oldest): every write here re-derives them in the same transaction, so whatever reads the
model alone (lists, reports, the realtime relay's labels) sees the deployment that is served
first. A model always keeps at least one deployment.
"""

from typing import Any

from django.db import transaction

from lib.cache import bump_auth_generation

from .audit import Actor, audit_record
from .changes import check_known_fields, validate_limit
from .exceptions import BadRequest, Conflict
from .models import CatalogModel, Deployment, Provider

DEPLOYMENT_FIELDS = ("provider", "upstream_name", "weight", "priority", "rpm_limit", "tpm_limit", "active")
MAX_PRIORITY = 32767


def deployment_snapshot(deployment: Deployment) -> dict:
    return {
        "provider": deployment.provider.name,
        "upstream_name": deployment.upstream_name,
        "weight": deployment.weight,
        "priority": deployment.priority,
        "rpm_limit": deployment.rpm_limit,
        "tpm_limit": deployment.tpm_limit,
        "active": deployment.active,
    }


def _whole(name: str, value: Any, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"invalid {name}", fields={name: [f"Enter a whole number from 0 to {maximum}."]})
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"invalid {name}", fields={name: [f"Enter a whole number from 0 to {maximum}."]}) from None
    if not 0 <= number <= maximum:
        raise BadRequest(f"invalid {name}", fields={name: [f"Enter a whole number from 0 to {maximum}."]})
    return number


def deployment_clean(changes: dict) -> dict:
    """The fields of a deployment, checked: a provider object, a non-empty upstream name, weight and
    priority ≥ 0, limits ≥ 1 or None, a boolean `active`."""
    check_known_fields(changes, DEPLOYMENT_FIELDS)
    clean = dict(changes)
    if "provider" in clean and not isinstance(clean["provider"], Provider):
        raise BadRequest("no such provider", fields={"provider": ["No provider with that name or id."]})
    if "upstream_name" in clean:
        name = clean["upstream_name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise BadRequest("invalid upstream_name", fields={"upstream_name": ["1 to 200 characters."]})
        clean["upstream_name"] = name.strip()
    if "weight" in clean:
        clean["weight"] = _whole("weight", clean["weight"], maximum=2**31 - 1)
    if "priority" in clean:
        clean["priority"] = _whole("priority", clean["priority"], maximum=MAX_PRIORITY)
    for name in ("rpm_limit", "tpm_limit"):
        if name in clean:
            clean[name] = validate_limit(name, clean[name])
    if "active" in clean and not isinstance(clean["active"], bool):
        raise BadRequest("active must be true or false", fields={"active": ["Must be a boolean."]})
    return clean


def _sync_model(model: CatalogModel) -> None:
    """The model's provider and upstream name become its first deployment's."""
    first = Deployment.objects.filter(model=model).in_order().first()
    if first is None or (first.provider_id, first.upstream_name) == (model.provider_id, model.upstream_name):
        return
    model.provider_id, model.upstream_name = first.provider_id, first.upstream_name
    model.save(update_fields=["provider", "upstream_name", "updated_at"])


def deployment_create(*, model: CatalogModel, actor: Actor = None, **fields: Any) -> Deployment:
    clean = deployment_clean(fields)
    for required in ("provider", "upstream_name"):
        if required not in clean:
            raise BadRequest(f"{required} is required", fields={required: ["This field is required."]})
    with transaction.atomic():
        deployment = Deployment.objects.create(model=model, **clean)
        _sync_model(model)
        audit_record(actor=actor, action="deployment_created", target=deployment, after=deployment_snapshot(deployment))
        bump_auth_generation()
    return deployment


def deployment_update(*, deployment: Deployment, changes: dict, actor: Actor = None) -> Deployment:
    """Saves what differs, with one audit event; re-enabling a deployment the gateway took out
    clears its reason."""
    clean = deployment_clean(changes)
    changed = {f: v for f, v in clean.items() if getattr(deployment, f) != v}
    if not changed:
        return deployment
    before = deployment_snapshot(deployment)
    for field, value in changed.items():
        setattr(deployment, field, value)
    if changed.get("active") is True:
        deployment.disabled_reason = ""
    with transaction.atomic():
        deployment.save(update_fields=[*changed, "disabled_reason", "updated_at"])
        _sync_model(deployment.model)
        after = deployment_snapshot(deployment)
        audit_record(
            actor=actor,
            action="deployment_updated",
            target=deployment,
            before={f: before[f] for f in changed},
            after={f: after[f] for f in changed},
        )
        bump_auth_generation()
    return deployment


def deployment_delete(*, deployment: Deployment, actor: Actor = None) -> None:
    with transaction.atomic():
        model = CatalogModel.objects.select_for_update().get(pk=deployment.model_id)
        if Deployment.objects.filter(model=model).count() <= 1:
            raise Conflict("a model keeps at least one deployment; add another before deleting this one")
        before = deployment_snapshot(deployment)
        target_id = str(deployment.pk)
        deployment.delete()
        _sync_model(model)
        audit_record(
            actor=actor,
            action="deployment_deleted",
            target=model,
            target_type="deployment",
            target_id=target_id,
            before=before,
        )
        bump_auth_generation()


def deployment_take_out(*, deployment_id: str, reason: str) -> Deployment | None:
    """The gateway's own change: a deployment whose provider refused its credentials stops serving
    until an admin re-enables it. Returns it when this call took it out (None: it was out already)."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("provider").filter(pk=deployment_id).first()
        if deployment is None or not deployment.active:
            return None
        deployment.active, deployment.disabled_reason = False, reason[:200]
        deployment.save(update_fields=["active", "disabled_reason", "updated_at"])
        audit_record(
            actor=None,
            action="deployment_updated",
            target=deployment,
            before={"active": True},
            after={"active": False, "disabled_reason": deployment.disabled_reason},
        )
        bump_auth_generation()
    return deployment
