"""Reads for the admin API: lookups that 404, allocations with their usage, and usage reports."""

import datetime as dt
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Manager, Model, Q, QuerySet
from django.http import Http404

from allocations.exceptions import BadRequest
from allocations.models import Allocation
from allocations.selectors import key_prefixes_by_allocation
from lib.serializers import money_str
from quota import selectors
from quota.group_budgets import GroupUsage, usage_by_group
from quota.periods import billing_tz, period_bounds
from quota.rollups import sort_key, usage_sums

_M = TypeVar("_M", bound=Model)


def get_or_404(queryset: QuerySet[_M] | Manager[_M], pk: object) -> _M:
    try:
        return queryset.get(pk=uuid.UUID(str(pk)))
    except (ValueError, ValidationError, ObjectDoesNotExist):  # the queryset's model's DoesNotExist
        raise Http404 from None


# --- allocations with this month's usage ----------------------------------------------------------------


def allocations_with_usage(allocations: Iterable[Allocation], *, now: datetime | None = None) -> list[Allocation]:
    """Attaches this month's usage, the near-cap flag and live key prefixes to each allocation:
    one counter query for the whole list and one more for the prefixes."""
    allocations = list(allocations)
    usage = selectors.usage_this_month([a.pk for a in allocations], now=now)
    prefixes = key_prefixes_by_allocation([a.pk for a in allocations])
    a: Any  # each allocation takes this month's figures as attributes, for the output serializer
    for a in allocations:
        a.tokens_used_this_month, a.cost_used_this_month = usage[a.pk]
        a.near_cap = selectors.near_cap(
            tokens_used=a.tokens_used_this_month,
            token_cap=a.quota_tokens_per_month,
            cost_used=a.cost_used_this_month,
            cost_cap=a.quota_cost_usd_per_month,
        )
        a.key_prefixes = prefixes[a.pk]
    return allocations


# --- usage report ---------------------------------------------------------------------------------------

GROUPS = {
    "member": {"member_id": "member_id", "member": "member__username"},
    "allocation": {"allocation_id": "allocation_id", "member": "member__username", "model": "model__slug"},
    "model": {"model_id": "model_id", "model": "model__slug"},
    # A call counts toward every group of its member (at admission): quota.group_budgets.
    "group": {"group_id": "group_id", "group": "group"},
}
USAGE_COLUMNS = ("calls", "unpriced_calls", "input_tokens", "output_tokens", "total_tokens", "cost_usd")


def _parse_bound(name: str, value: str | None, *, end: bool) -> dt.datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            # A date means the whole day in the billing timezone: `to` includes it.
            return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time.min, tzinfo=billing_tz())
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"invalid {name}", fields={name: ["A date (YYYY-MM-DD) or an ISO 8601 datetime."]}) from None
    return when if when.tzinfo else when.replace(tzinfo=billing_tz())


def usage_range(*, start: str | None, end: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Defaults to the current billing month; a date `to` is inclusive, a datetime `to` exclusive."""
    month_start, month_end = period_bounds(now)
    lo = _parse_bound("from", start, end=False) or month_start
    hi = _parse_bound("to", end, end=True) or month_end
    if hi <= lo:
        raise BadRequest("`to` must be after `from`", fields={"to": ["Must be after from."]})
    return lo, hi


def usage_report(*, group_by: str, start: dt.datetime, end: dt.datetime) -> list[dict]:
    if group_by not in GROUPS:
        raise BadRequest("invalid group_by", fields={"group_by": [f"One of: {', '.join(GROUPS)}."]})
    if group_by == "group":
        return [_usage_item({"group_id": u.group_id, "group": u.slug}, u) for u in usage_by_group(start=start, end=end)]
    keys = GROUPS[group_by]
    first = next(iter(keys.values()))
    rows = usage_sums(start=start, end=end, keys=tuple(keys.values()), where=Q(**{f"{first}__isnull": False}))
    out = []
    for row in sorted(rows, key=lambda r: tuple(sort_key(r[k]) for k in keys.values())):
        item: dict[str, object] = {name: None if row[src] is None else str(row[src]) for name, src in keys.items()}
        tokens_in, tokens_out = row["input_tokens"], row["output_tokens"]
        item.update(
            calls=row["calls"],
            unpriced_calls=row["unpriced_calls"],
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out,
            cost_usd=money_str(selectors.usage_cost(priced_cost=row["cost_usd"], unpriced_calls=row["unpriced_calls"])),
        )
        out.append(item)
    return out


def _usage_item(keys: dict, usage: GroupUsage) -> dict:
    return {
        **keys,
        "calls": usage.calls,
        "unpriced_calls": usage.unpriced_calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "cost_usd": money_str(selectors.usage_cost(priced_cost=usage.priced_cost, unpriced_calls=usage.unpriced_calls)),
    }


def usage_columns(group_by: str) -> list[str]:
    return [*GROUPS.get(group_by, {}), *USAGE_COLUMNS]
