import datetime as dt
import random
import zoneinfo

import pytest

from lib import isotime
from lib.isotime import iso_text


class _Sub(dt.datetime):
    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return "sub"


def _samples() -> list[dt.datetime]:
    rng = random.Random(7)
    utc = dt.UTC
    found = [
        dt.datetime(2026, 12, 7, 1, 2, 3, 4, tzinfo=utc),
        dt.datetime(2026, 12, 7, 23, 59, 59, 999999, tzinfo=utc),
        dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=utc),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=utc),
        dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=utc),  # a whole second: no fraction
        dt.datetime(2026, 12, 7, 1, 2, 3, 4),  # naive
        dt.datetime(2026, 12, 7, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2026, 7, 1, 1, 2, 3, 4, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(2026, 12, 7, 1, 2, 3, 4, tzinfo=utc, fold=1),
        _Sub(2026, 12, 7, 1, 2, 3, 4, tzinfo=utc),
    ]
    for _ in range(2000):
        found.append(dt.datetime.fromtimestamp(rng.uniform(0, 4e9), utc).replace(microsecond=rng.randrange(1_000_000)))
    return found


@pytest.mark.parametrize("value", _samples()[:10])
def test_the_text_of_isoformat(value: dt.datetime) -> None:
    assert iso_text(value) == value.isoformat()


def test_the_text_of_isoformat_across_days() -> None:
    """The day's text is kept for the last day only: times of many days in turn, each exact."""
    for value in _samples():
        assert iso_text(value) == value.isoformat()


def test_a_day_kept_from_another_time_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    value = dt.datetime(2026, 12, 7, 1, 2, 3, 4, tzinfo=dt.UTC)
    monkeypatch.setattr(isotime, "_day", (value.toordinal() - 1, "2026-12-06T"))
    assert iso_text(value) == "2026-12-07T01:02:03.000004+00:00"


def test_a_time_written_again_is_the_same_text_and_the_kept_texts_stay_bounded() -> None:
    samples = _samples()
    for value in samples + samples[::-1]:  # each twice, past the kept texts' bound
        assert iso_text(value) == value.isoformat()
        assert iso_text(value) == value.isoformat()
    assert len(isotime._written) <= isotime._WRITTEN_MAX
    for micro in range(1, 2000):  # times made and dropped one by one: their identities come back
        value = dt.datetime(2026, 12, 7, 1, 2, 3, micro, tzinfo=dt.UTC)
        assert iso_text(value) == f"2026-12-07T01:02:03.{micro:06d}+00:00"
