"""Django admin for call records: read-only, paged by keyset without a count (admin.lists), with the
columns people scan (when, member, model, outcome, tokens, cost, latency and a stream's time to
first token) and the request id shortened (the full value on hover and in the copy).

Every way in is an index: the search box takes one request id (an exact, case-sensitive match on its
index; members and models have their own filters), filters over values match one indexed column or
a fixed list of values, and the pages walk (started_at, id) downwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from quota.display import outcome_label
from quota.models import CALL_ENDPOINTS, CallRecord

from . import marks
from .base import ReadOnlyListMixin, StaffAdmin
from .filters import AllocationFilter, MemberFilter, ModelFilter, StartedBeforeFilter, StartedFromFilter
from .lists import KEYSET_TEMPLATE, fixed_choices_filter
from .unpriced import UnpricedFilter, metered

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

SHORT_ID = 8


def short_id(value: str) -> SafeString:
    """The first characters of an id, the whole of it in the title and in what a copy takes."""
    if len(value) <= SHORT_ID + 1:
        return format_html("<code>{}</code>", value)
    return format_html(
        '<code class="short-id" title="{}"><span>{}</span><span class="short-id-rest">{}</span></code>',
        value,
        value[:SHORT_ID],
        value[SHORT_ID:],
    )


def latency_text(record: CallRecord) -> str:
    """The whole call's milliseconds, and a stream's time to first token after a slash."""
    total, first = record.latency_ms, record.ttft_ms
    text = "—" if total is None else f"{total:,}"
    return text if first is None else f"{text} / {first:,}"


@admin.register(CallRecord)
class CallRecordAdmin(ReadOnlyListMixin, StaffAdmin):
    list_display = ("started", "member_link", "model", "outcome_text", "tokens", "cost", "latency", "request")
    list_display_links = ("started",)
    list_filter = (
        MemberFilter,
        AllocationFilter,
        ModelFilter,
        StartedFromFilter,
        StartedBeforeFilter,
        "outcome",
        fixed_choices_filter("endpoint", _("endpoint"), [(name, name) for name in CALL_ENDPOINTS]),
        "priced",
        "is_stream",
        UnpricedFilter,
    )
    search_fields = ("request_id",)  # get_search_results: one exact request id
    list_select_related = ("member", "model", "api_key")
    ordering = ("-started_at", "-id")
    change_list_template = KEYSET_TEMPLATE

    @admin.display(description=_("started"), ordering="started_at")
    def started(self, obj: CallRecord) -> str:
        when = timezone.localtime(obj.started_at)
        return format_html(
            '<time datetime="{}">{}</time>', when.isoformat(), formats.date_format(when, "SHORT_DATETIME_FORMAT")
        )

    @admin.display(description=_("member"), ordering="member__username")
    def member_link(self, obj: CallRecord) -> str:
        return marks.member_link(obj.member)

    @admin.display(description=_("outcome"), ordering="outcome")
    def outcome_text(self, obj: CallRecord) -> str:
        return outcome_label(obj.outcome)

    @admin.display(description=_("tokens in / out"))
    def tokens(self, obj: CallRecord) -> str:
        if obj.quantity is not None and obj.unit:
            return metered(obj)
        return f"{obj.input_tokens:,} / {obj.output_tokens:,}"

    @admin.display(description=_("cost"), ordering="cost_usd")
    def cost(self, obj: CallRecord) -> StrOrPromise:
        if obj.priced:
            return marks.money(obj.cost_usd)
        return _("unpriced") if obj.carries_usage else "—"

    @admin.display(description=_("latency / first token (ms)"))
    def latency(self, obj: CallRecord) -> str:
        return latency_text(obj)

    @admin.display(description=_("request id"))
    def request(self, obj: CallRecord) -> str:
        return short_id(obj.request_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[CallRecord], search_term: str
    ) -> tuple[QuerySet[CallRecord], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(request_id=term), False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}
