import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection

from tests.proxy.conftest import fake_upstream, gateway, gateway_url, world  # noqa: F401 (fixtures)
from tests.serving.conftest import fake  # noqa: F401 (fixture)

ROOT = Path(settings.BASE_DIR)
METRICS_TOKEN = "metrics-" + "t" * 24


def documented_env() -> dict:
    """The production environment of .env.example (the one docs/OPERATIONS.md documents), with
    real secrets in place of its placeholders and this machine's PostgreSQL and Redis."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    values.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        GATEWAY_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        GATEWAY_METRICS_TOKEN=METRICS_TOKEN,
        DATABASE_URL=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway"),
        REDIS_URL=settings.REDIS_URL or "redis://127.0.0.1:6379/0",
    )
    return values


def production_env(**overrides) -> dict:
    """This process's environment (PATH, …) without the suite's DEBUG, plus the documented one."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "PYTEST_XDIST_WORKER")}
    env.update(documented_env(), DJANGO_SETTINGS_MODULE="gateway_project.settings")
    env.update(overrides)
    return env


def manage(*args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def test_db_name(django_db_setup, django_db_blocker) -> str:
    with django_db_blocker.unblock():
        return connection.settings_dict["NAME"]


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory) -> Path:
    """collectstatic as a deploy runs it (DEBUG off: hashed and compressed names)."""
    root = tmp_path_factory.mktemp("staticfiles")
    manage("collectstatic", "--noinput", "-v", "0", env=production_env(STATIC_ROOT=str(root)))
    return root
