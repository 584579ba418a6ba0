"""Re-claim locks: an admin revoking a self-service allocation stops the member from claiming the
model again until an admin unlocks it."""

from django.db import transaction

from .audit import Actor, actor_member, audit_record
from .exceptions import NotFound
from .models import Allocation, CatalogModel, Member, ReclaimLock


def reclaim_lock_after_revoke(*, allocation: Allocation, actor: Actor = None) -> ReclaimLock | None:
    """Locks the re-claim when a self-service allocation is revoked by someone other than its member."""
    if allocation.origin != Allocation.Origin.SELF_SERVICE or getattr(actor, "pk", None) == allocation.member_id:
        return None
    lock, created = ReclaimLock.objects.get_or_create(
        member_id=allocation.member_id, model_id=allocation.model_id, defaults={"locked_by": actor_member(actor)}
    )
    if created:
        audit_record(
            actor=actor,
            action="reclaim_locked",
            target=allocation.member,
            after={"model": allocation.model.slug, "allocation": str(allocation.pk)},
        )
    return lock


def reclaim_unlock(*, member: Member, model: CatalogModel, actor: Actor = None) -> None:
    """Lets the member claim `model` again; NotFound when there is no lock."""
    with transaction.atomic():
        deleted, _ = ReclaimLock.objects.filter(member=member, model=model).delete()
        if not deleted:
            raise NotFound("this member has no re-claim lock on this model")
        audit_record(actor=actor, action="reclaim_unlocked", target=member, after={"model": model.slug})
