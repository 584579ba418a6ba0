"""ISO 8601 text of a time, as `datetime.isoformat()` writes it, for the ledger's per-call JSON and
statement parameters. `isoformat()` formats through C's printf machinery (~12 k instructions a
time on CPython 3.11); an aware UTC time, what `django.utils.timezone.now()` gives and what every
call carries, is written here from a table of two-digit strings and the day's text, kept for the
last day seen (~6 k). Any other time (another zone, naive, a subclass, a whole second, whose
`isoformat()` leaves out the fraction) is `isoformat()`'s own text."""

import datetime as dt

_UTC = dt.UTC
_TWO = tuple(f"{n:02d}" for n in range(60))
_day: tuple[int, str] = (0, "")  # (ordinal, "YYYY-MM-DDT") of the last day written
# The texts of the UTC times written lately, by the time object's identity (each entry holds its
# object, so the identity is not reused while the entry lives): a call's start is written up to
# three times (its reservation's context and row, its record), the same object each time.
_written: dict[int, tuple[dt.datetime, str]] = {}
_WRITTEN_MAX = 256


def iso_text(value: dt.datetime) -> str:
    """`value.isoformat()`, the same text."""
    global _day
    kept = _written.get(id(value))
    if kept is not None and kept[0] is value:
        return kept[1]
    micro = value.microsecond
    if value.tzinfo is not _UTC or not micro or value.__class__ is not dt.datetime:
        return value.isoformat()
    ordinal = value.toordinal()
    day = _day  # read once: another thread may replace it
    if day[0] != ordinal:
        day = _day = (ordinal, value.date().isoformat() + "T")
    two = _TWO
    text = f"{day[1]}{two[value.hour]}:{two[value.minute]}:{two[value.second]}.{str(micro + 1000000)[1:]}+00:00"
    if len(_written) >= _WRITTEN_MAX:
        _written.clear()
    _written[id(value)] = (value, text)
    return text
