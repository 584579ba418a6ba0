"""Reads for the staff spend overview: a handful of bounded aggregate queries per page.

The month is read grouped by (day, model, outcome) from the daily rollups (quota.rollups; a
partial day at a range's edge from its call records); the whole days before today are cached for
a few minutes. Everything else comes from the usage counters (one row per allocation and month).
Python only folds the grouped rows (days × models × outcomes) into the figures.
"""

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum

from allocations.models import Allocation, CatalogModel

from .billing import caps
from .models import Outcome, UsageCounter
from .periods import billing_tz, period_bounds, previous_period_start
from .pricing import ZERO
from .rollups import usage_sums

CLOSED_DAYS_TTL_S = 600
MAX_SERIES = 8  # stacked series in the daily chart; the rest are summed as "other"
OTHER = "other"


@dataclass
class MonthFigures:
    """This month's call records folded: spend per day and series, refusals, provider errors."""

    days: list[dt.date]
    spend_by_day: dict[str, dict[dt.date, Decimal]] = field(default_factory=dict)  # series -> day -> USD
    total: Decimal = ZERO
    calls: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # outcome -> calls
    provider_calls: dict[str, int] = field(default_factory=dict)  # provider -> calls sent upstream
    provider_errors: dict[str, int] = field(default_factory=dict)  # provider -> upstream errors
    unpriced_calls: int = 0


def _days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    first, last = start.astimezone(billing_tz()).date(), (end - dt.timedelta(seconds=1)).astimezone(billing_tz()).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _model_names(model_ids: Iterable[uuid.UUID | None]) -> dict:
    rows = CatalogModel.objects.filter(pk__in=[m for m in model_ids if m is not None]).values_list(
        "pk", "slug", "provider__name"
    )
    return {pk: (slug, provider) for pk, slug, provider in rows}


def _grouped(start: dt.datetime, end: dt.datetime) -> list[dict]:
    return [
        {
            "day": row["day"],
            "model_id": row["model_id"],
            "outcome": row["outcome"],
            "calls": row["calls"],
            "cost": row["cost_usd"],
            "unpriced": row["unpriced_calls"],
        }
        for row in usage_sums(start=start, end=end, keys=("day", "model_id", "outcome"))
    ]


def today_start(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.astimezone(billing_tz()).date(), dt.time.min, tzinfo=billing_tz())


def grouped_rows(*, start: dt.datetime, end: dt.datetime, split: dt.datetime) -> list[dict]:
    """The usage of [start, end) grouped by (day, model, outcome). Those before `split` (whole
    days before today) are cached for CLOSED_DAYS_TTL_S, so a call settled late shows within that
    time; the rest is always read live."""
    split = min(max(start, split), end)
    key = f"overview:grouped:{start.isoformat()}:{split.isoformat()}"
    closed = cache.get(key) if split > start else []
    if closed is None:
        closed = _grouped(start, split)
        cache.set(key, closed, CLOSED_DAYS_TTL_S)
    return closed + (_grouped(split, end) if end > split else [])


def month_figures(*, start: dt.datetime, end: dt.datetime, now: dt.datetime, by: str = "model") -> MonthFigures:
    """This month folded: spend per day stacked by model or provider, refusals, provider errors."""
    rows = grouped_rows(start=start, end=end, split=today_start(now))
    names = _model_names({r["model_id"] for r in rows})
    figures = MonthFigures(days=_days(start, end))
    spend: dict[str, dict[dt.date, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    refusals: dict[str, int] = defaultdict(int)
    sent: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for row in rows:
        slug, provider = names.get(row["model_id"], ("—", "—"))
        figures.calls += row["calls"]
        figures.unpriced_calls += row["unpriced"]
        if row["outcome"].startswith("rejected_"):
            refusals[row["outcome"]] += row["calls"]
            continue
        sent[provider] += row["calls"]
        if row["outcome"] == Outcome.UPSTREAM_ERROR:
            errors[provider] += row["calls"]
        if row["cost"]:
            spend[provider if by == "provider" else slug][row["day"]] += row["cost"]
            figures.total += row["cost"]
    figures.spend_by_day = _top_series(spend)
    figures.refusals = dict(sorted(refusals.items(), key=lambda item: -item[1]))
    figures.provider_calls, figures.provider_errors = dict(sent), dict(errors)
    return figures


def _top_series(spend: dict) -> dict[str, dict[dt.date, Decimal]]:
    ranked = sorted(spend, key=lambda name: -sum(spend[name].values()))
    top = {name: dict(spend[name]) for name in ranked[:MAX_SERIES]}
    rest: dict[dt.date, Decimal] = defaultdict(lambda: ZERO)
    for name in ranked[MAX_SERIES:]:
        for day, amount in spend[name].items():
            rest[day] += amount
    if rest:
        top[OTHER] = dict(rest)
    return top


def last_month_same_point(*, now: dt.datetime) -> tuple[Decimal, dt.datetime]:
    """Last month's priced spend from its first day up to the same elapsed time as now in this
    month (its whole days from the cache, as this month's)."""
    start, _ = period_bounds(now)
    previous = previous_period_start(now)
    until = min(previous + (now - start), start)
    rows = grouped_rows(start=previous, end=until, split=previous + (today_start(now) - start))
    return sum((r["cost"] or ZERO for r in rows), ZERO), until


def caps_total() -> tuple[Decimal, int]:
    """The sum of the cost caps of live allocations, and how many live allocations have none."""
    live = Allocation.objects.exclude(status=Allocation.Status.REVOKED)
    uncapped = Count("id", filter=Q(quota_cost_usd_per_month=None))
    found = live.aggregate(total=Sum("quota_cost_usd_per_month"), uncapped=uncapped)
    return found["total"] or ZERO, found["uncapped"]


def _counters(period_start: dt.date) -> QuerySet[UsageCounter]:
    return UsageCounter.objects.filter(period_start=period_start).select_related(
        "allocation__member", "allocation__model"
    )


def top_allocations(*, period_start: dt.date, limit: int = 10) -> list[UsageCounter]:
    return list(_counters(period_start).filter(cost_used__gt=0).order_by("-cost_used", "allocation_id")[:limit])


def top_members(*, period_start: dt.date, limit: int = 10) -> list:
    return list(
        UsageCounter.objects.filter(period_start=period_start, cost_used__gt=0)
        .values("allocation__member_id", "allocation__member__username")
        .annotate(cost=Sum("cost_used"), tokens=Sum("tokens_used"), allocations=Count("allocation_id"))
        .order_by("-cost", "allocation__member__username")[:limit]
    )


def near_cap_q() -> Q:
    """On UsageCounter: at or past GATEWAY_NEAR_CAP_RATIO of either of its allocation's caps (a
    cap of 0 counts as reached): quota.billing.caps' rule as a filter."""
    return caps.near_cap_q(used="cost_used", cap="allocation__quota_cost_usd_per_month") | caps.near_cap_q(
        used="tokens_used", cap="allocation__quota_tokens_per_month"
    )


def near_cap_counters(*, period_start: dt.date, limit: int = 50) -> list[UsageCounter]:
    """Counters of live allocations at or past the near-cap share of either cap, fullest first."""
    return list(
        _counters(period_start)
        .exclude(allocation__status=Allocation.Status.REVOKED)
        .filter(near_cap_q())
        .order_by("-cost_used", "allocation_id")[:limit]
    )
