"""Billing periods: calendar months in GATEWAY_BILLING_TIMEZONE, as pure functions of (now, tz)."""

import datetime as dt
from zoneinfo import ZoneInfo

from lib.conf import setting


def billing_tz(name: str | None = None) -> ZoneInfo:
    return ZoneInfo(name or setting("GATEWAY_BILLING_TIMEZONE"))


def period_start_date(now: dt.datetime, tz: ZoneInfo | None = None) -> dt.date:
    local = now.astimezone(tz or billing_tz())
    return local.date().replace(day=1)


def period_bounds(now: dt.datetime, tz: ZoneInfo | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the month containing `now`, as aware datetimes."""
    tz = tz or billing_tz()
    first = period_start_date(now, tz)
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return (
        dt.datetime.combine(first, dt.time.min, tzinfo=tz),
        dt.datetime.combine(nxt, dt.time.min, tzinfo=tz),
    )


def previous_period_start(now: dt.datetime, tz: ZoneInfo | None = None) -> dt.datetime:
    start, _ = period_bounds(now, tz)
    return period_bounds(start - dt.timedelta(seconds=1), tz)[0]
