"""Admin list filters that take typed input (a username, an id, a date) instead of listing every
value: listing the members or models present in a million call records would scan them all.

Each box is a small GET form that carries every other parameter of the list (filters, search,
ordering) as hidden inputs, one per value, so filters combine. Input that cannot be read (a date
in another format, an id that is no UUID) is reported at the top of the page and in the box, and
that one filter is left out; it never narrows the list to nothing in silence.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from allocations.models import CatalogModel, Member
from quota.periods import billing_tz

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


def titled(title: StrOrPromise) -> type[admin.ChoicesFieldListFilter]:
    """A choices filter with its own title, for two fields whose verbose names are equal."""

    class Titled(admin.ChoicesFieldListFilter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.title = title

    return Titled


def other_params(changelist: ChangeList, *, leave_out: str) -> list[tuple[str, str]]:
    """Every (name, value) pair of the list's query except `leave_out`, one pair per value
    (Django keeps a list of values per name; printing the list would turn it into text)."""
    return [(name, value) for name, values in changelist.filter_params.items() if name != leave_out for value in values]


class InputFilter(admin.SimpleListFilter):
    """One text box in the filter sidebar; `filter_value` narrows the queryset by what was typed
    and raises ValueError (or ValidationError) for input it cannot read."""

    template = "admin/input_filter.html"
    input_type = "text"
    hint = gettext_lazy("Press Enter or Apply.")
    bad_input = gettext_lazy("“%(value)s” is not valid here")
    error = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> tuple[tuple[str, str], ...]:
        return (("", ""),)  # one entry, so the sidebar shows the box

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:  # type: ignore[override]  # its own template
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "query": other_params(changelist, leave_out=self.parameter_name or ""),
            "input_type": self.input_type,
            "error": self.error,
            "hint": self.hint,
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        try:
            return self.filter_value(queryset, value)
        except (ValueError, ValidationError):
            self.error = self.bad_input % {"value": value}
            notice = _("%(filter)s: %(error)s; this filter was not applied.")
            messages.error(request, notice % {"filter": self.title, "error": self.error})
            return queryset

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        raise NotImplementedError


class MemberFilter(InputFilter):
    title, parameter_name = gettext_lazy("member (username)"), "member_name"

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        # The member is found first, then the list narrows by its id: the (member, started_at)
        # index answers at once, even when the member has no calls; a join on the username would
        # let the planner walk every call newest first looking for one.
        found = Member.objects.filter(username=value.casefold()).values_list("pk", flat=True).first()
        return queryset.filter(member_id=found) if found else queryset.none()


class AllocationFilter(InputFilter):
    title, parameter_name = gettext_lazy("allocation (id)"), "allocation_id"
    bad_input = gettext_lazy("“%(value)s” is not an allocation id (a UUID)")

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        return queryset.filter(allocation_id=uuid.UUID(value))


class ModelFilter(InputFilter):
    title, parameter_name = gettext_lazy("model (slug)"), "model_slug"

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        found = CatalogModel.objects.filter(slug=value).values_list("pk", flat=True).first()  # as for members
        return queryset.filter(model_id=found) if found else queryset.none()


def day_start(value: str) -> dt.datetime:
    """Midnight of a YYYY-MM-DD day in the billing time zone (ValueError for any other form)."""
    if len(value) != 10:
        raise ValueError(value)
    return dt.datetime.combine(dt.date.fromisoformat(value), dt.time.min, tzinfo=billing_tz())


class DateFilter(InputFilter):
    input_type = "date"
    bad_input = gettext_lazy("“%(value)s” is not a date: write it as YYYY-MM-DD, e.g. 2026-03-05")


class StartedFromFilter(DateFilter):
    title, parameter_name = gettext_lazy("started on or after"), "started_from"

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        return queryset.filter(started_at__gte=day_start(value))


class StartedBeforeFilter(DateFilter):
    title, parameter_name = gettext_lazy("started before"), "started_before"

    def filter_value(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        return queryset.filter(started_at__lt=day_start(value))
