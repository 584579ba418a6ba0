"""Allocation cards for the dashboard and the member API: usage from the counters, the caps as
they stand (a cap overrun by calls in flight shows above 100 %), and a forecast at this month's rate."""

import datetime as dt
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from allocations.models import Allocation, CatalogModel, Group, Member
from allocations.selectors import key_prefixes_by_allocation
from quota.group_budgets import spend_of, with_spend
from quota.models import PriceVersion
from quota.periods import billing_tz, period_bounds
from quota.pricing import ZERO
from quota.selectors import near_cap, usage_this_month


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
    period: tuple[dt.datetime, dt.datetime] | None = None  # [start, end) of this billing month
    now: dt.datetime | None = None
    extra: dict = field(default_factory=dict)

    @property
    def token_percent(self) -> int | None:
        """The share of the cap as it is: 115 when the cap was overrun by calls in flight."""
        return None if self.token_ratio is None else int(self.token_ratio * 100)

    @property
    def cost_percent(self) -> int | None:
        return None if self.cost_ratio is None else int(self.cost_ratio * 100)

    @property
    def token_meter(self) -> int | None:
        return None if self.token_percent is None else min(100, self.token_percent)

    @property
    def cost_meter(self) -> int | None:
        return None if self.cost_percent is None else min(100, self.cost_percent)

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

    @property
    def cost_left(self) -> Decimal | None:
        cap = self.allocation.quota_cost_usd_per_month
        return None if cap is None else max(ZERO, cap - self.cost_used)

    @property
    def cost_over(self) -> Decimal | None:
        cap = self.allocation.quota_cost_usd_per_month
        return None if cap is None or self.cost_used <= cap else self.cost_used - cap

    @property
    def tokens_left(self) -> int | None:
        cap = self.allocation.quota_tokens_per_month
        return None if cap is None else max(0, cap - self.tokens_used)

    @property
    def resets_on(self) -> dt.date | None:
        """The first day of the next billing month, when both caps start again from zero."""
        return None if self.period is None else self.period[1].astimezone(billing_tz()).date()

    @property
    def forecast(self) -> "Forecast | None":
        ratios = [r for r in (self.token_ratio, self.cost_ratio) if r is not None]
        if not ratios or self.period is None or self.now is None:
            return None
        start, end = self.period
        return cap_forecast(ratio=max(ratios), cost_used=self.cost_used, start=start, end=end, now=self.now)


@dataclass(frozen=True)
class Forecast:
    daily_cost: Decimal  # this month's spend per elapsed day
    reaches_on: dt.date | None  # the day the cap is reached at that rate, None when not this month


def cap_forecast(
    *, ratio: Decimal, cost_used: Decimal, start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> Forecast:
    """Linear forecast at this month's average daily rate: the day the used share reaches 1."""
    elapsed_days = Decimal(max((now - start).total_seconds(), 3600)) / Decimal(86400)
    daily_cost = cost_used / elapsed_days
    reaches_on = None
    if 0 < ratio < 1:
        days_left = (1 - ratio) / (ratio / elapsed_days)
        if days_left < Decimal((end - now).total_seconds()) / Decimal(86400):
            reaches_on = (now + dt.timedelta(days=float(days_left))).astimezone(billing_tz()).date()
    return Forecast(daily_cost=daily_cost, reaches_on=reaches_on)


def _ratio(used: Decimal | int, cap: Decimal | int | None) -> Decimal | None:
    if cap is None:
        return None
    if cap == 0:
        return Decimal(1)
    return Decimal(used) / Decimal(cap)


def _prices_in_force(model_ids: Collection[uuid.UUID], *, now: dt.datetime) -> dict[uuid.UUID, PriceVersion]:
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


def allocation_cards(
    *, member: Member, now: dt.datetime | None = None, allocations: list[Allocation] | None = None
) -> list[AllocationCard]:
    """One card per allocation: usage from the counters, live key prefixes, the price in force."""
    now = now or timezone.now()
    if allocations is None:
        allocations = list(Allocation.objects.owned_by(member).select_related("model").order_by("created_at", "id"))
    ids = [a.pk for a in allocations]
    usage = usage_this_month(ids, now=now)
    period = period_bounds(now)
    prefixes = key_prefixes_by_allocation(ids)
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
                period=period,
                now=now,
            )
        )
    return cards


@dataclass
class GroupCard:
    """One capped group of the member: its budget this month, shared by all its members."""

    group: Group
    tokens_used: int
    cost_used: Decimal

    @staticmethod
    def _ratio(used: int | Decimal, cap: int | Decimal | None) -> Decimal | None:
        if cap is None:
            return None
        return Decimal(1) if cap == 0 else Decimal(used) / Decimal(cap)

    @property
    def cost_percent(self) -> int | None:
        ratio = self._ratio(self.cost_used, self.group.quota_cost_usd_per_month)
        return None if ratio is None else int(ratio * 100)

    @property
    def token_percent(self) -> int | None:
        ratio = self._ratio(self.tokens_used, self.group.quota_tokens_per_month)
        return None if ratio is None else int(ratio * 100)

    @property
    def cost_meter(self) -> int | None:
        return None if self.cost_percent is None else min(100, self.cost_percent)

    @property
    def token_meter(self) -> int | None:
        return None if self.token_percent is None else min(100, self.token_percent)

    @property
    def near_cap(self) -> bool:
        return near_cap(
            tokens_used=self.tokens_used,
            token_cap=self.group.quota_tokens_per_month,
            cost_used=self.cost_used,
            cost_cap=self.group.quota_cost_usd_per_month,
        )

    @property
    def cap_reached(self) -> bool:
        return any(p is not None and p >= 100 for p in (self.cost_percent, self.token_percent))


def group_cards(*, member: Member, now: dt.datetime | None = None) -> list[GroupCard]:
    """The member's groups that have a budget, by name, with this month's spend (their counters)."""
    capped = (
        Group.objects.filter(members=member)
        .exclude(quota_cost_usd_per_month__isnull=True, quota_tokens_per_month__isnull=True)
        .order_by("name")
    )
    return [
        GroupCard(group=g, tokens_used=spend_of(g).tokens_used, cost_used=spend_of(g).cost_used)
        for g in with_spend(capped, now=now)
    ]
