"""Group budgets, the read side (SPEC 10): a group's spend and tokens this period (its counter), the
check of a group's caps against what is used and held (the realtime watch), and the reconciliation
of the group counters against the call records (`reconcile_usage`).

The write side (admission, settlement, release) is the ledger's (quota.ledger.groups). A call
record names the groups it counted toward (`CallRecord.group_ids`, fixed at admission), and so do
its daily rollups, so the reports and the counters' check read the rollups and hold whatever the
memberships became since.
"""

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from allocations.audit import Actor, audit_record
from allocations.exceptions import GatewayError
from allocations.models import Group

from .billing import caps
from .exceptions import GroupCostQuotaExceeded, GroupQuotaExceeded
from .models import GroupUsageCounter
from .periods import billing_tz, period_bounds, period_start_date
from .pricing import ZERO
from .rollups import SUMS, hourly_sums, usage_sums


@dataclass(frozen=True)
class GroupSpend:
    group_id: str
    tokens_used: int
    cost_used: Decimal
    tokens_reserved: int = 0
    cost_reserved: Decimal = ZERO


def group_spend(*, group_ids: Iterable, now: dt.datetime | None = None) -> dict[str, GroupSpend]:
    """This period's counters of these groups, by group id (a group without a counter used nothing)."""
    period = period_start_date(now or timezone.now())
    ids = [str(g) for g in group_ids]
    found = {
        str(c.group_id): GroupSpend(str(c.group_id), c.tokens_used, c.cost_used, c.tokens_reserved, c.cost_reserved)
        for c in GroupUsageCounter.objects.filter(group_id__in=ids, period_start=period)
    }
    return {g: found.get(g) or GroupSpend(g, 0, ZERO) for g in ids}


def with_spend(groups: QuerySet, *, now: dt.datetime | None = None) -> QuerySet:
    """Groups annotated with this period's `cost_used_this_month` / `tokens_used_this_month` (from
    their counters, no query per row; None when a group has no counter yet: nothing used)."""
    counter = GroupUsageCounter.objects.filter(
        group=OuterRef("pk"), period_start=period_start_date(now or timezone.now())
    )
    return groups.annotate(
        cost_used_this_month=Subquery(counter.values("cost_used")[:1]),
        tokens_used_this_month=Subquery(counter.values("tokens_used")[:1]),
    )


def spend_of(group: Group) -> GroupSpend:
    """A group's spend this period: from with_spend's annotations when present, else its counter."""
    if hasattr(group, "cost_used_this_month"):
        return GroupSpend(
            str(group.pk),
            group.tokens_used_this_month or 0,  # type: ignore[attr-defined]  # with_spend's annotations
            group.cost_used_this_month or ZERO,
        )
    return group_spend(group_ids=[group.pk])[str(group.pk)]


@dataclass(frozen=True)
class GroupHeadroom:
    """One capped group as a cap check sees it: its caps, its counter of the period (None: no row
    yet, nothing used) and whether that counter holds the session's reservation."""

    slug: str
    token_cap: int | None
    cost_cap: Decimal | None
    counter: tuple[int, int, Decimal, Decimal] | None  # tokens used, tokens reserved, cost used, cost reserved
    held: bool


def group_cap_verdict(
    groups: Iterable[GroupHeadroom], *, priced: bool, tokens: int = 0, cost: Decimal = ZERO
) -> GatewayError | None:
    """The refusal the first of `groups` (in slug order) would give now, token quotas before cost
    caps: used + reserved ≥ a cap, the session's own `tokens` / `cost` added for a group whose
    counter does not hold its reservation. The one rule of the realtime watch's group check, on a
    thread (group_cap_error) and from the warm state (realtime.watch)."""
    token_error: GatewayError | None = None
    cost_error: GatewayError | None = None
    for group in sorted(groups, key=lambda g: g.slug):
        own_tokens, own_cost = (0, ZERO) if group.held else (tokens, cost)
        tokens_used = (group.counter[0] + group.counter[1]) if group.counter else 0
        cost_used = (group.counter[2] + group.counter[3]) if group.counter else ZERO
        cost_cap = caps.cost_cap_in_force(group.cost_cap, priced=priced)
        if token_error is None and caps.cap_hit(used=tokens_used, reserved=own_tokens, cap=group.token_cap):
            token_error = GroupQuotaExceeded(f"monthly token quota of group '{group.slug}' reached")
        if cost_error is None and caps.cap_hit(used=cost_used, reserved=own_cost, cap=cost_cap):
            cost_error = GroupCostQuotaExceeded(f"monthly cost cap of group '{group.slug}' reached")
    return token_error or cost_error


