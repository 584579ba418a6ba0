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
