"""Admin list filters that take typed input (a username, an id, a date) instead of listing every
value: listing the members or models present in a million call records would scan them all."""

import datetime as dt
import uuid

from django.contrib import admin
from django.core.exceptions import ValidationError

from quota.periods import billing_tz


def titled(title: str):
    """A choices filter with its own title, for two fields whose verbose names are equal."""

    class Titled(admin.ChoicesFieldListFilter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.title = title

    return Titled


class InputFilter(admin.SimpleListFilter):
    """One text box in the filter sidebar; `filter_value` narrows the queryset by what was typed."""

    template = "admin/input_filter.html"

    def lookups(self, request, model_admin):
        return (("", ""),)  # one entry, so the sidebar shows the box

    def choices(self, changelist):
        query = changelist.get_filters_params()
        query.pop(self.parameter_name, None)
        yield {"value": self.value() or "", "parameter_name": self.parameter_name, "query": query.items()}

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        if not value:
            return queryset
        try:
            return self.filter_value(queryset, value)
        except (ValueError, ValidationError):
            return queryset.none()

    def filter_value(self, queryset, value: str):
        raise NotImplementedError


class MemberFilter(InputFilter):
    title, parameter_name = "member (username)", "member_name"

    def filter_value(self, queryset, value):
        return queryset.filter(member__username=value.casefold())


class AllocationFilter(InputFilter):
    title, parameter_name = "allocation (id)", "allocation_id"

    def filter_value(self, queryset, value):
        return queryset.filter(allocation_id=uuid.UUID(value))


class ModelFilter(InputFilter):
    title, parameter_name = "model (slug)", "model_slug"

    def filter_value(self, queryset, value):
        return queryset.filter(model__slug=value)


def _day_start(value: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(value), dt.time.min, tzinfo=billing_tz())


class StartedFromFilter(InputFilter):
    title, parameter_name = "started on or after (YYYY-MM-DD)", "started_from"

    def filter_value(self, queryset, value):
        return queryset.filter(started_at__gte=_day_start(value))


class StartedBeforeFilter(InputFilter):
    title, parameter_name = "started before (YYYY-MM-DD)", "started_before"

    def filter_value(self, queryset, value):
        return queryset.filter(started_at__lt=_day_start(value))
