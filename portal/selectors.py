"""Reads for the member portal and the member API. Every query is scoped to one member."""

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, OuterRef, Q, Subquery, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from allocations.exceptions import BadRequest
from allocations.models import Allocation, ApiKey, ApiKeyScope, CatalogModel
from allocations.pages import keyset_page
from allocations.serializers import money_str
from quota.models import CallRecord, PriceVersion
from quota.periods import billing_tz, period_bounds
from quota.pricing import ZERO
from quota.selectors import near_cap, usage_this_month

MAX_USAGE_DAYS = 366


def parse_uuid(value, *, field_name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise BadRequest(f"{field_name} is not a valid id", fields={field_name: ["Not a valid id."]}) from None


# --- ownership (404 for anything that is not the member's own) --------------------------------


def allocation_owned(*, member, allocation_id) -> Allocation:
    try:
        pk = uuid.UUID(str(allocation_id))
    except ValueError:
        raise Http404 from None
    allocation = Allocation.objects.select_related("model").filter(pk=pk, member=member).first()
    if allocation is None:
        raise Http404
    return allocation


def key_owned(*, member, key_id) -> ApiKey:
    """A live key of the member. Revoked keys are gone from the member's point of view."""
    try:
        pk = uuid.UUID(str(key_id))
    except ValueError:
        raise Http404 from None
    key = ApiKey.objects.live().filter(pk=pk, member=member).first()
    if key is None:
        raise Http404
    return key


# --- allocations ---------------------------------------------------------------------------------


@dataclass
class AllocationCard:
    allocation: Allocation
    tokens_used: int
    cost_used: Decimal
    key_prefixes: list[str]
    price: PriceVersion | None
    near_cap: bool
    token_ratio: Decimal | None = None
    cost_ratio: Decimal | None = None
    extra: dict = field(default_factory=dict)

    @property
    def token_percent(self) -> int | None:
        return None if self.token_ratio is None else min(100, int(self.token_ratio * 100))

    @property
    def cost_percent(self) -> int | None:
        return None if self.cost_ratio is None else min(100, int(self.cost_ratio * 100))

    @property
    def token_near(self) -> bool:
        cap = self.allocation.quota_tokens_per_month
        return cap is not None and near_cap(tokens_used=self.tokens_used, token_cap=cap, cost_used=ZERO, cost_cap=None)

    @property
    def cost_near(self) -> bool:
        cap = self.allocation.quota_cost_usd_per_month
        return cap is not None and near_cap(tokens_used=0, token_cap=None, cost_used=self.cost_used, cost_cap=cap)

    @property
    def cap_reached(self) -> bool:
        return any(r is not None and r >= 1 for r in (self.token_ratio, self.cost_ratio))


def _ratio(used, cap) -> Decimal | None:
    if cap is None:
        return None
    if cap == 0:
        return Decimal(1)
    return Decimal(used) / Decimal(cap)


def _key_prefixes(allocation_ids) -> dict:
    prefixes: dict = {a: [] for a in allocation_ids}
    rows = (
        ApiKeyScope.objects.filter(allocation_id__in=allocation_ids, api_key__revoked_at__isnull=True)
        .order_by("api_key__created_at")
        .values_list("allocation_id", "api_key__prefix")
    )
    for allocation_id, prefix in rows:
        prefixes[allocation_id].append(prefix)
    return prefixes


def _prices_in_force(model_ids, *, now: dt.datetime) -> dict:
    """{model_id: PriceVersion} in two queries, by the same rule as PriceVersion.objects.in_force."""
    if not model_ids:
        return {}
    latest = (
        PriceVersion.objects.filter(model=OuterRef("pk"), effective_from__lte=now)
        .order_by("-effective_from", "-id")
        .values("id")[:1]
    )
    ids = (
        CatalogModel.objects.filter(pk__in=model_ids)
        .annotate(price_id=Subquery(latest))
        .values_list("price_id", flat=True)
    )
    return {p.model_id: p for p in PriceVersion.objects.filter(pk__in=[i for i in ids if i is not None])}


def allocation_cards(*, member, now: dt.datetime | None = None, allocations=None) -> list[AllocationCard]:
    """One card per allocation: usage from the counters, live key prefixes, the price in force."""
    now = now or timezone.now()
    if allocations is None:
        allocations = list(Allocation.objects.owned_by(member).select_related("model").order_by("created_at", "id"))
    ids = [a.pk for a in allocations]
    usage = usage_this_month(ids, now=now)
    prefixes = _key_prefixes(ids)
    prices = _prices_in_force({a.model_id for a in allocations}, now=now)
    cards = []
    for a in allocations:
        tokens, cost = usage[a.pk]
        token_cap, cost_cap = a.quota_tokens_per_month, a.quota_cost_usd_per_month
        cards.append(
            AllocationCard(
                allocation=a,
                tokens_used=tokens,
                cost_used=cost,
                key_prefixes=prefixes[a.pk],
                price=prices.get(a.model_id),
                near_cap=near_cap(tokens_used=tokens, token_cap=token_cap, cost_used=cost, cost_cap=cost_cap),
                token_ratio=_ratio(tokens, token_cap),
                cost_ratio=_ratio(cost, cost_cap),
            )
        )
    return cards


# --- keys ------------------------------------------------------------------------------------------


def keys_of(*, member) -> list[ApiKey]:
    return list(
        ApiKey.objects.live()
        .filter(member=member)
        .prefetch_related("scopes__allocation__model")
        .order_by("-created_at", "id")
    )


# --- usage -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    start: dt.datetime  # aware, inclusive
    end: dt.datetime  # aware, exclusive
    first_day: dt.date
    last_day: dt.date


def period_of_days(first_day: dt.date, last_day: dt.date) -> Period:
    tz = billing_tz()
    start = dt.datetime.combine(first_day, dt.time.min, tzinfo=tz)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    return Period(start=start, end=end, first_day=first_day, last_day=last_day)


def period_current(now: dt.datetime | None = None) -> Period:
    start, end = period_bounds(now or timezone.now())
    return period_of_days(start.date(), (end - dt.timedelta(days=1)).date())


def _parse_day(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(
            f"{name} must be a date (YYYY-MM-DD)", fields={name: ["Enter a date as YYYY-MM-DD."]}
        ) from None


def period_parse(*, from_: str | None, to: str | None, now: dt.datetime | None = None) -> Period:
    """`from`/`to` are inclusive dates in the billing timezone; the default is this month."""
    current = period_current(now)
    first = _parse_day(from_, "from") if from_ else current.first_day
    last = _parse_day(to, "to") if to else (current.last_day if not from_ else max(first, current.last_day))
    if last < first:
        raise BadRequest("to is before from", fields={"to": ["Must not be before from."]})
    if (last - first).days >= MAX_USAGE_DAYS:
        raise BadRequest("the period is too long", fields={"to": [f"At most {MAX_USAGE_DAYS} days."]})
    return period_of_days(first, last)


def period_of_month(value: str | None, now: dt.datetime | None = None) -> Period:
    """`YYYY-MM` to that calendar month; anything else is this month."""
    try:
        first = dt.date.fromisoformat(f"{value}-01") if value else None
    except ValueError:
        first = None
    if first is None:
        return period_current(now)
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return period_of_days(first, nxt - dt.timedelta(days=1))


def recent_months(now: dt.datetime | None = None, count: int = 12) -> list[dt.date]:
    first = period_current(now).first_day
    months = []
    for _ in range(count):
        months.append(first)
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return months


def _member_calls(member, allocation=None):
    qs = CallRecord.objects.filter(allocation__member=member)
    if allocation is not None:
        qs = qs.filter(allocation=allocation)
    return qs


_USAGE_SUMS = {
    "calls": Count("id"),
    "sum_input": Sum("input_tokens"),
    "sum_output": Sum("output_tokens"),
    "sum_cost": Sum("cost_usd", filter=Q(priced=True)),
    "unpriced_calls": Count(
        "id", filter=Q(priced=False) & (Q(input_tokens__gt=0) | Q(output_tokens__gt=0) | Q(quantity__gt=0))
    ),
}


def _usage_row(row: dict) -> dict:
    tokens_in, tokens_out = row["sum_input"] or 0, row["sum_output"] or 0
    return {
        "calls": row["calls"],
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens": tokens_in + tokens_out,
        "cost_usd": money_str(row["sum_cost"] or ZERO),
        "unpriced_calls": row["unpriced_calls"],
    }


def usage_grouped(*, member, period: Period, group_by: str, allocation=None) -> list[dict]:
    """Aggregates of the member's call records in the period, by day, model or allocation."""
    qs = _member_calls(member, allocation).filter(started_at__gte=period.start, started_at__lt=period.end)
    if group_by == "day":
        rows = (
            qs.annotate(day=TruncDate("started_at", tzinfo=billing_tz()))
            .values("day")
            .annotate(**_USAGE_SUMS)
            .order_by("day")
        )
        return [{"day": r["day"].isoformat(), **_usage_row(r)} for r in rows]
    if group_by == "model":
        rows = qs.values("model__slug").annotate(**_USAGE_SUMS).order_by("model__slug")
        return [{"model": r["model__slug"], **_usage_row(r)} for r in rows]
    if group_by == "allocation":
        rows = (
            qs.values("allocation_id", "allocation__display_name", "allocation__model__slug")
            .annotate(**_USAGE_SUMS)
            .order_by("allocation__display_name", "allocation_id")
        )
        return [
            {
                "allocation": str(r["allocation_id"]),
                "display_name": r["allocation__display_name"],
                "model": r["allocation__model__slug"],
                **_usage_row(r),
            }
            for r in rows
        ]
    raise BadRequest(
        "group_by must be day, model or allocation", fields={"group_by": ["Choose day, model or allocation."]}
    )


def usage_daily_series(*, member, period: Period, allocation=None) -> list[dict]:
    """Every day of the period, zero-filled, for the chart."""
    rows = usage_grouped(member=member, period=period, group_by="day", allocation=allocation)
    by_day = {r["day"]: r for r in rows}
    series, day = [], period.first_day
    while day <= period.last_day:
        row = by_day.get(day.isoformat())
        series.append({"day": day.isoformat(), "cost_usd": row["cost_usd"] if row else money_str(ZERO)})
        day += dt.timedelta(days=1)
    return series


# --- calls (keyset pagination) -------------------------------------------------------------------


def calls_page(*, member, allocation=None, period: Period | None = None, cursor: str | None = None, limit: int = 50):
    """Newest first by (started_at, id). Returns (records, next_cursor or None); never counts."""
    qs = _member_calls(member, allocation).select_related("model")
    if period is not None:
        qs = qs.filter(started_at__gte=period.start, started_at__lt=period.end)
    return keyset_page(qs, time_field="started_at", cursor=cursor, limit=limit)
