"""What every staff page shares: the site's titles, list helpers and service-error display."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.forms import AdminAuthenticationForm
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from allocations.exceptions import GatewayError
from allocations.login_limits import RateLimitedAuthenticationForm
from allocations.models import ProviderKind

from .lists import KeysetListMixin

admin.site.site_header = _("AI gateway administration")
admin.site.site_title = _("AI gateway admin")


class AdminLoginForm(RateLimitedAuthenticationForm, AdminAuthenticationForm):
    """Django admin's sign-in behind the portal's failed-sign-in limits (the same counters)."""


admin.site.login_form = AdminLoginForm


def is_governing_staff(request: HttpRequest) -> bool:
    """Staff = admin (SPEC section 2): every active staff member governs, superuser or not."""
    user = request.user
    return bool(user.is_authenticated and user.is_active and user.is_staff)


class StaffAdmin(admin.ModelAdmin):
    """Where governance permissions are decided, once: every active staff member may view, add and
    change what the subclass allows; nothing is deleted (records are revoked or disabled instead).
    Subclasses narrow these (read-only lists, append-only prices), never widen them. Actions
    declare the permission they need (`permissions=["change"]` or `["revoke"]`)."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_governing_staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_governing_staff(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return is_governing_staff(request)


class NoWritesMixin:
    """Append-only records: no add, change or delete for anyone, superusers included."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class StaffReadOnlyInline(NoWritesMixin, admin.TabularInline):
    can_delete = False
    extra = 0

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_governing_staff(request)


def form_errors_from(exc: GatewayError, form: forms.BaseForm, default_field: str | None = None) -> None:
    """Copies a service's field errors onto a Django form (nothing has been written)."""
    for field, errors in (exc.fields or {default_field: [exc.message]}).items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


def confirmed_or_page(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any], *, action: str, what: str
) -> HttpResponse | None:
    """A final action asks first: None once the admin confirmed, else the confirmation page
    (which posts the same action and selection back with confirmed=yes)."""
    if request.POST.get("confirmed") == "yes":
        return None
    objects = list(queryset)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Revoke {len(objects)} {what}? This is final.",
        "objects": objects,
        "action": action,
        "opts": model_admin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/confirm_revoke.html", context)


def simulated_badge(kind: str) -> str:
    if kind == ProviderKind.SIMULATED:
        return format_html('<span class="simulated-badge">{}</span>', kind)
    return ""


class ReadOnlyListMixin(KeysetListMixin, NoWritesMixin):
    """Long lists of append-only records, paged by keyset without a count (admin.lists)."""
