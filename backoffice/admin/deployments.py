"""A catalogue model's deployments, edited inline on the model's admin page (saves go through
allocations.deployments: audited, the model's provider and upstream name kept as its first's),
and the providers' connection test actions (allocations.provider_check)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, QueryDict
from django.utils.translation import gettext_lazy as _

from allocations import deployments as services
from allocations.models import CatalogModel, Deployment
from allocations.provider_check import provider_test

from .base import is_governing_staff

FIELDS = ("provider", "upstream_name", "weight", "priority", "rpm_limit", "tpm_limit", "active")


class DeploymentFormSet(forms.BaseInlineFormSet):
    def __init__(self, data: QueryDict | None = None, *args: Any, prefix: str | None = None, **kwargs: Any) -> None:
        # A post without the inline (an older form, a script) changes no deployment rather than
        # failing on the missing management form.
        name = f"{prefix or self.get_default_prefix()}-TOTAL_FORMS"
        if data is not None and name not in data:
            data = data.copy()
            data.update({name: "0", name.replace("TOTAL", "INITIAL"): "0"})
        super().__init__(data, *args, prefix=prefix, **kwargs)  # type: ignore[misc]

    def clean(self) -> None:
        super().clean()
        if self.instance._state.adding:
            return  # a new model gets its first deployment from its own provider and upstream name
        deleted = sum(1 for f in self.initial_forms if f.cleaned_data.get("DELETE"))
        added = sum(1 for f in self.extra_forms if f.has_changed() and not f.cleaned_data.get("DELETE"))
        if Deployment.objects.filter(model=self.instance).count() - deleted + added < 1:
            raise forms.ValidationError("A model keeps at least one deployment.")


class DeploymentInline(admin.TabularInline):
    model = Deployment
    formset = DeploymentFormSet
    extra = 0
    fields = (*FIELDS, "disabled_reason")
    readonly_fields = ("disabled_reason",)
    ordering = ("priority", "created_at")
    verbose_name_plural = _("deployments (the first, by priority then age, is the model's provider and upstream name)")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)


def deployments_save(*, request: HttpRequest, model: CatalogModel, formset: forms.BaseInlineFormSet) -> None:
    """The inline's rows, written through the services: changed, added, then deleted (so the model
    never passes through having none)."""
    formset.save(commit=False)
    for row, names in formset.changed_objects:
        fresh = Deployment.objects.select_related("provider", "model").get(pk=row.pk)
        changes = {name: getattr(row, name) for name in names if name in FIELDS}
        services.deployment_update(deployment=fresh, changes=changes, actor=request.user)
    for row in formset.new_objects:
        services.deployment_create(model=model, actor=request.user, **{name: getattr(row, name) for name in FIELDS})
    for row in formset.deleted_objects:
        fresh = Deployment.objects.select_related("provider").get(pk=row.pk)
        services.deployment_delete(deployment=fresh, actor=request.user)


def _report(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any], *, billable: bool
) -> None:
    for provider in queryset:
        result = provider_test(provider=provider, billable=billable, actor=request.user)
        figures = f"status {result.status if result.status is not None else '-'}, {result.latency_ms or 0} ms"
        if result.ok:
            model_admin.message_user(request, f"{provider}: OK ({figures})", messages.SUCCESS)
        else:
            model_admin.message_user(request, f"{provider}: failed ({figures}): {result.error}", messages.ERROR)


@admin.action(description=_("Test connection (lists the provider's models; free)"), permissions=["change"])
def test_connection(model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]) -> None:
    _report(model_admin, request, queryset, billable=False)


@admin.action(
    description=_("Test connection with a one-token call to the first deployment (billable)"), permissions=["change"]
)
def test_connection_billable(model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]) -> None:
    _report(model_admin, request, queryset, billable=True)
