"""Groups and their members, and the model access policy (SPEC 10). Every change is audited and,
as model access depends on both, bumps the auth generation in its own transaction (lib.cache), so
the next call of every process sees it."""

import contextlib
import uuid
from collections.abc import Iterable

from django.db import transaction
from django.utils.text import slugify

from lib.cache import bump_auth_generation
from lib.serializers import money_str

from .audit import Actor, audit_record
from .changes import check_known_fields
from .exceptions import BadRequest, Conflict
from .models import CatalogModel, Group, Member
from .services import validate_cost_cap, validate_token_quota

GROUP_FIELDS = ("name", "slug", "quota_cost_usd_per_month", "quota_tokens_per_month")
ACCESS_FIELDS = ("access", "allowed_groups", "denied_groups")


def group_snapshot(group: Group) -> dict:
    return {
        "name": group.name,
        "slug": group.slug,
        "quota_cost_usd_per_month": money_str(group.quota_cost_usd_per_month),
        "quota_tokens_per_month": group.quota_tokens_per_month,
    }


def _group_values(data: dict, *, current: Group | None) -> dict:
    check_known_fields(data, GROUP_FIELDS)
    values = dict(data)
    if "name" in values or current is None:
        name = values.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
            raise BadRequest("a name is required", fields={"name": ["1 to 100 characters."]})
        values["name"] = name.strip()
    if "slug" in values or current is None:
        slug = values.get("slug") or slugify(values["name"])
        if not isinstance(slug, str) or slugify(slug) != slug or not slug or len(slug) > 100:
            raise BadRequest("invalid slug", fields={"slug": ["Lowercase letters, digits, - and _ only."]})
        values["slug"] = slug
    if "quota_cost_usd_per_month" in values:
        values["quota_cost_usd_per_month"] = validate_cost_cap(values["quota_cost_usd_per_month"])
    if "quota_tokens_per_month" in values:
        values["quota_tokens_per_month"] = validate_token_quota(values["quota_tokens_per_month"])
    others = Group.objects.exclude(pk=current.pk) if current else Group.objects.all()
    for field in ("name", "slug"):
        if field in values and others.filter(**{field: values[field]}).exists():
            raise Conflict(f"a group with that {field} exists", fields={field: ["Already taken."]})
    return values


def group_create(*, data: dict, actor: Actor = None) -> Group:
    values = _group_values(data, current=None)
    with transaction.atomic():
        group = Group.objects.create(**values)
        audit_record(actor=actor, action="group_created", target=group, after=group_snapshot(group))
    return group


def group_update(*, group: Group, changes: dict, actor: Actor = None) -> Group:
    values = _group_values(changes, current=group)
    before = group_snapshot(group)
    for field, value in values.items():
        setattr(group, field, value)
    after = group_snapshot(group)
    if after == before:
        return group
    changed = [f for f in after if after[f] != before[f]]
    with transaction.atomic():
        group.save(update_fields=[*values, "updated_at"])
        audit_record(
            actor=actor,
            action="group_updated",
            target=group,
            before={f: before[f] for f in changed},
            after={f: after[f] for f in changed},
        )
        # Every call of its members reads the group's caps (and slug) from the key snapshot.
        bump_auth_generation()
    return group


def group_delete(*, group: Group, actor: Actor = None) -> None:
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="group_deleted",
            target=group,
            before={**group_snapshot(group), "members": sorted(group.members.values_list("username", flat=True))},
        )
        group.delete()
        bump_auth_generation()  # its members' access may change


def member_ref(ref: object) -> Member | None:
    if not isinstance(ref, str):
        return None
    found = Member.objects.filter(username=ref.strip().casefold()).first()
    if found is None:
        with contextlib.suppress(ValueError):
            found = Member.objects.filter(pk=uuid.UUID(ref)).first()
    return found


def _members(refs: object, field: str) -> list[Member]:
    if not isinstance(refs, list) or len(refs) > 1000:
        raise BadRequest(f"{field} must be a list", fields={field: ["A list of member ids or usernames (≤ 1000)."]})
    members: list[Member] = []
    unknown: list[str] = []
    for ref in refs:
        member = member_ref(ref)
        (members.append(member) if member else unknown.append(str(ref)[:100]))
    if unknown:
        raise BadRequest("no such member", fields={field: [f"No member with id or username: {', '.join(unknown)}."]})
    return members


def group_members_change(
    *, group: Group, add: Iterable[object] = (), remove: Iterable[object] = (), actor: Actor = None
) -> Group:
    """Adds and removes members in one step (all or nothing); one audit event per member whose
    membership changed."""
    to_add, to_remove = _members(list(add), "add"), _members(list(remove), "remove")
    if {m.pk for m in to_add} & {m.pk for m in to_remove}:
        raise BadRequest("a member is both added and removed", fields={"remove": ["Also in add."]})
    with transaction.atomic():
        current = set(group.members.values_list("pk", flat=True))
        added = [m for m in {m.pk: m for m in to_add}.values() if m.pk not in current]
        removed = [m for m in {m.pk: m for m in to_remove}.values() if m.pk in current]
        group.members.add(*added)
        group.members.remove(*removed)
        for member, action in [
            *((m, "group_member_added") for m in added),
            *((m, "group_member_removed") for m in removed),
        ]:
            audit_record(
                actor=actor, action=action, target=group, after={"member": member.username, "member_id": str(member.pk)}
            )
        if added or removed:
            bump_auth_generation()
    return group


def group_ref(ref: object) -> Group | None:
    if not isinstance(ref, str):
        return None
    found = Group.objects.filter(slug=ref.strip()).first()
    if found is None:
        with contextlib.suppress(ValueError):
            found = Group.objects.filter(pk=uuid.UUID(ref)).first()
    return found


def groups_by_refs(refs: object, field: str) -> list[Group]:
    if not isinstance(refs, list):
        raise BadRequest(f"{field} must be a list", fields={field: ["A list of group ids or slugs."]})
    groups = [group_ref(ref) for ref in refs]
    unknown = [str(ref)[:100] for ref, group in zip(refs, groups, strict=True) if group is None]
    if unknown:
        raise BadRequest("no such group", fields={field: [f"No group with id or slug: {', '.join(unknown)}."]})
    return [g for g in groups if g is not None]


def access_snapshot(model: CatalogModel) -> dict:
    return {
        "access": model.access,
        "allowed_groups": sorted(model.allowed_groups.values_list("slug", flat=True)),
        "denied_groups": sorted(model.denied_groups.values_list("slug", flat=True)),
    }


def model_access_update(*, model: CatalogModel, changes: dict, actor: Actor = None) -> CatalogModel:
    """Sets the model's access, allowed and denied groups (groups by id or slug); one audit event
    `model_access_updated` with the policy before and after."""
    check_known_fields(changes, ACCESS_FIELDS)
    if "access" in changes and changes["access"] not in ("open", "restricted"):
        raise BadRequest("invalid access", fields={"access": ["open or restricted."]})
    groups = {f: groups_by_refs(changes[f], f) for f in ("allowed_groups", "denied_groups") if f in changes}
    before = access_snapshot(model)
    with transaction.atomic():
        if "access" in changes and changes["access"] != model.access:
            model.access = changes["access"]
            model.save(update_fields=["access", "updated_at"])
        for field, chosen in groups.items():
            getattr(model, field).set(chosen)
        after = access_snapshot(model)
        if after != before:
            audit_record(actor=actor, action="model_access_updated", target=model, before=before, after=after)
            bump_auth_generation()
    return model
