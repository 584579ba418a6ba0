"""Editing a key's scope: allocations added and removed in one change. At least one allocation
remains, at most one per model (the database enforces that too), only the key owner's own and
none revoked. Audited as `key_scope_updated` with the allocations before and after."""

from collections.abc import Iterable

from django.db import transaction

from lib.cache import bump_auth_generation

from .audit import Actor, audit_record
from .exceptions import BadRequest, InvalidTransition, ScopeConflict, ScopeForbidden
from .models import Allocation, ApiKey, ApiKeyScope


def _ids(allocations: Iterable[Allocation]) -> list[str]:
    return sorted(str(a.pk) for a in allocations)


def api_key_set_scope(
    *, key: ApiKey, add: Iterable[Allocation] = (), remove: Iterable[Allocation] = (), actor: Actor = None
) -> ApiKey:
    add, remove = list(add), list(remove)
    if not add and not remove:
        raise BadRequest("give allocations to add or remove", fields={"add": ["Give at least one."]})
    if key.is_revoked:
        raise InvalidTransition("a revoked key cannot be changed")
    if any(a.member_id != key.member_id for a in add):
        raise ScopeForbidden("a key may only be scoped to its owner's allocations")
    if any(a.status == Allocation.Status.REVOKED for a in add):
        raise BadRequest("a revoked allocation cannot be added to a key", fields={"add": ["Revoked."]})
    with transaction.atomic():
        ApiKey.objects.select_for_update().get(pk=key.pk)  # one scope change of this key at a time
        current = {s.allocation_id: s.allocation for s in key.scopes.select_related("allocation")}
        missing = [a for a in remove if a.pk not in current]
        if missing:
            not_in = [f"{m.pk} is not in this key's scope." for m in missing]
            raise BadRequest("not in the key's scope", fields={"remove": not_in})
        after = {pk: a for pk, a in current.items() if pk not in {r.pk for r in remove}}
        after.update({a.pk: a for a in add})
        if not after:
            raise BadRequest("a key needs at least one allocation", fields={"remove": ["At least one must remain."]})
        models = [a.model_id for a in after.values()]
        if len(set(models)) != len(models):
            raise ScopeConflict("a key may hold at most one allocation per model")
        ApiKeyScope.objects.filter(api_key=key, allocation_id__in=[r.pk for r in remove]).delete()
        new = [a for a in add if a.pk not in current]
        ApiKeyScope.objects.bulk_create([ApiKeyScope(api_key=key, allocation=a, model_id=a.model_id) for a in new])
        if _ids(current.values()) != _ids(after.values()):
            audit_record(
                actor=actor,
                action="key_scope_updated",
                target=key,
                before={"allocations": _ids(current.values())},
                after={"allocations": _ids(after.values())},
            )
        bump_auth_generation()
    return key
