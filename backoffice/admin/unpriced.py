"""Unpriced and unit-mismatched calls for admins: a filter and a column on the call list.

A call is *unpriced* when it carried usage (tokens or a metered quantity) and has no cost: no price
was in force, or the price's unit does not fit what the endpoint metered (say a per-minute price and
a transcription that reported tokens). A *unit mismatch* is the second case: a price was in force at
the call's start, yet the call is unpriced. Neither is ever shown as $0 (SPEC 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy

from quota.models import CallRecord, CallRecordQuerySet, PriceVersion
from quota.periods import period_bounds

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


def with_price_in_force(queryset: QuerySet[CallRecord]) -> QuerySet[CallRecord]:
    prices = PriceVersion.objects.filter(model=OuterRef("model"), effective_from__lte=OuterRef("started_at"))
    return queryset.filter(Exists(prices))


class UnpricedFilter(admin.SimpleListFilter):
    title = gettext_lazy("pricing")
    parameter_name = "pricing"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> tuple[tuple[str, StrOrPromise], ...]:
        return (
            ("unpriced_period", gettext_lazy("unpriced, this period")),
            ("mismatch_period", gettext_lazy("unit mismatch, this period")),
            ("unpriced", gettext_lazy("unpriced, all time")),
            ("mismatch", gettext_lazy("unit mismatch, all time")),
        )

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        queryset = cast(CallRecordQuerySet, queryset).unpriced()  # the filter of the call records' list
        if value.startswith("mismatch"):
            queryset = with_price_in_force(queryset)
        if value.endswith("_period"):
            queryset = cast(CallRecordQuerySet, queryset).in_period(*period_bounds(timezone.now()))
        return queryset


@admin.display(description=gettext_lazy("metered"))
def metered(obj: CallRecord) -> str:
    return f"{obj.quantity.normalize():f} {obj.unit}" if obj.quantity is not None and obj.unit else "-"
