"""Re-claim locks in Django admin: the list, and the unlock action (the only way a lock goes)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from allocations.models import ReclaimLock
from allocations.reclaim import reclaim_unlock

from .base import StaffAdmin


@admin.register(ReclaimLock)
class ReclaimLockAdmin(StaffAdmin):
    list_display = ("member", "model", "locked_by", "created_at")
    list_select_related = ("member", "model", "locked_by")
    search_fields = ("member__username", "model__slug")
    actions = ["unlock"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.action(description=_("Unlock: let the member claim the model again"), permissions=["revoke"])
    def unlock(self, request: HttpRequest, queryset: QuerySet[ReclaimLock]) -> None:
        locks = list(queryset.select_related("member", "model"))
        for lock in locks:
            reclaim_unlock(member=lock.member, model=lock.model, actor=request.user)
        messages.success(request, f"{len(locks)} re-claim lock(s) removed.")
