"""Reads of the quota side for views, APIs and admin."""

import datetime as dt
import uuid
from collections.abc import Collection
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.utils import timezone

from .billing import caps
from .models import UNPRICED, PriceVersion, UsageCounter
from .periods import period_start_date
from .pricing import ZERO

# The aggregates every usage report of call records shows: spend counts priced calls only, and the
# calls that carried usage without a price are counted apart, never summed as $0 (SPEC 4).
PRICED_COST = Sum("cost_usd", filter=Q(priced=True))
UNPRICED_CALLS = Count("id", filter=UNPRICED)


def usage_cost(*, priced_cost: Decimal | None, unpriced_calls: int) -> Decimal | None:
    """A usage total's cost from PRICED_COST and UNPRICED_CALLS: the priced calls' sum, or None
    when no call was priced and some carried usage unpriced (shown "unpriced" beside the count,
    never $0: SPEC 4). A group without any usage costs 0."""
    if priced_cost is None and unpriced_calls:
        return None
    return priced_cost or ZERO


def usage_this_month(
    allocation_ids: Collection[uuid.UUID], *, now: dt.datetime | None = None
) -> dict[uuid.UUID, tuple[int, Decimal]]:
    """{allocation_id: (tokens_used, cost_used)} from the counters: O(allocations), not O(records)."""
    period = period_start_date(now or timezone.now())
    rows = UsageCounter.objects.filter(allocation_id__in=list(allocation_ids), period_start=period).values_list(
        "allocation_id", "tokens_used", "cost_used"
    )
    found = {a: (t, c) for a, t, c in rows}
    return {a: found.get(a, (0, ZERO)) for a in allocation_ids}


def near_cap(*, tokens_used: int, token_cap: int | None, cost_used: Decimal, cost_cap: Decimal | int | None) -> bool:
    """Either cap near (quota.billing.caps.near_cap)."""
    return caps.near_cap(used=tokens_used, cap=token_cap) or caps.near_cap(used=cost_used, cap=cost_cap)


def price_current(model_id: uuid.UUID, *, now: dt.datetime | None = None) -> PriceVersion | None:
    return PriceVersion.objects.in_force(model=model_id, at=now or timezone.now())


def price_describe(price: PriceVersion | None) -> dict | None:
    """The JSON shape of a price for the APIs; None means unpriced."""
    if price is None:
        return None
    if price.unit:
        return {"unit": price.unit, "price_per_unit": str(price.price_per_unit)}
    fields = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")
    return {"unit": "1m_tokens", **{f: None if getattr(price, f) is None else str(getattr(price, f)) for f in fields}}
