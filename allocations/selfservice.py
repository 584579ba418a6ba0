"""Self-service claims (SPEC 10): a member takes an allocation of a self-service model from the
catalogue, with the model's default caps.

Eligibility is checked in the contract's order: member active, model self-service, model usable
(access.member_may_use), no live allocation of the model held already, no re-claim lock. The
partial unique constraint `allocation_one_live_claim_per_model` makes two claims at once end in
one allocation: the second insert fails and answers `already_claimed` like the check would.
"""

from django.db import IntegrityError, transaction

from lib.serializers import money_str

from . import services
from .access import member_may_use
from .audit import Actor, audit_record
from .changes import check_known_fields
from .exceptions import BadRequest, Conflict, Forbidden, NotFound
from .models import Allocation, ApiKey, CatalogModel, Member, ReclaimLock


class ModelNotSelfService(Forbidden):
    code = "model_not_self_service"


class ModelForbidden(Forbidden):
    code = "model_forbidden"


class AlreadyClaimed(Conflict):
    code = "already_claimed"


class ReclaimLocked(Forbidden):
    code = "reclaim_locked"


def held(*, member: Member, model: CatalogModel) -> bool:
    """A live (not revoked) allocation of `model`, admin-made or claimed: paused ones count, so a
    claim never steps around a pause or a quarantine."""
    return Allocation.objects.filter(member=member, model=model).exclude(status=Allocation.Status.REVOKED).exists()


def claim_state(*, member: Member, model: CatalogModel, held_ids: set, locked_ids: set) -> str:
    if model.pk in held_ids:
        return "held"
    if model.pk in locked_ids:
        return "reclaim_locked"
    return "claimable"


def claim_check(*, member: Member, model: CatalogModel) -> None:
    if not member.is_active:
        raise Forbidden("a disabled member cannot claim models")
    if not model.self_service or not model.is_active:
        raise ModelNotSelfService(f"{model.slug} is not offered for self-service")
    if not member_may_use(member, model):
        raise ModelForbidden(f"you may not use {model.slug}")
    if held(member=member, model=model):
        raise AlreadyClaimed(f"you already hold an allocation of {model.slug}")
    if ReclaimLock.objects.filter(member=member, model=model).exists():
        raise ReclaimLocked(f"an admin revoked your allocation of {model.slug}; ask an admin to unlock it")


def model_by_slug(slug: str) -> CatalogModel:
    model = CatalogModel.objects.filter(slug=(slug or "").strip()).first()
    if model is None:
        raise NotFound("no model has this slug")
    return model


def claim(*, member: Member, model: CatalogModel) -> tuple[Allocation, ApiKey, str]:
    """Returns (allocation, key, plaintext): the allocation (origin self_service, the model's
    default caps) and its default key, shown once."""
    claim_check(member=member, model=model)
    try:
        with transaction.atomic():
            return services.allocation_create(
                member=member,
                model=model,
                quota_tokens_per_month=model.self_service_quota_tokens,
                quota_cost_usd_per_month=model.self_service_cost_usd,
                origin=Allocation.Origin.SELF_SERVICE,
                actor=member,
            )
    except IntegrityError:
        if held(member=member, model=model):  # a claim of the same model committed first
            raise AlreadyClaimed(f"you already hold an allocation of {model.slug}") from None
        raise


SELF_SERVICE_FIELDS = ("self_service", "self_service_quota_tokens", "self_service_cost_usd")


def self_service_snapshot(model: CatalogModel) -> dict:
    return {
        "self_service": model.self_service,
        "self_service_quota_tokens": model.self_service_quota_tokens,
        "self_service_cost_usd": money_str(model.self_service_cost_usd),
    }


def model_set_self_service(*, model: CatalogModel, changes: dict, actor: Actor = None) -> CatalogModel:
    """The self-service switch and the default caps of a claim (null = none); audited as
    `model_self_service_updated` with the values before and after."""
    check_known_fields(changes, SELF_SERVICE_FIELDS)
    clean = dict(changes)
    if "self_service" in clean and not isinstance(clean["self_service"], bool):
        raise BadRequest("self_service must be true or false", fields={"self_service": ["Must be a boolean."]})
    for field, validate in (
        ("self_service_quota_tokens", services.validate_token_quota),
        ("self_service_cost_usd", services.validate_cost_cap),
    ):
        if field in clean:
            try:
                clean[field] = validate(clean[field])
            except BadRequest as exc:  # the same rules as an allocation's caps, named after this field
                raise BadRequest(exc.message, fields={field: _messages(exc)}) from None
    before = self_service_snapshot(model)
    with transaction.atomic():
        for field, value in clean.items():
            setattr(model, field, value)
        model.save(update_fields=[*clean, "updated_at"])
        after = self_service_snapshot(model)
        if after != before:
            audit_record(actor=actor, action="model_self_service_updated", target=model, before=before, after=after)
    return model


def _messages(exc: BadRequest) -> list[str]:
    return [m for messages in (exc.fields or {}).values() for m in messages] or [exc.message]
