"""What every staff page shares: the site's titles, list helpers and service-error display."""

from typing import ClassVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.utils.functional import cached_property
from django.utils.html import format_html

from allocations.exceptions import GatewayError
from allocations.models import ProviderKind

admin.site.site_header = "AI gateway administration"
admin.site.site_title = "AI gateway admin"


def form_errors_from(exc: GatewayError, form, default_field: str | None = None) -> None:
    """Copies a service's field errors onto a Django form (nothing has been written)."""
    for field, errors in (exc.fields or {default_field: [exc.message]}).items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


def simulated_badge(kind: str) -> str:
    if kind == ProviderKind.SIMULATED:
        return format_html('<span style="background:#ffe08a;padding:1px 6px;border-radius:3px">{}</span>', kind)
    return ""


class BoundedCountPaginator(Paginator):
    """Counts at most LIMIT rows (`COUNT(*)` over a `LIMIT` subquery), never the whole table."""

    LIMIT = 10_000

    @cached_property
    def count(self):
        return self.object_list[: self.LIMIT + 1].count()


class ReadOnlyListMixin:
    """Lists of append-only records: no add, change or delete for anyone, superusers included."""

    paginator: ClassVar[type[Paginator]] = BoundedCountPaginator
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
