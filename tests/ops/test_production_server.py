"""The gateway as production runs it: DEBUG off, the documented environment, collectstatic done,
served by daphne (gateway_project.serve) on a real port. And /readyz when a dependency is down."""

import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.realtime.conftest import start_daphne, stop_daphne

from .conftest import METRICS_TOKEN, production_env

# The test database must exist for the server processes (pytest-django creates it for db tests only).
pytestmark = pytest.mark.django_db

HOST = {"Host": "gateway.example.org", "X-Forwarded-Proto": "https"}  # as the TLS proxy forwards it
NAMED = {"Host": "gateway.example.org"}  # a probe names a host in ALLOWED_HOSTS, like any client


def serve(db_name: str, **env):
    server = start_daphne(db_name, env=production_env(**env))
    return server, f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def production(test_db_name, collected_static):
    server, url = serve(test_db_name, STATIC_ROOT=str(collected_static))
    yield url
    stop_daphne(server)


def test_admin_and_portal_static_files_are_served_hashed_compressed_and_cached_for_a_year(production):
    login = httpx.get(f"{production}/accounts/login/", headers=HOST)
    assert login.status_code == 200
    hashed = re.findall(r"(/static/[\w/.-]+\.[0-9a-f]{12}\.(?:css|js))", login.text)
    assert any(u.startswith("/static/portal/portal.") for u in hashed), login.text[:2000]
    for path in hashed:
        response = httpx.get(production + path, headers={**HOST, "Accept-Encoding": "gzip"})
        assert response.status_code == 200, path
        assert "max-age=315360000" in response.headers["cache-control"]
        assert "immutable" in response.headers["cache-control"]
        assert response.headers.get("content-encoding") == "gzip"
    for path in ("/static/admin/css/base.css", "/static/vendor/chartjs/chart.umd.min.js"):
        response = httpx.get(production + path, headers=HOST)
        assert response.status_code == 200, path
        assert "max-age=31536000" in response.headers["cache-control"]
    assert httpx.get(f"{production}/static/portal/nothing.css", headers=HOST).status_code == 404


def test_the_portal_behind_the_tls_proxy_redirects_plain_http_and_sets_secure_cookies_and_hsts(production):
    plain = httpx.get(f"{production}/accounts/login/", headers={"Host": "gateway.example.org"})
    assert plain.status_code == 301 and plain.headers["location"].startswith("https://gateway.example.org/")
    secure = httpx.get(f"{production}/accounts/login/", headers=HOST)
    assert "max-age=31536000" in secure.headers["strict-transport-security"]
    assert "includeSubDomains" in secure.headers["strict-transport-security"]
    assert "Secure" in secure.headers["set-cookie"]


def test_health_and_metrics_in_production(production):
    assert httpx.get(f"{production}/healthz", headers=NAMED).status_code == 200  # plain HTTP: no redirect
    assert httpx.get(f"{production}/healthz").status_code == 400  # 127.0.0.1 is not in ALLOWED_HOSTS
    ready = httpx.get(f"{production}/readyz", headers=NAMED)
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text
    assert httpx.get(f"{production}/metrics", headers=NAMED).status_code == 401
    scraped = httpx.get(f"{production}/metrics", headers={**NAMED, "Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert {"gateway_reservations_open", "gateway_settlements_spooled", "gateway_calls_in_flight"} <= names


def test_readyz_is_503_naming_the_database_when_postgresql_is_unreachable():
    server, url = serve("gateway", DATABASE_URL="postgres://postgres@127.0.0.1:1/gateway")  # nothing listens on 1
    try:
        ready = httpx.get(f"{url}/readyz", headers=NAMED, timeout=20)
        assert ready.status_code == 503
        body = ready.json()
        assert body["failed"] == ["database"] and body["detail"]["redis"] == "ok"
        assert body["checks"]["database"].startswith("unreachable")
        assert "127.0.0.1" not in ready.text and "postgres://" not in ready.text
        assert httpx.get(f"{url}/healthz", headers=NAMED).status_code == 200
    finally:
        stop_daphne(server)


def test_readyz_stays_200_with_redis_unreachable_and_says_so_in_the_detail_and_metrics(test_db_name):
    # /v1 keeps serving without Redis (the limits fail open): readiness must not take the instance out.
    server, url = serve(test_db_name, REDIS_URL="redis://127.0.0.1:1/0")
    try:
        ready = httpx.get(f"{url}/readyz", headers=NAMED, timeout=20)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "draining": "no"}
        assert ready.json()["detail"]["redis"].startswith("unreachable")
        scraped = httpx.get(f"{url}/metrics", headers={**NAMED, "Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=20)
        assert "gateway_redis_up 0.0" in scraped.text
    finally:
        stop_daphne(server)


def test_readyz_is_503_when_the_database_is_not_migrated():
    import psycopg

    name = f"gw_unmigrated_{uuid.uuid4().hex[:8]}"
    admin_url = re.sub(r"/[^/]*$", "/postgres", production_env()["DATABASE_URL"])
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    server, url = serve(name)
    try:
        ready = httpx.get(f"{url}/readyz", headers=NAMED, timeout=20)
        assert ready.status_code == 503
        assert ready.json()["failed"] == ["database"] and ready.json()["checks"]["database"] == "migrations not applied"
    finally:
        stop_daphne(server)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
