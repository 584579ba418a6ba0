"""Reads of the allocations side for the portal, the APIs and admin."""

import uuid
from collections.abc import Collection

from .models import ApiKey


def key_prefixes_by_allocation(allocation_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """{allocation_id: prefixes of the live keys scoped to it, oldest key first}, in one query;
    an allocation without a live key maps to []."""
    prefixes: dict[uuid.UUID, list[str]] = {a: [] for a in allocation_ids}
    rows = (
        ApiKey.objects.live()
        .filter(scopes__allocation_id__in=list(prefixes))
        .order_by("created_at", "id")
        .values_list("scopes__allocation_id", "prefix")
    )
    for allocation_id, prefix in rows:
        prefixes[allocation_id].append(prefix)
    return prefixes
