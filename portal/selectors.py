"""Reads for the member portal and the member API. Every query is scoped to one member."""

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from allocations.exceptions import BadRequest
from allocations.models import Allocation, ApiKey, Member
from lib.pages import keyset_page
from lib.serializers import money_str
from quota.models import CallRecord
from quota.periods import billing_tz, period_bounds
from quota.pricing import ZERO
from quota.rollups import sort_key, usage_sums
from quota.selectors import usage_cost

MAX_USAGE_DAYS = 366


def parse_uuid(value: object, *, field_name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise BadRequest(f"{field_name} is not a valid id", fields={field_name: ["Not a valid id."]}) from None


# --- ownership (404 for anything that is not the member's own) --------------------------------


def allocation_owned(*, member: Member, allocation_id: object) -> Allocation:
    try:
        pk = uuid.UUID(str(allocation_id))
    except ValueError:
        raise Http404 from None
    allocation = Allocation.objects.select_related("model").filter(pk=pk, member=member).first()
    if allocation is None:
        raise Http404
    return allocation


def key_owned(*, member: Member, key_id: object) -> ApiKey:
    """A live key of the member. Revoked keys are gone from the member's point of view."""
    try:
        pk = uuid.UUID(str(key_id))
    except ValueError:
        raise Http404 from None
    key = ApiKey.objects.live().filter(pk=pk, member=member).first()
    if key is None:
        raise Http404
    return key


# --- keys ------------------------------------------------------------------------------------------


def keys_of(*, member: Member) -> list[ApiKey]:
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


def _member_calls(member: Member, allocation: Allocation | None = None) -> QuerySet[CallRecord]:
    qs = CallRecord.objects.filter(allocation__member=member)
    if allocation is not None:
        qs = qs.filter(allocation=allocation)
    return qs


def _usage_row(row: dict) -> dict:
    return {
        "calls": row["calls"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "tokens": row["input_tokens"] + row["output_tokens"],
        "cost_usd": money_str(usage_cost(priced_cost=row["cost_usd"], unpriced_calls=row["unpriced_calls"])),
        "unpriced_calls": row["unpriced_calls"],
    }


_USAGE_KEYS = {
    "day": ("day",),
    "model": ("model__slug",),
    "allocation": ("allocation__display_name", "allocation_id", "allocation__model__slug"),
}


def usage_grouped(*, member: Member, period: Period, group_by: str, allocation: Allocation | None = None) -> list[dict]:
    """The member's usage in the period, by day, model or allocation (the daily rollups of the
    member's allocations; quota.rollups)."""
    if group_by not in _USAGE_KEYS:
        raise BadRequest(
            "group_by must be day, model or allocation", fields={"group_by": ["Choose day, model or allocation."]}
        )
    keys = _USAGE_KEYS[group_by]
    where = Q(allocation__member=member) if allocation is None else Q(allocation=allocation, allocation__member=member)
    rows = sorted(
        usage_sums(start=period.start, end=period.end, keys=keys, where=where),
        key=lambda r: tuple(sort_key(r[k]) for k in keys[:2]),
    )
    if group_by == "day":
        return [{"day": r["day"].isoformat(), **_usage_row(r)} for r in rows]
    if group_by == "model":
        return [{"model": r["model__slug"], **_usage_row(r)} for r in rows]
    return [
        {
            "allocation": str(r["allocation_id"]),
            "display_name": r["allocation__display_name"],
            "model": r["allocation__model__slug"],
            **_usage_row(r),
        }
        for r in rows
    ]


def usage_daily_series(*, member: Member, period: Period, allocation: Allocation | None = None) -> list[dict]:
    """Every day of the period, zero-filled, with the running total, for the chart."""
    rows = usage_grouped(member=member, period=period, group_by="day", allocation=allocation)
    by_day = {r["day"]: r for r in rows}
    series: list[dict] = []
    day, total = period.first_day, ZERO
    while day <= period.last_day:
        row = by_day.get(day.isoformat())
        cost = Decimal(row["cost_usd"]) if row and row["cost_usd"] is not None else ZERO  # the priced spend
        total += cost
        series.append({"day": day.isoformat(), "cost_usd": money_str(cost), "cumulative_usd": money_str(total)})
        day += dt.timedelta(days=1)
    return series


def cost_cap_of(*, member: Member, allocation: Allocation | None = None) -> Decimal | None:
    """The cost cap the usage chart draws: the allocation's, or the sum over the member's live
    allocations when every one of them has a cap (None when any is uncapped)."""
    if allocation is not None:
        return allocation.quota_cost_usd_per_month
    caps = list(
        Allocation.objects.owned_by(member)
        .exclude(status=Allocation.Status.REVOKED)
        .values_list("quota_cost_usd_per_month", flat=True)
    )
    if not caps or any(c is None for c in caps):
        return None
    return sum((c for c in caps if c is not None), ZERO)


# --- calls (keyset pagination) -------------------------------------------------------------------


def calls_page(
    *,
    member: Member,
    allocation: Allocation | None = None,
    period: Period | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[CallRecord], str | None]:
    """Newest first by (started_at, id). Returns (records, next_cursor or None); never counts."""
    qs = _member_calls(member, allocation).select_related("model")
    if period is not None:
        qs = qs.filter(started_at__gte=period.start, started_at__lt=period.end)
    return keyset_page(qs, time_field="started_at", cursor=cursor, limit=limit)
