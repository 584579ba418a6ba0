import datetime as dt

from django.conf import settings
from django.test import override_settings

from lib.conf import setting


def test_a_setting_is_what_settings_gives_cached_overridden_set_and_restored() -> None:
    name = "GATEWAY_BILLING_TIMEZONE"
    before = getattr(settings, name)
    assert setting(name) == before
    assert setting(name) == before  # from LazySettings' cache now
    with override_settings(GATEWAY_BILLING_TIMEZONE="Europe/Paris"):
        assert setting(name) == "Europe/Paris"
        setting(name)
    assert setting(name) == before
    try:
        settings.GATEWAY_BILLING_TIMEZONE = "Asia/Tokyo"
        assert setting(name) == "Asia/Tokyo"
    finally:
        settings.GATEWAY_BILLING_TIMEZONE = before
    assert setting(name) == before


def test_a_setting_read_by_settings_fixture_is_seen(settings) -> None:  # pytest-django's fixture
    setting("GATEWAY_METRICS_TOKEN")
    settings.GATEWAY_METRICS_TOKEN = "changed"
    assert setting("GATEWAY_METRICS_TOKEN") == "changed"


def test_now_is_djangos_aware_naive_and_replaced(settings, monkeypatch) -> None:
    from django.utils import timezone

    from lib.conf import now

    before = timezone.now()
    value = now()
    assert value.tzinfo is dt.UTC
    assert before <= value <= timezone.now()
    settings.USE_TZ = False
    naive = now()
    assert naive.tzinfo is None
    assert abs(naive - dt.datetime.now()) < dt.timedelta(seconds=5)
    settings.USE_TZ = True
    assert now().tzinfo is dt.UTC
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    assert now() is fixed
