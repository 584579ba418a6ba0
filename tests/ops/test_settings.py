"""The production settings from a fresh process: DEBUG off by default, secrets required and checked,
and `check --deploy` silent with the documented production environment (.env.example)."""

import pytest

from .conftest import ROOT, manage, production_env


def test_check_deploy_prints_no_warning_with_the_documented_production_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_deploy_warns_when_the_tls_proxy_settings_are_left_out():
    env = production_env()
    for name in ("GATEWAY_BEHIND_TLS_PROXY", "SECURE_SSL_REDIRECT", "SECURE_HSTS_PRELOAD"):
        env.pop(name)
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, check=False)
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def test_debug_is_off_unless_asked_for_and_then_the_secrets_are_required():
    env = production_env()
    env.pop("SECRET_KEY")
    env.pop("GATEWAY_ENCRYPTION_KEY")
    result = manage("check", env=env, check=False)
    assert result.returncode != 0
    assert "DEBUG=False (the default) needs SECRET_KEY, GATEWAY_ENCRYPTION_KEY" in result.stderr


def test_a_malformed_encryption_key_is_refused_at_start_up_with_a_clear_error():
    result = manage("check", env=production_env(GATEWAY_ENCRYPTION_KEY="not-a-fernet-key"), check=False)
    assert result.returncode != 0
    assert "GATEWAY_ENCRYPTION_KEY is not a Fernet key" in result.stderr
    assert "not-a-fernet-key" not in result.stderr  # a secret is never echoed


def test_an_unknown_log_format_is_refused():
    result = manage("check", env=production_env(GATEWAY_LOG_FORMAT="xml"), check=False)
    assert result.returncode != 0 and "GATEWAY_LOG_FORMAT must be json or text" in result.stderr


def test_the_tls_proxy_switch_sets_the_proxy_header_secure_cookies_and_hsts():
    script = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SECURE_PROXY_SSL_HEADER, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_HSTS_SECONDS, s.CSRF_TRUSTED_ORIGINS, s.STORAGES['staticfiles']['BACKEND'])"
    )
    result = manage(
        "shell", "-c", script, env=production_env(CSRF_TRUSTED_ORIGINS="https://a.example,https://b.example")
    )
    assert result.stdout.strip().splitlines()[-1] == (
        "False ('HTTP_X_FORWARDED_PROTO', 'https') True True 31536000 "
        "['https://a.example', 'https://b.example'] whitenoise.storage.CompressedManifestStaticFilesStorage"
    )


def _example_value(name: str) -> str:
    line = next(x for x in (ROOT / ".env.example").read_text().splitlines() if x.startswith(f"{name}="))
    return line.partition("=")[2]


@pytest.mark.parametrize("name", ["SECRET_KEY", "GATEWAY_METRICS_TOKEN"])
@pytest.mark.parametrize("kind", ["example", "short", "placeholder"])
def test_production_refuses_a_placeholder_or_short_secret_without_printing_it(name, kind):
    value = {"example": _example_value(name), "short": "s" * 31, "placeholder": "Change-Me-" + "x" * 40}[kind]
    result = manage("check", env=production_env(**{name: value}), check=False)
    assert result.returncode != 0
    assert f"{name}: a placeholder or shorter than 32 characters" in result.stderr
    assert value not in result.stderr


def test_production_starts_with_32_character_secrets_and_without_a_metrics_token():
    assert manage("check", env=production_env(SECRET_KEY="k" * 32, GATEWAY_METRICS_TOKEN="m" * 32)).returncode == 0
    assert manage("check", env=production_env(GATEWAY_METRICS_TOKEN="")).returncode == 0


def test_the_env_file_with_the_production_secrets_is_never_committed():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
