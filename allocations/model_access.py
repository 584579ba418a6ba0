"""Who may use which model (SPEC 10, model access): the one rule, its reasons, and its readers.

A member may use a model when no group of theirs is denied it and the model is open or one of
their groups is allowed it. `access_decide` is that rule on plain values; the key snapshot
(allocations.access), `/v1/models`, the admin API and Django admin all ask it, through
`member_may_use` / `model_access_for` or directly with what they already loaded.
"""

import uuid
from dataclasses import dataclass

from .models import CatalogModel, Group, Member

OPEN, RESTRICTED = "open", "restricted"


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reasons: tuple[str, ...]  # the chain that led to the answer, in the order it was checked

    @property
    def refusal(self) -> str | None:
        """The message of a `model_forbidden` refusal, or None when allowed."""
        return None if self.allowed else self.reasons[-1]


def access_decide(
    *, model_slug: str, access: str, member_groups: dict[str, str], allowed: set[str], denied: set[str]
) -> AccessDecision:
    """`member_groups`: the member's group ids -> slugs; `allowed` / `denied`: the model's group ids."""
    reasons = [f"the member's groups: {', '.join(sorted(member_groups.values())) or 'none'}"]
    denying = sorted(slug for gid, slug in member_groups.items() if gid in denied)
    if denying:
        reasons.append(f"group {', '.join(denying)} is denied model '{model_slug}'")
        return AccessDecision(False, tuple(reasons))
    reasons.append("no group of the member is denied")
    if access != RESTRICTED:
        reasons.append(f"model '{model_slug}' is open")
        return AccessDecision(True, tuple(reasons))
    allowing = sorted(slug for gid, slug in member_groups.items() if gid in allowed)
    if allowing:
        reasons.append(f"model '{model_slug}' is restricted and group {', '.join(allowing)} is allowed")
        return AccessDecision(True, tuple(reasons))
    reasons.append(f"model '{model_slug}' is restricted to groups the member is not in")
    return AccessDecision(False, tuple(reasons))


def member_groups_of(member_id: uuid.UUID) -> dict[str, str]:
    return {str(pk): slug for pk, slug in Group.objects.filter(members=member_id).values_list("pk", "slug")}


def model_policy(model: CatalogModel) -> tuple[set[str], set[str]]:
    """(allowed group ids, denied group ids) of the model."""
    through_allowed = CatalogModel.allowed_groups.through.objects.filter(catalogmodel_id=model.pk)
    through_denied = CatalogModel.denied_groups.through.objects.filter(catalogmodel_id=model.pk)
    return (
        {str(g) for g in through_allowed.values_list("group_id", flat=True)},
        {str(g) for g in through_denied.values_list("group_id", flat=True)},
    )


def member_access(
    *, member: Member, model: CatalogModel, member_groups: dict[str, str] | None = None
) -> AccessDecision:
    allowed, denied = model_policy(model)
    if member_groups is None:
        member_groups = member_groups_of(member.pk)
    return access_decide(
        model_slug=model.slug, access=model.access, member_groups=member_groups, allowed=allowed, denied=denied
    )


def member_may_use(member: Member, model: CatalogModel) -> bool:
    """The one "usable" decision (self-service claims, catalogues): the access rule for an active
    model."""
    return model.is_active and member_access(member=member, model=model).allowed


def model_members_allowed(*, model: CatalogModel) -> list[Member]:
    """The active members who may use `model`, by username (each decided by access_decide)."""
    allowed, denied = model_policy(model)
    memberships: dict[str, dict[str, str]] = {}
    through = Group.members.through.objects.filter(member__is_active=True).values_list(
        "member_id", "group_id", "group__slug"
    )
    for member_id, group_id, slug in through:
        memberships.setdefault(str(member_id), {})[str(group_id)] = slug
    members = Member.objects.filter(is_active=True).order_by("username")
    return [
        m
        for m in members
        if access_decide(
            model_slug=model.slug,
            access=model.access,
            member_groups=memberships.get(str(m.pk), {}),
            allowed=allowed,
            denied=denied,
        ).allowed
    ]
