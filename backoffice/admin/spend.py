"""The overview's period picker and its spend over time: this month, last month or a custom range
of at most a year, by day or by hour, stacked by model, provider or member; the same rows as a
table on the page and as CSV.

By day, the range's daily rollups (quota.rollups); by hour, the hourly rollups, kept for the last
few days (an older range by hour reads its records), so the picker takes hours over at most two
days (docs/DECISIONS.md), and refuses ranges over a year.
"""

import csv
import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from io import StringIO

from django.utils.translation import gettext as _

from quota.group_budgets import spend_by_group_buckets
from quota.periods import billing_tz, period_bounds, previous_period_start
from quota.pricing import ZERO
from quota.rollups import hourly_sums, usage_sums

MAX_DAYS = 366
MAX_HOURLY_DAYS = 2
MAX_SERIES = 8
GROUPS = {
    "model": "model__slug",
    "provider": "model__provider__name",
    "member": "member__username",
    "group": "",  # the groups each call counted toward (quota.group_budgets): a call of two groups stacks in both
}


@dataclass(frozen=True)
class Period:
    name: str  # this | last | custom
    start: dt.datetime
    end: dt.datetime  # exclusive
    step: str  # day | hour


class PeriodError(ValueError):
    pass


def _day(value: str, field: str) -> dt.date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PeriodError(
            _("%(field)s: “%(value)s” is not a date (YYYY-MM-DD).") % {"field": field, "value": value}
        ) from None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=billing_tz())


def period_from(params: Mapping[str, str], *, now: dt.datetime) -> Period:
    """The picker's period; PeriodError with a message for input it cannot draw."""
    name = params.get("period") or "this"
    step = "hour" if params.get("step") == "hour" else "day"
    if name == "last":
        start = previous_period_start(now)
        end = period_bounds(now)[0]
    elif name == "custom":
        first = _day(params.get("from", ""), _("from"))
        last = _day(params.get("to", ""), _("to"))
        if last < first:
            raise PeriodError(_("The range ends before it starts."))
        if (last - first).days + 1 > MAX_DAYS:
            raise PeriodError(_("A range is at most a year (366 days)."))
        start, end = _midnight(first), _midnight(last + dt.timedelta(days=1))
    else:
        name = "this"
        start, end = period_bounds(now)
    if step == "hour" and end - start > dt.timedelta(days=MAX_HOURLY_DAYS, hours=1):  # an hour more: DST
        raise PeriodError(_("By hour, a range is at most 2 days."))
    return Period(name=name, start=start, end=end, step=step)


def buckets(period: Period) -> list[dt.datetime]:
    size = dt.timedelta(hours=1) if period.step == "hour" else dt.timedelta(days=1)
    found, at = [], period.start
    while at < period.end:
        found.append(at)
        at = (at + size).astimezone(billing_tz())
    return found


def spend_rows(*, period: Period, by: str, now: dt.datetime) -> tuple[list[str], list[dict]]:
    """Series names (the top MAX_SERIES, the rest as "other") and one row per bucket: amounts per
    series, the total and the running total (None after now: nothing is known yet)."""
    spend: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: ZERO))
    name: str | None
    cost: Decimal | None
    if by == "group":
        for at, name, cost in spend_by_group_buckets(start=period.start, end=period.end, step=period.step, now=now):
            spend[name][at if period.step == "hour" else _midnight(at.date())] += cost
    else:
        for key, name, cost in _spend(period, GROUPS[by], now):
            spend[name or "—"][key] += cost or ZERO
    ranked = sorted(spend, key=lambda name: (-sum(spend[name].values()), name))
    names = ranked[:MAX_SERIES] + ([_("other")] if len(ranked) > MAX_SERIES else [])
    rows, running = [], ZERO
    for at in buckets(period):
        amounts = [spend[name].get(at, ZERO) for name in ranked[:MAX_SERIES]]
        if len(ranked) > MAX_SERIES:
            amounts.append(sum((spend[name].get(at, ZERO) for name in ranked[MAX_SERIES:]), ZERO))
        total = sum(amounts, ZERO)
        running += total
        rows.append({"at": at, "amounts": amounts, "total": total, "cumulative": running if at <= now else None})
    return names, rows


def _spend(period: Period, group: str, now: dt.datetime) -> Iterator[tuple[dt.datetime, str | None, Decimal | None]]:
    """(bucket start, series name, priced spend): by day from the daily rollups, by hour from the
    hourly ones (the records of hours before the window they keep)."""
    if period.step == "day":
        for row in usage_sums(start=period.start, end=period.end, keys=("day", group)):
            yield _midnight(row["day"]), row[group], row["cost_usd"]
        return
    for row in hourly_sums(start=period.start, end=period.end, keys=("hour", group), now=now):
        if row["cost_usd"] is not None:  # some call of the row was priced
            yield row["hour"].astimezone(billing_tz()), row[group], row["cost_usd"]


def as_csv(*, names: list[str], rows: list[dict], step: str) -> str:
    """The table on the page as CSV: one line per bucket, amounts as plain decimals (USD)."""
    out = StringIO()
    writer = csv.writer(out)
    writer.writerow([_("hour") if step == "hour" else _("day"), *names, _("total (USD)"), _("so far (USD)")])
    for row in rows:
        at = row["at"].astimezone(billing_tz())
        writer.writerow(
            [
                at.strftime("%Y-%m-%d %H:00") if step == "hour" else at.date().isoformat(),
                *(_plain(a) for a in row["amounts"]),
                _plain(row["total"]),
                "" if row["cumulative"] is None else _plain(row["cumulative"]),
            ]
        )
    return out.getvalue()


def _plain(amount: Decimal) -> str:
    return f"{amount.normalize():f}" if amount else "0"