def group_cap_error(
    *,
    member_id: uuid.UUID | str,
    priced: bool,
    held_ids: Iterable[int] = (),
    tokens: int = 0,
    cost: Decimal = ZERO,
    now: dt.datetime | None = None,
) -> GatewayError | None:
    """The refusal a group of the member would give now (used + reserved ≥ a cap), or None: what a
    realtime session is watched against. The session's own accrued `tokens` / `cost` are added for a
    group whose counter does not hold its reservation (a cap set after the session opened)."""
    now = now or timezone.now()
    groups = list(
        Group.objects.filter(members=member_id)  # type: ignore[misc]  # the id or its text
        .exclude(quota_tokens_per_month__isnull=True, quota_cost_usd_per_month__isnull=True)
        .order_by("slug")
    )
    if not groups:
        return None
    counters = {
        c.group_id: c for c in GroupUsageCounter.objects.filter(group__in=groups, period_start=period_start_date(now))
    }
    held = set(held_ids)
    return group_cap_verdict(
        (
            GroupHeadroom(
                slug=group.slug,
                token_cap=group.quota_tokens_per_month,
                cost_cap=group.quota_cost_usd_per_month,
                counter=(c.tokens_used, c.tokens_reserved, c.cost_used, c.cost_reserved) if c is not None else None,
                held=c is not None and c.pk in held,
            )
            for group in groups
            for c in (counters.get(group.pk),)
        ),
        priced=priced,
        tokens=tokens,
        cost=cost,
    )


# --- usage by group -----------------------------------------------------------------------------------
#
# The daily rollups carry the groups each call counted toward (DailyRollup.group_ids, the records'
# own), so the group reports sum the period's rollup rows per group set and spread each set over
# its groups: O(rollup rows of the period), whatever the number of records. Partial days at the
# range's edges come from the records (quota.rollups.usage_sums).

_IN_A_GROUP = ~Q(group_ids=[])


def _by_group(rows: Iterable[dict]) -> dict[uuid.UUID, dict]:
    """Rows of usage_sums keyed by `group_ids`, added up per group (a call of a member in two
    groups counts in both)."""
    per: dict[uuid.UUID, dict] = {}
    for row in rows:
        for group_id in row["group_ids"]:
            into = per.setdefault(group_id, dict.fromkeys(SUMS, 0) | {"cost_usd": ZERO})
            for c in SUMS:
                into[c] += row[c] or 0
    return per


@dataclass(frozen=True)
class GroupUsage:
    group_id: str
    slug: str
    name: str
    calls: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    priced_cost: Decimal | None  # the priced calls' sum (None: none was priced)


def usage_by_group(*, start: dt.datetime, end: dt.datetime) -> list[GroupUsage]:
    """The calls of [start, end) summed per group they counted toward (a call of a member in two
    groups counts in both), by slug. Groups deleted since are left out."""
    per = _by_group(usage_sums(start=start, end=end, keys=("group_ids",), where=_IN_A_GROUP))
    groups = Group.objects.filter(pk__in=list(per)).order_by("slug").values_list("pk", "slug", "name")
    return [
        GroupUsage(
            str(pk),
            slug,
            name,
            per[pk]["calls"],
            per[pk]["unpriced_calls"],
            per[pk]["input_tokens"],
            per[pk]["output_tokens"],
            per[pk]["cost_usd"] if per[pk]["priced_calls"] else None,
        )
        for pk, slug, name in groups
    ]


def spend_by_group_buckets(
    *, start: dt.datetime, end: dt.datetime, step: str, now: dt.datetime | None = None
) -> list[tuple[dt.datetime, str, Decimal]]:
    """Priced spend of [start, end) per (day or hour in the billing timezone, group): (the bucket's
    aware start, the group's name, the amount). A call counts in each group it counted toward;
    groups deleted since are left out. By day from the daily rollups; by hour from the hourly
    ones (`now` says which hours they still keep; the overview takes hours over at most two days)."""
    tz = billing_tz()
    found: list[tuple[dt.datetime, uuid.UUID, Decimal]] = []
    if step == "hour":
        now = now or timezone.now()
        rows = hourly_sums(start=start, end=end, keys=("hour", "group_ids"), now=now, where=_IN_A_GROUP)
        buckets = [(row["hour"].astimezone(tz), row) for row in rows]
    else:
        rows = usage_sums(start=start, end=end, keys=("day", "group_ids"), where=_IN_A_GROUP)
        buckets = [(dt.datetime.combine(row["day"], dt.time.min, tzinfo=tz), row) for row in rows]
    for at, row in buckets:
        if row["cost_usd"] is not None:  # some call of the row was priced
            found += [(at, g, row["cost_usd"]) for g in row["group_ids"]]
    names = dict(Group.objects.filter(pk__in={g for _, g, _ in found}).values_list("pk", "name"))
    spend: dict[tuple[dt.datetime, str], Decimal] = {}
    for at, g, cost in found:
        if g in names:
            spend[(at, names[g])] = spend.get((at, names[g]), ZERO) + cost
    return [(at, name, cost) for (at, name), cost in spend.items()]


