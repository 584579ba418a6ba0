"""Long append-only lists (call records, audit events) that cost the same on page 1 and page 10,000
and at 10 rows or 10 million: nothing on the page counts the table or asks it for its distinct
values.

- A page is read as `per_page + 1` rows: the extra row says whether there is a next page. The list
  shows "newest" and "older" links instead of numbered pages (numbers need a count).
- In the default order (newest first) "older" is a keyset cursor, `?after=<time>~<id>`: the next
  page starts below the last row shown, an index range scan however deep the page. In any other
  order the link is an offset page number (`?p=`), which is fine for the first pages people sort.
- Filters over a column with a fixed set of values list those values, never `SELECT DISTINCT`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

if TYPE_CHECKING:
    pass

CURSOR_VAR = "after"
# The admins using KeysetListMixin name it as their change_list_template (its pagination block).
KEYSET_TEMPLATE = "admin/keyset_change_list.html"


def encode_cursor(when: dt.datetime, pk: int) -> str:
    return f"{when.isoformat()}~{pk}"


def decode_cursor(text: str) -> tuple[dt.datetime, int] | None:
    """(time, id) of a cursor, or None for one that cannot be read (the list starts at the top)."""
    when, sep, pk = text.rpartition("~")
    if not sep:
        return None
    try:
        moment, number = dt.datetime.fromisoformat(when), int(pk)
    except ValueError:
        return None
    return (moment, number) if moment.tzinfo is not None else None


class KeysetChangeList(ChangeList):
    """A ChangeList that never counts (see the module's docstring). The admin names its keyset as
    `keyset = ("started_at", "id")`: its default ordering, newest first, must be that pair."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.cursor = decode_cursor(request.GET.get(CURSOR_VAR, ""))
        if CURSOR_VAR in request.GET:
            # Django refuses query parameters that are not filters; the cursor is read here and
            # links built from the list's parameters (filters, sorting) start at the top again.
            query = request.GET.copy()
            del query[CURSOR_VAR]
            request.GET = query  # type: ignore[assignment]  # a mutable copy, as Django's own views do
        super().__init__(request, *args, **kwargs)

    def _keyset(self) -> tuple[str, str]:
        return getattr(self.model_admin, "keyset", ("started_at", "id"))

    def _keyset_order(self) -> bool:
        time_field, id_field = self._keyset()
        # Django repeats the default ordering after the chosen one; anything after the unique id
        # decides nothing, so the order is the keyset's when it starts with (-time, -id).
        return tuple(self.queryset.query.order_by[:2]) == (f"-{time_field}", f"-{id_field}")

    def get_results(self, request: HttpRequest) -> None:
        per_page = self.list_per_page
        keyset = self._keyset_order()
        queryset = self.queryset
        if keyset:
            offset = 0
            if self.cursor is not None:
                time_field, id_field = self._keyset()
                when, pk = self.cursor
                queryset = queryset.filter(**{f"{time_field}__lte": when}).filter(
                    Q(**{f"{time_field}__lt": when}) | Q(**{time_field: when, f"{id_field}__lt": pk})
                )
        else:
            offset = (self.page_num - 1) * per_page
        rows = list(queryset[offset : offset + per_page + 1])
        more = len(rows) > per_page
        self.result_list = rows[:per_page]
        self.result_count = len(self.result_list)
        self.full_result_count = None
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.can_show_all = False
        self.multi_page = more or offset > 0 or self.cursor is not None
        self.paginator = None
        self.newest_url = self.get_query_string(remove=[PAGE_VAR]) if self.multi_page else ""
        self.older_url = ""
        if more and keyset:
            time_field, id_field = self._keyset()
            last = self.result_list[-1]
            cursor = encode_cursor(getattr(last, time_field), getattr(last, id_field))
            self.older_url = self.get_query_string({CURSOR_VAR: cursor}, remove=[PAGE_VAR])
        elif more:
            self.older_url = self.get_query_string({PAGE_VAR: self.page_num + 1})


class KeysetListMixin:
    """For a ModelAdmin of a long append-only list: KeysetChangeList and its pagination links."""

    keyset: tuple[str, str] = ("started_at", "id")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facets count every filter's values over the table
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return KeysetChangeList


def fixed_choices_filter(
    field: str, title: StrOrPromise, choices: Sequence[tuple[str, Any]]
) -> type[admin.SimpleListFilter]:
    """A list filter on `field` offering `choices` ((value, label) pairs) as they are given."""

    def lookups(
        self: admin.SimpleListFilter, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> Sequence[tuple[str, Any]]:
        return choices

    def queryset(self: admin.SimpleListFilter, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{field: value}) if value else queryset

    return type(
        f"{field.title()}Filter",
        (admin.SimpleListFilter,),
        {"title": title, "parameter_name": field, "lookups": lookups, "queryset": queryset},
    )
