"""Django admin for the adaptive token pool and anomaly quarantine. Every save goes through the
services (pool_config_update, anomaly_config_update), so each change is audited."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from allocations.models import Allocation
from quota.anomaly import anomaly_config_update
from quota.pool import RebalanceRefused, Share, pool_config_update, pool_overview, pool_plan, pool_rebalance, pool_state
from quota.pool_models import AnomalyConfig, PoolConfig, RebalanceEntry, RebalanceLog

from .base import StaffAdmin, StaffReadOnlyInline


class SingletonAdmin(StaffAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self.model.load()
        return super().changelist_view(request, extra_context)


@admin.register(PoolConfig)
class PoolConfigAdmin(SingletonAdmin):
    list_display = ("__str__", "total_tokens_per_month", "floor_per_allocation", "updated_at")
    fields = ("total_tokens_per_month", "floor_per_allocation")
    actions = ["rebalance_with_preview"]
    change_form_template = "admin/quota/poolconfig/change_form.html"

    def save_model(
        self, request: HttpRequest, obj: PoolConfig, form: forms.ModelForm[PoolConfig], change: bool
    ) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        pool_config_update(changes=changes, actor=request.user)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "pool": pool_overview()}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description=_("Rebalance the pool now (shows a preview first)"), permissions=["change"])
    def rebalance_with_preview(self, request: HttpRequest, queryset: QuerySet[PoolConfig]) -> HttpResponseRedirect:
        return redirect("admin:quota_pool_rebalance")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.rebalance_view)
        return [path("rebalance/", view, name="quota_pool_rebalance"), *super().get_urls()]

    def rebalance_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self._rebalance_apply(request)
        state = pool_state(now=timezone.now())
        rows: list[tuple[Allocation, Share]] = []
        refused = ""
        try:
            shares = pool_plan(state)
        except RebalanceRefused as exc:
            refused = exc.message
        else:
            members = {a.pk: a for a in state.members}
            rows = [(members[s.allocation_id], s) for s in shares]
        context = {
            **self.admin_site.each_context(request),
            "title": "Rebalance the token pool",
            "opts": self.model._meta,
            "pool": pool_overview(),
            "rows": rows,
            "refused": refused,
        }
        return TemplateResponse(request, "admin/quota/pool_rebalance.html", context)

    def _rebalance_apply(self, request: HttpRequest) -> HttpResponseRedirect:
        result = pool_rebalance(trigger=RebalanceLog.Trigger.ADMIN, actor=request.user)
        assert result.log is not None, "only a scheduled run (with a period key) can be a duplicate without a log"
        if result.refused:
            self.message_user(request, f"Rebalance refused (audited): {result.refused}", messages.ERROR)
        else:
            msg = f"Rebalanced {result.log.pool_size} allocation(s); {result.log.skipped} skipped."
            self.message_user(request, msg, messages.SUCCESS)
        return redirect(reverse("admin:quota_rebalancelog_change", args=[result.log.pk]))


class RebalanceEntryInline(StaffReadOnlyInline):
    model = RebalanceEntry
    fields = ("allocation", "usage", "quota_before", "quota_after", "reason", "applied")
    readonly_fields = fields


@admin.register(RebalanceLog)
class RebalanceLogAdmin(StaffAdmin):
    list_display = ("created_at", "trigger", "outcome", "total_tokens", "reserved_tokens", "pool_size", "skipped")
    list_filter = ("outcome", "trigger")
    readonly_fields = [f.name for f in RebalanceLog._meta.fields]
    inlines = [RebalanceEntryInline]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(AnomalyConfig)
class AnomalyConfigAdmin(SingletonAdmin):
    list_display = ("__str__", "enabled", "paused_until", "min_calls", "multiplier", "sparse_absolute_calls")
    fields = ("enabled", "paused_until", "min_calls", "multiplier", "sparse_baseline_calls", "sparse_absolute_calls")

    def save_model(
        self, request: HttpRequest, obj: AnomalyConfig, form: forms.ModelForm[AnomalyConfig], change: bool
    ) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        anomaly_config_update(changes=changes, actor=request.user)