def spend_by_group_this_month(*, now: dt.datetime | None = None) -> list[dict]:
    """Each group with spend or a budget this period, fullest first: name, members, budget, spend,
    tokens and the share of the budget (None without one). From the counters: O(groups)."""
    groups = with_spend(Group.objects.annotate(n_members=Count("members")), now=now)
    rows = []
    for g in groups:
        spent = g.cost_used_this_month or ZERO
        cap = g.quota_cost_usd_per_month
        if not spent and cap is None and g.quota_tokens_per_month is None:
            continue
        share = None if not cap else int(spent * 100 / cap)
        rows.append(
            {"group": g, "members": g.n_members, "cap": cap, "cost": spent,
             "tokens": g.tokens_used_this_month or 0, "share": share}
        )  # fmt: skip
    return sorted(rows, key=lambda r: (-(r["share"] or -1), -r["cost"], r["group"].name))


# --- reconciliation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupDrift:
    group_id: uuid.UUID
    period_start: dt.date
    counter_tokens: int
    record_tokens: int
    counter_cost: Decimal
    record_cost: Decimal


def _record_sums(start: dt.datetime, end: dt.datetime) -> dict:
    """{group id: (tokens, priced cost)} of the period's call records, from their daily rollups (as
    the allocations' reconciliation reads them: every call's tokens and every priced call's cost,
    which is what the settlement added to the group's counter)."""
    per = _by_group(usage_sums(start=start, end=end, keys=("group_ids",), where=_IN_A_GROUP))
    return {g: (int(row["input_tokens"] + row["output_tokens"]), row["cost_usd"]) for g, row in per.items()}


def group_usage_reconcile(
    *, now: dt.datetime | None = None, fix: bool = False, actor: Actor = None
) -> list[GroupDrift]:
    """Compares this period's group counters with the sums of the call records that counted toward
    each group (their daily rollups); optionally rewrites the drifted counters (audited `group_usage_reconciled`)."""
    now = now or timezone.now()
    start, end = period_bounds(now)
    period = period_start_date(now)
    sums = _record_sums(start, end)
    counters = {c.group_id: c for c in GroupUsageCounter.objects.filter(period_start=period)}
    drifts = []
    for group_id in set(sums) | set(counters):
        counter = counters.get(group_id)
        rec_tokens, rec_cost = sums.get(group_id, (0, ZERO))
        c_tokens = counter.tokens_used if counter else 0
        c_cost = counter.cost_used if counter else ZERO
        if (c_tokens, c_cost) != (rec_tokens, rec_cost):
            drifts.append(GroupDrift(group_id, period, c_tokens, rec_tokens, c_cost, rec_cost))
    if fix:
        existing = set(Group.objects.filter(pk__in=[d.group_id for d in drifts]).values_list("pk", flat=True))
        for d in drifts:
            if d.group_id not in existing:
                continue  # a deleted group: its counters went with it
            with transaction.atomic():
                GroupUsageCounter.objects.bulk_create(
                    [GroupUsageCounter(group_id=d.group_id, period_start=period)], ignore_conflicts=True
                )
                counter = GroupUsageCounter.objects.select_for_update().get(group_id=d.group_id, period_start=period)
                GroupUsageCounter.objects.filter(pk=counter.pk).update(
                    tokens_used=d.record_tokens, cost_used=d.record_cost
                )
                audit_record(
                    actor=actor,
                    action="group_usage_reconciled",
                    target=counter,
                    target_type="group",
                    target_id=str(d.group_id),
                    before={"tokens": d.counter_tokens, "cost": str(d.counter_cost)},
                    after={"tokens": d.record_tokens, "cost": str(d.record_cost)},
                )
    return drifts
